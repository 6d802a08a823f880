"""Inputs of the ``reader train`` command: questions with answers, a corpus, and BM25 over it."""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Dict, Iterator, Optional, Union

import pandas as pd
import pyterrier as pt

from .._optional import require

__all__ = ["read_questions", "bm25_retriever"]

logger = logging.getLogger(__name__)

IRDS_PREFIX = "irds:"


def _read_jsonl(path: Union[str, Path], what: str) -> pd.DataFrame:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{what} file {path} does not exist; pass a JSONL (.jsonl or .jsonl.gz) path or an irds:<id>")
    # pandas infers gzip from the .gz suffix; ids stay strings.
    return pd.read_json(path, lines=True, dtype={"qid": str, "docno": str})


def read_questions(source: str, *, split: Optional[str] = None, limit: Optional[int] = None) -> pd.DataFrame:
    """Read training questions into a ``qid, query, answers`` frame.

    Args:
        source: a JSONL file (``.jsonl`` or ``.jsonl.gz``) with ``qid``, ``question`` (or
            ``query``) and ``answers`` (a list of strings) per line, or ``irds:<id>`` of an
            ir_datasets query set whose queries carry ``answers`` (e.g. dpr-w100's NQ).
        split: keep only rows whose ``split`` field equals this (JSONL files only).
        limit: keep the first ``limit`` questions.

    Raises:
        FileNotFoundError: if the file does not exist.
        ValueError: if fields are missing or the split matches no question.
    """
    if source.startswith(IRDS_PREFIX):
        import ir_datasets

        dataset = ir_datasets.load(source[len(IRDS_PREFIX):])
        if not dataset.has_queries():
            raise ValueError(f"{source} has no queries; name a query set such as irds:dpr-w100/natural-questions/train")
        rows = []
        for query in dataset.queries_iter():
            if not hasattr(query, "answers"):
                raise ValueError(f"the queries of {source} have no 'answers' field, so they cannot train a reader")
            rows.append({"qid": str(query.query_id), "query": query.text, "answers": list(query.answers)})
        frame = pd.DataFrame(rows, columns=["qid", "query", "answers"])
        if split is not None:
            raise ValueError("split= applies to JSONL files only; an ir_datasets id names its split itself")
    else:
        frame = _read_jsonl(source, "questions")
        if "query" not in frame.columns and "question" in frame.columns:
            frame = frame.rename(columns={"question": "query"})
        missing = [name for name in ("qid", "query", "answers") if name not in frame.columns]
        if missing:
            raise ValueError(f"questions file {source} lacks the fields {missing}; each line needs qid, question, answers")
        if split is not None:
            if "split" not in frame.columns:
                raise ValueError(f"split={split!r} was given but the questions file {source} has no 'split' field")
            frame = frame[frame["split"] == split]
            if len(frame) == 0:
                raise ValueError(f"no question of {source} has split {split!r}")
    if limit is not None:
        frame = frame.head(limit)
    return frame[["qid", "query", "answers"]].reset_index(drop=True)


class _TextLookup(pt.Transformer):
    """Add ``text`` (and ``title`` where known) to each retrieved ``docno`` from an in-memory table."""

    def __init__(self, passages: pd.DataFrame):
        self.passages = passages.set_index("docno")

    def transform(self, inp: pd.DataFrame) -> pd.DataFrame:
        found = self.passages.reindex(inp["docno"].astype(str))
        out = inp.assign(text=found["text"].fillna("").values)
        if "title" in self.passages.columns:
            out = out.assign(title=found["title"].fillna("").values)
        return out


def _corpus_records(passages: pd.DataFrame) -> Iterator[Dict[str, str]]:
    has_title = "title" in passages.columns
    for row in passages.itertuples(index=False):
        text = f"{row.title} {row.text}" if has_title and isinstance(row.title, str) else row.text
        yield {"docno": str(row.docno), "text": str(text)}


def bm25_retriever(corpus: str, *, index_dir: Union[str, Path], num_results: int) -> pt.Transformer:
    """Return BM25 (pyterrier-pisa) over ``corpus`` that adds the passage text to its results.

    The PISA index is built in ``index_dir`` on the first call and reused afterwards.

    Args:
        corpus: a JSONL file (``.jsonl`` or ``.jsonl.gz``) with ``docno``, ``text`` and an
            optional ``title`` per line (the title is indexed with the text and shown in the
            prompt), or ``irds:<id>`` of an ir_datasets corpus with a ``text`` field.
        index_dir: directory of the PISA index.
        num_results: passages returned per query.

    Raises:
        FileNotFoundError: if the corpus file does not exist.
        ValueError: if the corpus file lacks ``docno`` or ``text``.
    """
    require("pyterrier_pisa", purpose="BM25 retrieval in 'reader train'")
    from pyterrier_pisa import PisaIndex

    index = PisaIndex(os.fspath(index_dir), text_field="text")
    if corpus.startswith(IRDS_PREFIX):
        dataset = pt.get_dataset(corpus)
        if not index.built():
            logger.info("indexing %s with PISA into %s", corpus, index_dir)
            index.index(dataset.get_corpus_iter(verbose=False))
        return index.bm25(num_results=num_results) >> pt.text.get_text(dataset, "text")

    passages = _read_jsonl(corpus, "corpus")
    missing = [name for name in ("docno", "text") if name not in passages.columns]
    if missing:
        raise ValueError(f"corpus file {corpus} lacks the fields {missing}; each line needs docno, text and optionally title")
    passages["docno"] = passages["docno"].astype(str)
    if not index.built():
        logger.info("indexing %d passages of %s with PISA into %s", len(passages), corpus, index_dir)
        index.index(_corpus_records(passages))
    return index.bm25(num_results=num_results) >> _TextLookup(passages)
