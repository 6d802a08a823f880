"""``GDRIndex``: the directory that contains everything GDR retrieves with.

Layout (file names carry their dtype, as in pyterrier-dr)::

    pt_meta.json        type, format, format version, counts; written last
    config.json         every parameter that shaped the index and its model
    vecs.f4             (doc_count, dim) float32 document vectors, memory-mapped
    docnos.npids        docnos in row order (npids)
    tree/               the cluster tree (see pyterrier_gdr.clusters)
    model/              the trained GDR model (see pyterrier_gdr.model), once trained

A build happens in a temporary sibling directory that is renamed into place at the end,
so an interrupted build never leaves something that looks like an index.
"""
from __future__ import annotations

import itertools
import json
import logging
import os
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Union

import numpy as np
import pyterrier as pt
import pyterrier_alpha as pta

from pyterrier_gdr._util import atomic_directory, atomic_write_json, portable_encoder_name, resolve_device, resolve_encoder
from pyterrier_gdr.clusters import ClusterTree, ClusterTreeConfig, build_cluster_tree
from pyterrier_gdr.distributed import process_state
from pyterrier_gdr.docnos import SegmentedDocnos, segment_builder, segment_name

__all__ = ["GDRIndex", "IndexFormatError"]

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1


class IndexFormatError(ValueError):
    """An index directory is incomplete, damaged, or of another format version."""


