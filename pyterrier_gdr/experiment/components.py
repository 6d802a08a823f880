"""Indexes, models and pipelines of an experiment, built once and reused from the cache.

Cache layout (under the experiment's ``cache`` folder, one folder per corpus)::

    <corpus>/bm25.pisa                       pyterrier-pisa index
    <corpus>/dense-<encoder>[-title].flex    pyterrier-dr FlexIndex (the dense baseline's vectors)
    <corpus>/gdr-<settings hash>             GDRIndex built from those vectors, with its trained model

Each is built in a temporary sibling and renamed when complete, so an interrupted run
rebuilds only what it had not finished.
"""
from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import asdict
from pathlib import Path
from typing import Dict, Iterator, Optional, Tuple

import pyterrier as pt

from pyterrier_gdr._util import atomic_build_path, resolve_encoder
from pyterrier_gdr.datasets import Corpus, QuestionSet, load_corpus, load_questions
from pyterrier_gdr.experiment.config import COMPONENTS, READERS, ExperimentConfig, ExperimentError, PipelineSpec

__all__ = ["ExperimentResources"]

logger = logging.getLogger(__name__)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text.rstrip("/").split("/")[-1])[:60]


class ExperimentResources:
    """Builds (or reopens) what an experiment's pipelines need, lazily and once each."""

    def __init__(self, config: ExperimentConfig, *, verbose: bool = True):
        self.config = config
        self.verbose = verbose
        self.corpus: Corpus = load_corpus(config.corpus)
        self.encoder_path = resolve_encoder(config.encoder)
        self.folder = config.cache / self.corpus.name
        self._splits: Dict[str, Optional[QuestionSet]] = {}
        self._bm25 = None
        self._flex = None
        self._bi_encoder = None
        self._gdr = None
        self._reader_base = None
        self._qst_path = None

    # --- data ---------------------------------------------------------------------------

    def split(self, name: str) -> Optional[QuestionSet]:
        """The questions of split ``name`` (``train``, ``dev`` or ``test``), or None if the file names none."""
        if name not in self._splits:
            source = getattr(self.config, name)
            self._splits[name] = load_questions(source) if source is not None else None
        return self._splits[name]

    def documents(self) -> Iterator[dict]:
        """The corpus as indexed: ``text`` is prefixed with the title when ``title_in_text`` is set."""
        for doc in self.corpus:
            text = f"{doc['title']}. {doc['text']}" if self.config.title_in_text and doc["title"] else doc["text"]
            yield {"docno": doc["docno"], "text": text, "title": doc["title"]}

    # --- indexes ------------------------------------------------------------------------

    def bm25_index(self):
        """The PISA index of the corpus (built on first use)."""
        if self._bm25 is None:
            from pyterrier_pisa import PisaIndex

            path = self.folder / "bm25.pisa"
            if not path.exists():
                logger.info("building the BM25 index at %s", path)
                with atomic_build_path(path) as tmp:
                    PisaIndex(str(tmp), text_field="text", threads=2).index(self.documents())
            self._bm25 = PisaIndex(str(path), text_field="text", threads=2)
        return self._bm25

    def bi_encoder(self):
        """The pyterrier-dr bi-encoder of the dense baseline."""
        if self._bi_encoder is None:
            from pyterrier_dr import SBertBiEncoder

            # Not verbose: its per-batch bars would interleave with each query batch; the corpus bar is ours.
            self._bi_encoder = SBertBiEncoder(self.encoder_path, batch_size=self.config.encoder_batch_size, verbose=False)
        return self._bi_encoder

    def flex_index(self):
        """The pyterrier-dr FlexIndex of the corpus (built on first use)."""
        if self._flex is None:
            from pyterrier_dr import FlexIndex

            suffix = "-title" if self.config.title_in_text else ""
            path = self.folder / f"dense-{_slug(self.config.encoder)}{suffix}.flex"
            if not path.exists():
                logger.info("encoding the corpus into %s", path)
                with atomic_build_path(path) as tmp:
                    (self.bi_encoder().doc_encoder() >> FlexIndex(str(tmp), verbose=self.verbose)).index(
                        pt.tqdm(self.documents(), total=self.corpus.count, desc="dense index", unit="doc", disable=not self.verbose)
                    )
            self._flex = FlexIndex(str(path), verbose=self.verbose)
        return self._flex

    def gdr_settings(self) -> dict:
        """Everything that shapes the GDR index and model; its hash names the cache folder."""
        return {
            "encoder": self.config.encoder,
            "title_in_text": self.config.title_in_text,
            "tree": asdict(self.config.tree),
            "training": asdict(self.config.training),
            "train": self.config.train if isinstance(self.config.train, (str, type(None))) else dict(self.config.train),
        }

    def gdr_index(self):
        """The trained GDRIndex (vectors shared with the FlexIndex; built and trained on first use)."""
        if self._gdr is None:
            from pyterrier_gdr.index import GDRIndex

            settings = self.gdr_settings()
            digest = hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]
            path = self.folder / f"gdr-{digest}"
            if not (path / "pt_meta.json").exists():
                flex = self.flex_index()
                vectors = flex.payload(return_docnos=False)[0]
                logger.info("clustering %d document vectors into %s", len(vectors), path)
                GDRIndex.from_vectors(path, vectors, flex.index_path / "docnos.npids", encoder=self.encoder_path, tree=self.config.tree, overwrite=path.exists(), verbose=self.verbose)
                with open(path / "experiment_settings.json", "w", encoding="utf-8") as fout:
                    json.dump(settings, fout, indent=2)
            else:
                logger.info("using the GDR index at %s", path)
            index = GDRIndex(path, verbose=self.verbose)
            if not index.has_model:
                train = self.split("train")
                import pandas as pd

                topics = train.topics if train is not None else pd.DataFrame(columns=["qid", "query"])
                qrels = train.qrels if train is not None else pd.DataFrame(columns=["qid", "docno", "label"])
                logger.info("training the GDR model of %s", path)
                index.train(topics, qrels, corpus=self.documents(), config=self.config.training)
            self._gdr = index
        return self._gdr

    # --- pipelines ----------------------------------------------------------------------

    def component(self, name: str, params: dict, *, cache: bool = False) -> pt.Transformer:
        """Return the transformer of component ``name`` with ``params`` over the defaults."""
        settings = {**COMPONENTS[name], **params}
        if name == "bm25":
            return self.bm25_index().bm25(num_results=int(settings["num_results"]), k1=float(settings["k1"]), b=float(settings["b"]))
        if name == "dense":
            return self.bi_encoder().query_encoder() >> self.flex_index().np_retriever(num_results=int(settings["num_results"]))
        if name == "generator":
            return self.gdr_index().cluster_generator(
                num_clusters=int(settings["num_clusters"]), beam_size=settings["beam_size"],
                added_clusters=None if settings["added_clusters"] is None else int(settings["added_clusters"]),
                precision=str(settings["precision"]), cache=cache, verbose=False,
            )
        if name == "centroid":
            return self.gdr_index().centroid_router(num_clusters=int(settings["num_clusters"]), verbose=False)
        if name in READERS:
            return self.reader(name, settings)
        if name == "ranker":
            return self.gdr_index().intra_cluster_ranker(
                alpha=float(settings["alpha"]), num_results=int(settings["num_results"]), fusion=settings["fusion"],
                temperature=float(settings["temperature"]), verbose=False,
            )
        raise ExperimentError(f"unknown component {name!r}; valid: {', '.join(COMPONENTS)}")

    def pipeline(self, spec: PipelineSpec, *, params: Optional[Dict[str, dict]] = None, cache: bool = False) -> Tuple[pt.Transformer, Dict[str, pt.Transformer]]:
        """Return ``(pipeline, parts)``: the composed transformer and each component's transformer."""
        params = params or spec.params
        parts = {name: self.component(name, params.get(name, {}), cache=cache) for name in spec.components}
        pipeline = None
        for name in spec.components:
            if name in READERS:
                # Readers read passage texts, which the retrieval stages do not return.
                pipeline = pipeline >> self.text_loader()
            pipeline = parts[name] if pipeline is None else pipeline >> parts[name]
        return pipeline, parts

    def documents_scored(self, spec: PipelineSpec, parts: Dict[str, pt.Transformer]) -> float:
        """Documents whose score was computed, per query, by the last scoring stage of the pipeline.

        Dense retrieval scores the whole corpus; the GDR ranker counts its candidates. BM25's
        work depends on the posting lists PISA traverses, which it does not report (NaN).
        """
        retrieval = [c for c in spec.components if c not in READERS]
        if not retrieval:
            return float("nan")
        last = retrieval[-1]
        if last == "ranker":
            return parts["ranker"].work.documents_per_query()
        if last == "dense":
            return float(self.corpus.count)
        return float("nan")

    # --- readers ------------------------------------------------------------------------

    def text_loader(self) -> pt.Transformer:
        """A transformer adding each passage's ``text`` and ``title`` from the corpus."""
        corpus = self.corpus

        def add_text(frame):
            frame = frame.copy()
            docnos = frame["docno"].astype(str).tolist()
            frame["text"] = corpus.texts(docnos) if len(frame) else []
            return frame

        return pt.apply.generic(add_text)

    def reader_base(self):
        """The reader's base LLM and tokenizer, loaded (and quantized) once and shared by all readers."""
        if self._reader_base is None:
            from pyterrier_gdr.reader import load_base

            spec = self.config.reader
            logger.info("loading the reader base %s", spec.base)
            self._reader_base = load_base(spec.base, quantize=spec.quantize)
        return self._reader_base

    def reader(self, name: str, settings: dict) -> pt.Transformer:
        """The base reader (``base_reader``) or the QST-tuned reader (``reader``, trained on first use)."""
        from pyterrier_gdr.reader import QSTReader

        model, tokenizer = self.reader_base()
        if name == "base_reader":
            return QSTReader.from_base(model, tokenizer=tokenizer, qst=None, **settings)
        path = self.train_qst_reader(settings)
        return QSTReader.from_pretrained(path, base=model, tokenizer=tokenizer, **settings)

    def reader_settings(self, settings: dict) -> dict:
        """Everything that shapes the trained reader; its hash names the cache folder."""
        spec = self.config.reader
        return {
            "base": spec.base, "quantize": spec.quantize, "train_corpus": spec.train_corpus,
            "train_questions": spec.train_questions, "train_retriever_results": spec.train_retriever_results,
            "qst": spec.qst, "training": spec.training,
            "num_passages": settings["num_passages"], "max_prompt_tokens": settings["max_prompt_tokens"],
        }

    def train_qst_reader(self, settings: dict) -> Path:
        """Train the QST reader on the [reader] training data (BM25 passages), or find it in the cache."""
        from pyterrier_gdr.reader import QSTConfig, QSTReader, ReaderTrainingConfig, train_reader

        spec = self.config.reader
        fingerprint = self.reader_settings(settings)
        digest = hashlib.sha1(json.dumps(fingerprint, sort_keys=True, default=str).encode()).hexdigest()[:10]
        path = self.config.cache / "readers" / f"qst-{_slug(spec.base)}-{digest}"
        if (path / "pt_meta.json").exists():
            return path

        # Training data: questions with answers, and BM25's passages from the training corpus.
        train_resources = ExperimentResources(self.config, verbose=self.verbose)
        train_resources.corpus = load_corpus(spec.train_corpus)
        train_resources.folder = self.config.cache / train_resources.corpus.name
        questions = load_questions(spec.train_questions)
        frame = questions.topics.copy()
        frame["answers"] = [questions.answers.get(qid, []) for qid in frame["qid"]]
        retriever = train_resources.bm25_index().bm25(num_results=spec.train_retriever_results) >> train_resources.text_loader()

        model, tokenizer = self.reader_base()
        reader = QSTReader.from_base(model, tokenizer=tokenizer, qst=QSTConfig(**spec.qst), **settings)
        logger.info("training the QST reader on %d questions into %s", len(frame), path)
        # train_reader resumes from its own checkpoint in this folder after an interruption.
        train_reader(reader, questions=frame, retriever=retriever, output_dir=path, config=ReaderTrainingConfig(**spec.training), verbose=self.verbose)
        with open(path / "experiment_settings.json", "w", encoding="utf-8") as fout:
            json.dump(fingerprint, fout, indent=2, default=str)
        return path

    def passage_texts(self, docnos):
        """Raw passage texts (no title prefix), as answer matching reads them."""
        return self.corpus.texts(list(docnos))
