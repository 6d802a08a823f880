"""Retrieval data: the bundled sets registered with ir_datasets, NQ, and local JSONL files.

Importing ``pyterrier_gdr`` registers two small real sets shipped inside the package, so
``pt.get_dataset("irds:pyterrier-gdr/squad-dev/test")`` works offline exactly as
``pt.get_dataset("irds:dpr-w100/natural-questions/dev")`` does with a network:

- ``pyterrier-gdr/squad-dev`` (2,067 Wikipedia paragraphs of SQuAD v1.1 dev) with the
  question splits ``/train`` (6,700), ``/dev`` (870) and ``/test`` (2,000);
- ``pyterrier-gdr/wiki-slice`` (4,857 Wikipedia passages) with ``/dev`` (65) and ``/test``
  (65) real NQ-open, TriviaQA, SQuAD, WebQuestions and CuratedTREC questions.

Queries use ir_datasets' ``DprW100Query`` (``query_id, text, answers``), documents
``DprW100Doc`` (``doc_id, text, title``) and qrels ``TrecQrel``, the classes of
``dpr-w100``. :func:`load_corpus` and :func:`load_questions` read either kind of source,
or local JSONL files, into the frames the experiment runner uses.
"""
from __future__ import annotations

import difflib
import gzip
import hashlib
import json
import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Dict, Iterator, List, Mapping, Optional, Sequence, Union

import pandas as pd

__all__ = [
    "BUNDLED_DATASETS",
    "register_bundled_datasets",
    "Corpus",
    "QuestionSet",
    "load_corpus",
    "load_questions",
]

DATA_DIR = Path(__file__).parent / "data"

# ir_datasets id -> (folder under data/, question split or None for the corpus alone)
BUNDLED_DATASETS: Dict[str, tuple] = {
    "pyterrier-gdr/squad-dev": ("squad-dev", None),
    "pyterrier-gdr/squad-dev/train": ("squad-dev", "train"),
    "pyterrier-gdr/squad-dev/dev": ("squad-dev", "dev"),
    "pyterrier-gdr/squad-dev/test": ("squad-dev", "test"),
    "pyterrier-gdr/wiki-slice": ("wiki-slice", None),
    "pyterrier-gdr/wiki-slice/dev": ("wiki-slice", "dev"),
    "pyterrier-gdr/wiki-slice/test": ("wiki-slice", "test"),
}


def _open_text(path: Path):
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, "rt", encoding="utf-8")


def _find_file(folder: Path, stem: str) -> Path:
    for candidate in (folder / f"{stem}.jsonl.gz", folder / f"{stem}.jsonl"):
        if candidate.exists():
            return candidate
    raise FileNotFoundError(f"{stem}.jsonl[.gz] is missing from {folder}; reinstall pyterrier-gdr")


def _iter_jsonl(path: Path) -> Iterator[dict]:
    with _open_text(path) as fin:
        for line_number, line in enumerate(fin, start=1):
            if not line.strip():
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}, line {line_number}: invalid JSON ({e.msg})") from e


# --- ir_datasets registration -------------------------------------------------------------

def _make_components():
    """Build the ir_datasets component classes (kept in a function so importing this module stays cheap)."""
    from ir_datasets.datasets.dpr_w100 import DprW100Doc, DprW100Query
    from ir_datasets.formats import BaseDocs, BaseQrels, BaseQueries, TrecQrel
    from ir_datasets.indices import Docstore

    class BundledDocstore(Docstore):
        def __init__(self, docs: "BundledDocs"):
            super().__init__(DprW100Doc, "doc_id")
            self._docs = docs

        def get_many_iter(self, doc_ids):
            by_id = self._docs.by_id
            for doc_id in doc_ids:
                if doc_id in by_id:
                    yield by_id[doc_id]

    class BundledDocs(BaseDocs):
        def __init__(self, folder: Path):
            self._path = _find_file(folder, "passages")

        @cached_property
        def by_id(self) -> Dict[str, DprW100Doc]:
            return {doc.doc_id: doc for doc in self.docs_iter()}

        def docs_iter(self):
            for record in _iter_jsonl(self._path):
                yield DprW100Doc(str(record["docno"]), record["text"], record.get("title", ""))

        def docs_cls(self):
            return DprW100Doc

        def docs_store(self, field="doc_id", options=None):
            return BundledDocstore(self)

        def docs_count(self):
            return len(self.by_id)

        def docs_namespace(self):
            return "pyterrier-gdr"

        def docs_lang(self):
            return "en"

    class BundledQueries(BaseQueries):
        def __init__(self, folder: Path, split: str):
            self._path = _find_file(folder, "questions")
            self._split = split

        def records(self):
            return (r for r in _iter_jsonl(self._path) if r.get("split") == self._split)

        def queries_iter(self):
            for record in self.records():
                yield DprW100Query(str(record["qid"]), record["question"], tuple(record.get("answers", ())))

        def queries_cls(self):
            return DprW100Query

        def queries_namespace(self):
            return "pyterrier-gdr"

        def queries_lang(self):
            return "en"

    class BundledQrels(BaseQrels):
        def __init__(self, queries: BundledQueries):
            self._queries = queries

        def qrels_iter(self):
            for record in self._queries.records():
                for docno in record.get("relevant", ()):
                    yield TrecQrel(str(record["qid"]), str(docno), 1, "0")

        def qrels_cls(self):
            return TrecQrel

        def qrels_defs(self):
            return {1: "the passage the question was written from, or one that contains an answer string"}

    return BundledDocs, BundledQueries, BundledQrels