class GDRIndex(pta.Artifact):
    """A GDR index: document vectors, their cluster tree and the trained GDR model.

    Open an existing index with ``GDRIndex(path)``; create one with :meth:`build` (encode a
    corpus) or :meth:`from_vectors` (reuse vectors, e.g. of a pyterrier-dr ``FlexIndex``),
    then :meth:`train` its model. The index hands out the transformers that search it::

        index = GDRIndex.build("nq.gdr", corpus_iter, tree=ClusterTreeConfig(adaptive=True))
        index.train(train_topics, train_qrels, corpus=corpus_iter)
        gdr = index.cluster_generator() >> index.intra_cluster_ranker()

    Args:
        path: the index directory.
        device: where the model runs (CUDA when available if omitted).
        verbose: show progress bars.
    """

    ARTIFACT_TYPE = "gdr_index"
    ARTIFACT_FORMAT = "gdr"
    ARTIFACT_PACKAGE_HINT = "pyterrier-gdr"

    def __init__(self, path: Union[str, Path], *, device=None, verbose: bool = True):
        super().__init__(path)
        self.path = Path(path)
        self.device = device
        self.verbose = verbose
        self._meta: Optional[Dict[str, Any]] = None
        self._vectors = None
        self._docnos = None
        self._tree = None
        self._model = None
        self._torch_trie = None
        self._added_groups = None
        self._base_encoder = None

    def __repr__(self) -> str:
        return f"GDRIndex({str(self.path)!r})"

    # --- metadata and validation --------------------------------------------------------

    @property
    def meta(self) -> Dict[str, Any]:
        """The contents of ``pt_meta.json``, checked against this package's format."""
        if self._meta is None:
            self._meta = self._read_meta()
        return self._meta

    def _read_meta(self) -> Dict[str, Any]:
        if not self.path.exists():
            raise FileNotFoundError(f"no GDR index at {self.path}; build one with `pyterrier-gdr build` or GDRIndex.build(...)")
        meta_path = self.path / "pt_meta.json"
        if not meta_path.exists():
            raise IndexFormatError(
                f"{self.path} has no pt_meta.json, so it is not a complete GDR index. Check the path; if it is an "
                "interrupted build, remove that directory and build the index again."
            )
        try:
            with open(meta_path, encoding="utf-8") as fin:
                meta = json.load(fin)
        except json.JSONDecodeError as e:
            raise IndexFormatError(f"{meta_path} is not valid JSON ({e.msg}); the index is damaged, rebuild it") from e

        if meta.get("type") != self.ARTIFACT_TYPE or meta.get("format") != self.ARTIFACT_FORMAT:
            raise IndexFormatError(
                f"{self.path} contains a {meta.get('type')}/{meta.get('format')} artifact, not a "
                f"{self.ARTIFACT_TYPE}/{self.ARTIFACT_FORMAT} (GDR index)"
            )
        version = meta.get("format_version")
        if version != FORMAT_VERSION:
            raise IndexFormatError(
                f"{self.path} is a GDR index of format version {version}; this pyterrier-gdr reads version "
                f"{FORMAT_VERSION}. Rebuild it with GDRIndex.build(...), or use the pyterrier-gdr version that wrote it."
            )

        # Files: at least the committed rows (an interrupted addition may leave more), and every docno segment.
        expected = meta["doc_count"] * meta["vec_size"] * 4
        vecs = self.path / "vecs.f4"
        if not vecs.exists() or vecs.stat().st_size < expected:
            size = vecs.stat().st_size if vecs.exists() else 0
            raise IndexFormatError(
                f"{vecs} has {size} bytes, expected at least {expected} for {meta['doc_count']} vectors of "
                f"dimension {meta['vec_size']}; the index is damaged, rebuild it"
            )
        segments = meta.get("docno_segments")
        if not isinstance(segments, list) or sum(segments) != meta["doc_count"]:
            raise IndexFormatError(f"{meta_path} lists docno segments {segments!r} that do not add up to doc_count={meta['doc_count']}; the index is damaged, rebuild it")
        required = [segment_name(i) for i in range(len(segments))] + ["tree/tree.json", "tree/doc_leaf.i4", "config.json"]
        for name in required:
            if not (self.path / name).exists():
                raise IndexFormatError(f"{self.path / name} is missing; the index is damaged, rebuild it")
        return meta

    def built(self) -> bool:
        """Return whether ``path`` holds a complete index."""
        return (self.path / "pt_meta.json").exists()

    @property
    def config(self) -> Dict[str, Any]:
        """Every parameter that shaped this index (``config.json``)."""
        self.meta  # raises a clear error for a missing, incomplete or damaged index
        with open(self.path / "config.json", encoding="utf-8") as fin:
            return json.load(fin)

    @property
    def encoder_path(self) -> str:
        """The loadable path or name of the encoder that produced the vectors.

        ``config.json`` records a portable name, and the packaged all-MiniLM-L6-v2 resolves to its local copy.
        """
        return resolve_encoder(self.config["encoder"])

    def __len__(self) -> int:
        return int(self.meta["doc_count"])

    @property
    def has_model(self) -> bool:
        return bool(self.meta.get("has_model")) and (self.path / "model" / "gdr_model.json").exists()

    # --- payload ------------------------------------------------------------------------

    @property
    def vectors(self) -> np.ndarray:
        """``(doc_count, dim)`` float32 document vectors, memory-mapped read-only."""
        if self._vectors is None:
            meta = self.meta
            self._vectors = np.memmap(self.path / "vecs.f4", mode="r", dtype=np.float32, shape=(meta["doc_count"], meta["vec_size"]))
        return self._vectors

    @property
    def docnos(self) -> SegmentedDocnos:
        """The docnos in row order (``fwd``: ids to docnos, ``inv``: docnos to ids)."""
        if self._docnos is None:
            self._docnos = SegmentedDocnos(self.path, self.meta["docno_segments"])
        return self._docnos

    def doc_ids(self, docnos: Sequence[str]) -> np.ndarray:
        """Return the row ids of ``docnos`` (-1 for a docno not in the index)."""
        if len(docnos) == 0:
            return np.empty(0, dtype=np.int64)
        return self.docnos.inv(docnos)

    def docnos_of(self, doc_ids: np.ndarray) -> np.ndarray:
        """Return the docnos of row ids ``doc_ids``."""
        if len(doc_ids) == 0:
            return np.empty(0, dtype=object)
        return np.asarray(self.docnos.fwd(doc_ids), dtype=object)

    @property
    def tree(self) -> ClusterTree:
        if self._tree is None:
            self._tree = ClusterTree.load(self.path / "tree", num_docs=len(self))
        return self._tree

    @property
    def model(self):
        """The trained :class:`~pyterrier_gdr.model.GDRModel` (raises if the index has none)."""
        if self._model is None:
            from pyterrier_gdr.model import GDRModel

            if not self.has_model:
                raise ValueError(f"{self.path} has no trained GDR model; call index.train(...) (or `pyterrier-gdr experiment`) first")

            self._model = GDRModel.load(self.path / "model", device=self.device)
        return self._model

    def torch_trie(self):
        """The CID trie as tensors on the model's device (cached)."""
        if self._torch_trie is None:
            from pyterrier_gdr.decoding import TorchTrie

            self._torch_trie = TorchTrie.from_trie(self.tree.trie(), max_depth=self.tree.max_depth, device=self.model.device)
        return self._torch_trie

    # --- building -----------------------------------------------------------------------

    @classmethod
    def build(
        cls,
        path: Union[str, Path],
        docs: Iterable[dict],
        *,
        encoder=None,
        tree: Optional[ClusterTreeConfig] = None,
        count: Optional[int] = None,
        overwrite: bool = False,
        verbose: bool = True,
    ) -> "GDRIndex":
        """Encode ``docs`` (dicts with ``docno`` and ``text``), cluster them and write a new index.

        Args:
            path: the index directory to create.
            docs: the corpus, streamed once.
            encoder: a :class:`~pyterrier_gdr.encoding.DocumentEncoder`, a model path or name, or
                ``None`` for the offline all-MiniLM-L6-v2.
            tree: cluster tree parameters (the GDR paper's 30/30 when omitted).
            count: the number of documents, for the progress bar.
            overwrite: replace an existing index at ``path``.
            verbose: show progress.

        Raises:
            FileExistsError: if ``path`` exists and ``overwrite`` is false.
            ValueError: if ``docs`` is empty.
        """

        from pyterrier_gdr.encoding import DocumentEncoder

        if not isinstance(encoder, DocumentEncoder):
            encoder = DocumentEncoder(encoder, verbose=verbose)
        tree = tree or ClusterTreeConfig()
        cls._check_target(path, overwrite)
        docs = iter(docs)
        first = next(docs, None)
        if first is None:
            raise ValueError("cannot build a GDR index from an empty corpus: no documents were given")
        docs = itertools.chain([first], docs)
        state = process_state()
        if state.num_processes > 1:
            return cls._build_sharded(path, docs, encoder, tree, count, overwrite, verbose, state)
        with atomic_directory(path, overwrite=overwrite) as tmp:
            started = time.perf_counter()
            with segment_builder(tmp / "docnos.npids") as docnos_builder:
                doc_count = encoder.encode_to_file(docs, tmp / "vecs.f4", docnos_builder, total=count)
            encode_seconds = time.perf_counter() - started
            cls._write_tree_and_meta(tmp, doc_count, encoder.dim, encoder.model_name, tree, verbose, {"encode_seconds": encode_seconds})
        return cls(path, verbose=verbose)

    @classmethod
    def _build_sharded(cls, path, docs, encoder, tree, count, overwrite, verbose, state) -> "GDRIndex":
        """Build under ``accelerate launch``: each process encodes a shard, the main process merges and clusters."""
        from npids import Lookup

        from pyterrier_gdr.distributed import encode_sharded, read_docnos

        if count is None:
            raise ValueError("building with several processes needs count= (the number of documents), so each process can find its shard")
        path = Path(path)
        shards = path.parent / f".{path.name}.shards"
        started = time.perf_counter()
        merged = encode_sharded(encoder, docs, count, shards, state)
        if state.is_main_process:
            encode_seconds = time.perf_counter() - started
            with atomic_directory(path, overwrite=overwrite) as tmp:
                os.replace(merged[0], tmp / "vecs.f4")
                Lookup.build(read_docnos(merged[1]), tmp / "docnos.npids", return_self=False)
                timings = {"encode_seconds": encode_seconds, "encode_processes": state.num_processes}
                cls._write_tree_and_meta(tmp, count, encoder.dim, encoder.model_name, tree, verbose, timings)
            shutil.rmtree(shards, ignore_errors=True)
        state.wait_for_everyone()
        return cls(path, verbose=verbose)

    @classmethod
    def from_vectors(
        cls,
        path: Union[str, Path],
        vectors: np.ndarray,
        docnos_file: Union[str, Path],
        *,
        encoder: str,
        tree: Optional[ClusterTreeConfig] = None,
        overwrite: bool = False,
        verbose: bool = True,
    ) -> "GDRIndex":
        """Write a new index from existing vectors, e.g. those of a pyterrier-dr ``FlexIndex``.

        Args:
            path: the index directory to create.
            vectors: ``(doc_count, dim)`` float32 document vectors (a memory map is fine).
            docnos_file: an ``npids`` file of the docnos in row order (``FlexIndex``'s ``docnos.npids``).
            encoder: path or name of the model that produced ``vectors`` (recorded, and used to add documents).
            tree: cluster tree parameters.
            overwrite: replace an existing index at ``path``.
        """
        tree = tree or ClusterTreeConfig()
        if vectors.ndim != 2 or len(vectors) == 0:
            raise ValueError(f"cannot build a GDR index from vectors of shape {vectors.shape}; expected (doc_count > 0, dim)")
        cls._check_target(path, overwrite)
        with atomic_directory(path, overwrite=overwrite) as tmp:
            with open(tmp / "vecs.f4", "wb") as fout:
                for start in pt.tqdm(range(0, len(vectors), 65536), desc="copying vectors", unit="chunk", disable=not verbose):
                    fout.write(np.ascontiguousarray(vectors[start:start + 65536], dtype=np.float32).tobytes())
            shutil.copyfile(docnos_file, tmp / "docnos.npids")
            cls._write_tree_and_meta(tmp, len(vectors), vectors.shape[1], encoder, tree, verbose, {})
        return cls(path, verbose=verbose)

    @staticmethod
    def _check_target(path, overwrite: bool) -> None:
        path = Path(path)
        if path.exists() and not overwrite:
            state = "a complete index" if (path / "pt_meta.json").exists() else "an incomplete directory (an interrupted build?)"
            raise FileExistsError(f"{path} already exists and holds {state}; pass overwrite=True to replace it")

    @classmethod
    def _write_tree_and_meta(cls, directory: Path, doc_count: int, dim: int, encoder: str, tree_config: ClusterTreeConfig, verbose: bool, timings: dict) -> None:
        vectors = np.memmap(directory / "vecs.f4", mode="r", dtype=np.float32, shape=(doc_count, dim))
        started = time.perf_counter()
        tree = build_cluster_tree(vectors, tree_config, verbose=verbose)
        timings = {**timings, "kmeans_seconds": time.perf_counter() - started}
        (directory / "tree").mkdir()
        tree.save(directory / "tree")
        del vectors
        atomic_write_json(
            directory / "config.json",
            {"encoder": portable_encoder_name(encoder), "tree": asdict(tree_config), "tree_stats": tree.stats(), "build": timings},
        )
        atomic_write_json(directory / "pt_meta.json", cls._meta_dict(doc_count, dim, tree.num_leaves, has_model=False))

    @classmethod
    def _meta_dict(cls, doc_count: int, dim: int, num_leaves: int, *, has_model: bool) -> Dict[str, Any]:
        return {
            "docno_segments": [int(doc_count)],
            "type": cls.ARTIFACT_TYPE,
            "format": cls.ARTIFACT_FORMAT,
            "format_version": FORMAT_VERSION,
            "package_hint": cls.ARTIFACT_PACKAGE_HINT,
            "doc_count": int(doc_count),
            "vec_size": int(dim),
            "num_leaves": int(num_leaves),
            "has_model": has_model,
        }

    def _update_meta(self, **changes) -> None:
        meta = {**self.meta, **changes}
        atomic_write_json(self.path / "pt_meta.json", meta)
        self._meta = meta

    def _update_config(self, **changes) -> None:
        atomic_write_json(self.path / "config.json", {**self.config, **changes})

    # --- training -----------------------------------------------------------------------

    def train(self, topics, qrels, *, corpus: Optional[Iterable[dict]] = None, config=None, overwrite: bool = False):
        """Train the GDR model of this index and save it in ``model/``.

        Args:
            topics: training questions, ``qid, query``.
            qrels: their relevant documents, ``qid, docno, label`` (label > 0 counts).
            corpus: the documents (``docno, text, title``), for pseudo-queries; needed when
                ``config.pseudo_queries_per_doc > 0`` and always when ``topics`` is empty.
            config: a :class:`~pyterrier_gdr.training.TrainingConfig`.
            overwrite: replace a model that is already trained.

        Returns:
            This index.
        """
        from pyterrier_gdr.training import TrainingConfig, train_gdr

        config = config or TrainingConfig()
        if self.has_model and not overwrite:
            raise FileExistsError(f"{self.path} already has a trained model; pass overwrite=True to train a new one")
        train_gdr(self, topics, qrels, corpus=corpus, config=config, verbose=self.verbose)
        return self

    def _install_model(self, model, training_record: Dict[str, Any]) -> None:
        """Save ``model`` atomically as ``model/`` and record how it was trained."""
        with atomic_directory(self.path / "model", overwrite=True) as tmp:
            model.save(tmp)
        self._update_config(training=training_record)
        self._update_meta(has_model=True, model_stale=False)
        self._reset_payload()

    def _reset_payload(self) -> None:
        """Forget everything read from disk, after the index changed."""
        self._meta = None
        self._vectors = None
        self._docnos = None
        self._tree = None
        self._model = None
        self._torch_trie = None
        self._added_groups = None

    # --- adding documents ---------------------------------------------------------------

    def add_documents(
        self, docs: Iterable[dict], *, encoder=None, max_leaf_size: Optional[int] = None, split_oversized: bool = False,
        centroids: str = "added", count: Optional[int] = None,
    ):
        """Add documents without retraining: encode them and attach each to its nearest leaf.

        The existing vectors and docnos are not rewritten, the generator is untouched, and an
        interrupted addition leaves the index as it was. By default (``centroids="added"``) the
        documents added since the build are clustered among themselves into groups, which
        centroid routing and the cluster generator route to as clusters of their own.
        ``"mean"`` recomputes the centroids of the leaves that received documents
        instead, and ``"keep"`` leaves the centroids as built (see :mod:`pyterrier_gdr.updates`).
        Leaves that grow past ``max_leaf_size`` (twice
        the tree's leaf size by default) are reported; with ``split_oversized`` they are
        re-clustered, which changes CIDs and so requires retraining the generator.

        Example::

            index.add_documents([{"docno": "new-1", "text": "..."}])

        Returns:
            An :class:`~pyterrier_gdr.updates.AddResult`.
        """
        from pyterrier_gdr.updates import add_documents

        return add_documents(
            self, docs, encoder=encoder, max_leaf_size=max_leaf_size, split_oversized=split_oversized,
            centroids=centroids, count=count,
        )

    def added_groups(self):
        """Return the :class:`~pyterrier_gdr.updates.AddedGroups`: the documents added since the build, clustered among themselves."""
        if self._added_groups is None:
            from pyterrier_gdr.updates import read_added_groups

            self._added_groups = read_added_groups(self)
        return self._added_groups

    # --- transformers -------------------------------------------------------------------

    def cluster_generator(
        self, *, num_clusters: int = 10, beam_size: Optional[int] = None, batch_size: int = 32, cache: bool = False,
        added_clusters: Optional[int] = None, precision: Optional[str] = "float32", verbose: Optional[bool] = None,
    ):
        """Return the :class:`~pyterrier_gdr.generator.ClusterGenerator` of this index.

        Args:
            num_clusters: clusters whose documents become candidates, per query.
            beam_size: beams of the constrained search (at least ``num_clusters``; equal when omitted).
            cache: keep decoded queries in memory, so repeated runs (e.g. a grid search over the
                ranker's ``alpha``) decode each query once.
            added_clusters: also return the documents of the groups of added documents that
                centroid routing with this many clusters would choose: those among the
                ``added_clusters`` best centroids, leaves and groups ranked together (see
                :meth:`add_documents`). ``num_clusters`` when omitted, 0 for none. Their rows
                have ``cluster_id >= tree.num_leaves`` and the query's lowest decoded ``cluster_score``.
            precision: the decoder's arithmetic: ``"float32"`` (exact), ``"bfloat16"`` or
                ``"float16"`` (faster where the hardware supports them; close clusters may swap).
        """
        from pyterrier_gdr.generator import ClusterGenerator

        return ClusterGenerator(
            self, num_clusters=num_clusters, beam_size=beam_size, batch_size=batch_size, cache=cache,
            added_clusters=added_clusters, precision=precision, verbose=self.verbose if verbose is None else verbose,
        )

    def centroid_router(self, *, num_clusters: int = 10, batch_size: int = 64, temperature: float = 0.05, verbose: Optional[bool] = None):
        """Return the memory-free :class:`~pyterrier_gdr.router.CentroidRouter` of this index."""
        from pyterrier_gdr.router import CentroidRouter

        return CentroidRouter(self, num_clusters=num_clusters, batch_size=batch_size, temperature=temperature, verbose=self.verbose if verbose is None else verbose)

    def intra_cluster_ranker(self, *, alpha: float = 1.0, num_results: int = 100, fusion: str = "log_prob", temperature: float = 0.05, batch_size: int = 64, verbose: Optional[bool] = None):
        """Return the :class:`~pyterrier_gdr.ranker.IntraClusterRanker` of this index."""
        from pyterrier_gdr.ranker import IntraClusterRanker

        return IntraClusterRanker(
            self, alpha=alpha, num_results=num_results, fusion=fusion, temperature=temperature,
            batch_size=batch_size, verbose=self.verbose if verbose is None else verbose,
        )

    # --- queries ------------------------------------------------------------------------

    def encode_queries(self, queries: List[str], *, batch_size: int = 64):
        """Return ``(len(queries), dim)`` query vectors as a tensor: the trained model's, or the base encoder's before training."""
        import torch

        if self.has_model:
            return self.model.encode_queries(queries, batch_size=batch_size)
        if self._base_encoder is None:
            from pyterrier_gdr.encoding import DocumentEncoder

            self._base_encoder = DocumentEncoder(self.encoder_path, batch_size=batch_size, device=self.device)
        return torch.as_tensor(self._base_encoder.encode(list(queries)))

    def resolved_device(self):
        """The torch device scoring runs on."""
        if self._model is not None:
            return self._model.device
        return resolve_device(self.device)