_REGISTERED = False


def register_bundled_datasets() -> None:
    """Register the bundled sets with ir_datasets (idempotent; runs on ``import pyterrier_gdr``)."""
    global _REGISTERED
    if _REGISTERED:
        return
    import ir_datasets
    from ir_datasets.datasets.base import Dataset

    BundledDocs, BundledQueries, BundledQrels = _make_components()
    docs_by_folder = {}
    for dataset_id, (folder, split) in BUNDLED_DATASETS.items():
        if dataset_id in ir_datasets.registry._registered:
            continue
        docs = docs_by_folder.setdefault(folder, BundledDocs(DATA_DIR / folder))
        if split is None:
            ir_datasets.registry.register(dataset_id, Dataset(docs))
        else:
            queries = BundledQueries(DATA_DIR / folder, split)
            ir_datasets.registry.register(dataset_id, Dataset(docs, queries, BundledQrels(queries)))
    _REGISTERED = True


# --- sources used by the experiment runner ------------------------------------------------

def _irds_dataset(dataset_id: str):
    """Return the ir_datasets dataset named ``dataset_id`` (with or without the ``irds:`` prefix)."""
    import ir_datasets

    register_bundled_datasets()
    name = dataset_id[len("irds:"):] if dataset_id.startswith("irds:") else dataset_id
    try:
        return ir_datasets.load(name)
    except KeyError as e:
        known = list(ir_datasets.registry._registered)
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
        hint = f" Did you mean {', '.join(repr('irds:' + c) for c in close)}?" if close else ""
        raise ValueError(
            f"unknown ir_datasets id {dataset_id!r}.{hint} The bundled sets are "
            f"{', '.join('irds:' + k for k in BUNDLED_DATASETS)}; see `ir_datasets list` for the rest."
        ) from e


@dataclass
class Corpus:
    """A document collection read from ir_datasets or from a local JSONL file.

    Args:
        source: ``"irds:<id>"`` or the path of a JSONL(.gz) file with ``docno``, ``text`` and
            optional ``title`` on each line.
    """

    source: str

    def __post_init__(self):
        if not self.source.startswith("irds:"):
            path = Path(self.source)
            if not path.exists():
                raise FileNotFoundError(f"corpus file {self.source!r} not found; give an existing JSONL file or an irds: id")
        else:
            dataset = _irds_dataset(self.source)
            if not dataset.has_docs():
                raise ValueError(f"{self.source!r} has no documents; name the corpus's ir_datasets id")

    @property
    def name(self) -> str:
        """A file-name-safe name of the source, used to name caches."""
        if self.source.startswith("irds:"):
            return self.source[len("irds:"):].replace("/", "_")
        path = Path(self.source)
        digest = hashlib.sha1(str(path.resolve()).encode("utf-8")).hexdigest()[:8]
        return path.name.split(".")[0] + "-" + digest

    def __iter__(self) -> Iterator[dict]:
        """Yield ``{"docno", "text", "title"}`` dictionaries in collection order."""
        if self.source.startswith("irds:"):
            for doc in _irds_dataset(self.source).docs_iter():
                yield {"docno": doc.doc_id, "text": doc.text, "title": getattr(doc, "title", "") or ""}
            return
        path = Path(self.source)
        for line_number, record in enumerate(_iter_jsonl(path), start=1):
            if "docno" not in record or "text" not in record:
                raise ValueError(f"{path}, line {line_number}: a corpus record needs 'docno' and 'text'; found {sorted(record)}")
            yield {"docno": str(record["docno"]), "text": record["text"], "title": record.get("title", "") or ""}

    def __len__(self) -> int:
        return self.count

    @cached_property
    def count(self) -> int:
        if self.source.startswith("irds:"):
            return _irds_dataset(self.source).docs_count()
        return sum(1 for _ in _iter_jsonl(Path(self.source)))

    @cached_property
    def _local_texts(self) -> Dict[str, str]:
        return {doc["docno"]: doc["text"] for doc in self}

    def texts(self, docnos: Sequence[str]) -> List[str]:
        """Return the passage texts of ``docnos`` (an empty string for an unknown docno)."""
        if self.source.startswith("irds:"):
            store = _irds_dataset(self.source).docs_store()
            found = store.get_many(list(docnos))
            return [found[d].text if d in found else "" for d in docnos]
        return [self._local_texts.get(d, "") for d in docnos]


@dataclass
class QuestionSet:
    """Questions with their qrels and gold answers.

    Attributes:
        topics: ``qid, query`` frame.
        qrels: ``qid, docno, label`` frame.
        answers: gold answer strings by qid (empty lists where a set has none).
    """

    topics: pd.DataFrame
    qrels: pd.DataFrame
    answers: Dict[str, List[str]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.topics)

    def subset(self, start: int = 0, stop: Optional[int] = None) -> "QuestionSet":
        """Return the questions ``start:stop`` (in file order) with their qrels and answers."""
        topics = self.topics.iloc[start:stop].reset_index(drop=True)
        qids = set(topics["qid"])
        qrels = self.qrels[self.qrels["qid"].isin(qids)].reset_index(drop=True)
        return QuestionSet(topics, qrels, {q: a for q, a in self.answers.items() if q in qids})


def _questions_from_irds(dataset_id: str) -> QuestionSet:
    dataset = _irds_dataset(dataset_id)
    if not dataset.has_queries():
        raise ValueError(f"{dataset_id!r} has no queries; name a split such as {dataset_id}/test")
    rows, answers = [], {}
    for query in dataset.queries_iter():
        rows.append({"qid": query.query_id, "query": query.text})
        answers[query.query_id] = list(getattr(query, "answers", ()) or ())
    topics = pd.DataFrame(rows, columns=["qid", "query"])
    if dataset.has_qrels():
        qrels = pd.DataFrame(
            [{"qid": q.query_id, "docno": q.doc_id, "label": int(q.relevance)} for q in dataset.qrels_iter()],
            columns=["qid", "docno", "label"],
        )
    else:
        qrels = pd.DataFrame(columns=["qid", "docno", "label"])
    return QuestionSet(topics, qrels, answers)


def _read_trec_qrels(path: Path) -> pd.DataFrame:
    rows = []
    with _open_text(path) as fin:
        for line_number, line in enumerate(fin, start=1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 4:
                raise ValueError(f"{path}, line {line_number}: a TREC qrels line has 4 fields (qid 0 docno label); found {len(parts)}")
            rows.append({"qid": parts[0], "docno": parts[2], "label": int(parts[3])})
    return pd.DataFrame(rows, columns=["qid", "docno", "label"])


def _questions_from_files(questions: Path, qrels: Optional[Path]) -> QuestionSet:
    if not questions.exists():
        raise FileNotFoundError(f"questions file {str(questions)!r} not found")
    rows, answers, qrel_rows = [], {}, []
    for line_number, record in enumerate(_iter_jsonl(questions), start=1):
        if "qid" not in record or "question" not in record:
            raise ValueError(f"{questions}, line {line_number}: a question record needs 'qid' and 'question'; found {sorted(record)}")
        qid = str(record["qid"])
        rows.append({"qid": qid, "query": record["question"]})
        answers[qid] = [str(a) for a in record.get("answers", [])]
        for docno in record.get("relevant", []):
            qrel_rows.append({"qid": qid, "docno": str(docno), "label": 1})
    topics = pd.DataFrame(rows, columns=["qid", "query"])
    if qrels is not None:
        if not qrels.exists():
            raise FileNotFoundError(f"qrels file {str(qrels)!r} not found")
        qrels_frame = _read_trec_qrels(qrels)
    else:
        qrels_frame = pd.DataFrame(qrel_rows, columns=["qid", "docno", "label"])
    return QuestionSet(topics, qrels_frame, answers)


QuestionSource = Union[str, Mapping[str, object]]


def load_questions(source: QuestionSource) -> QuestionSet:
    """Load questions, qrels and answers.

    Args:
        source: ``"irds:<id>"``, the path of a questions JSONL file (``qid``, ``question``,
            optional ``answers`` and ``relevant`` lists), or a mapping with ``questions``
            (that path), optional ``qrels`` (a TREC qrels file, which replaces the
            ``relevant`` lists) and optional ``start``/``stop`` (take a slice of the
            questions in file order, e.g. to hold out tuning questions from a dev set).

    Raises:
        ValueError: on an unknown ir_datasets id or a malformed file.
        FileNotFoundError: when a named file does not exist.
    """
    start, stop = 0, None
    if isinstance(source, Mapping):
        unknown = set(source) - {"id", "questions", "qrels", "start", "stop"}
        if unknown:
            raise ValueError(f"unknown keys {sorted(unknown)} in a question source; valid: id, questions, qrels, start, stop")
        start, stop = int(source.get("start", 0) or 0), source.get("stop")
        if "id" in source:
            questions = _questions_from_irds(str(source["id"]))
        elif "questions" in source:
            qrels = Path(str(source["qrels"])) if source.get("qrels") else None
            questions = _questions_from_files(Path(str(source["questions"])), qrels)
        else:
            raise ValueError(f"a question source needs 'id' (an irds: id) or 'questions' (a JSONL path); found {dict(source)}")
    elif str(source).startswith("irds:"):
        questions = _questions_from_irds(str(source))
    else:
        questions = _questions_from_files(Path(os.fspath(source)), None)
    if start or stop is not None:
        questions = questions.subset(start, None if stop is None else int(stop))
    return questions


def load_corpus(source: str) -> Corpus:
    """Return the :class:`Corpus` of ``source`` (``"irds:<id>"`` or a JSONL path)."""
    return Corpus(str(source))
