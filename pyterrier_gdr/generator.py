"""``ClusterGenerator``: GDR's inter-cluster matching as a PyTerrier transformer.

For each query the GDR model decodes the most probable cluster identifiers by beam
search constrained to valid CIDs. The documents of those clusters become the candidates
that an :class:`~pyterrier_gdr.ranker.IntraClusterRanker` then scores.
"""
from __future__ import annotations

import logging
from typing import List, Optional

import numpy as np
import pandas as pd
import pyterrier as pt
import pyterrier_alpha as pta
import torch

__all__ = ["ClusterGenerator", "CANDIDATE_COLUMNS", "WorkCounter"]

logger = logging.getLogger(__name__)

CANDIDATE_COLUMNS = ["qid", "query", "docno", "score", "rank", "cluster_id", "cluster_score", "cluster_rank", "query_vec"]


class WorkCounter:
    """Counts queries and the documents a transformer scored, for cost reports."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.queries = 0
        self.documents = 0
        self.seconds = 0.0

    def documents_per_query(self) -> float:
        return self.documents / self.queries if self.queries else float("nan")


def expand_clusters(index, topics: pd.DataFrame, leaves: np.ndarray, cluster_scores: np.ndarray, query_vectors: np.ndarray) -> pd.DataFrame:
    """Turn the top clusters of each query into one row per candidate document.

    A cluster is a leaf (``0 <= id < num_leaves``) or a group of added documents (``num_leaves + g``
    for group ``g``, see :meth:`~pyterrier_gdr.index.GDRIndex.added_groups`). An added document
    can be in both its leaf and its group. It is listed once, under the better-ranked cluster.

    Args:
        index: the :class:`~pyterrier_gdr.index.GDRIndex`.
        topics: ``(B)`` rows with ``qid`` and ``query`` (other columns are carried).
        leaves: ``(B, C)`` cluster ids, best first, -1 where absent.
        cluster_scores: ``(B, C)`` cluster scores (higher is better).
        query_vectors: ``(B, dim)``.
    """
    offsets, members = index.tree.members()
    num_leaves = len(offsets) - 1
    group_offsets = group_members = None  # read on the first group
    rows_topic, rows_doc, rows_leaf, rows_score, rows_rank = [], [], [], [], []
    for i in range(len(topics)):
        for rank, (leaf, score) in enumerate(zip(leaves[i], cluster_scores[i])):
            if leaf < 0 or not np.isfinite(score):
                continue
            if leaf < num_leaves:
                docs = members[offsets[leaf]:offsets[leaf + 1]]
            else:
                if group_offsets is None:
                    group_offsets, group_members = index.added_groups().members()
                group = leaf - num_leaves
                docs = group_members[group_offsets[group]:group_offsets[group + 1]]
            rows_topic.append(np.full(len(docs), i))
            rows_doc.append(docs)
            rows_leaf.append(np.full(len(docs), leaf))
            rows_score.append(np.full(len(docs), score, dtype=np.float64))
            rows_rank.append(np.full(len(docs), rank))
    if not rows_doc:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in CANDIDATE_COLUMNS})
    topic_index = np.concatenate(rows_topic)
    doc_ids = np.concatenate(rows_doc)
    keep = slice(None)
    if group_offsets is not None:  # leaves are disjoint, but a group overlaps the leaves its documents joined
        _, first = np.unique(topic_index * (int(doc_ids.max()) + 1) + doc_ids, return_index=True)
        keep = np.sort(first)
        topic_index, doc_ids = topic_index[keep], doc_ids[keep]
    result = topics.iloc[topic_index].reset_index(drop=True)
    result["docno"] = index.docnos_of(doc_ids)
    result["cluster_id"] = np.concatenate(rows_leaf)[keep].astype(np.int64)
    result["cluster_score"] = np.concatenate(rows_score)[keep]
    result["cluster_rank"] = np.concatenate(rows_rank)[keep].astype(np.int64)
    result["score"] = result["cluster_score"]
    # Rank: by cluster, then by position inside the cluster.
    result["rank"] = result.groupby("qid", sort=False).cumcount().astype(np.int64)
    result["query_vec"] = list(query_vectors[topic_index])
    return result


class ClusterGenerator(pt.Transformer):
    """Queries -> candidate documents of the clusters the GDR model generates.

    Output columns: ``qid, query, docno, score, rank`` (``score`` is the cluster score, so
    documents of one cluster tie), ``cluster_id`` (leaf id, or ``num_leaves + g`` for group
    ``g`` of added documents), ``cluster_score`` (log-probability
    of the cluster's CID), ``cluster_rank`` and ``query_vec`` (the model's query vector, so the
    ranker need not encode the query again).

    Args:
        index: the trained :class:`~pyterrier_gdr.index.GDRIndex`.
        num_clusters: clusters per query whose documents are returned.
        beam_size: beams of the constrained beam search; ``num_clusters`` when omitted.
        batch_size: queries decoded together.
        added_clusters: also return, per query, the documents of the groups of added
            documents that centroid routing with this many clusters would choose. Those are
            the groups among the ``added_clusters`` best-matching centroids, leaves and groups
            ranked together (see :class:`~pyterrier_gdr.router.CentroidRouter`). Groups cluster the documents
            added since the build among themselves (see
            :meth:`~pyterrier_gdr.index.GDRIndex.add_documents`). The generator never saw those
            documents, so this routes queries to them without retraining. A query on an old
            topic matches leaves better than groups and gets few groups or none. ``None`` (the
            default) means ``num_clusters``, and 0 turns it off. On an index with no added
            documents it changes nothing. Each group gets the query's lowest decoded
            ``cluster_score``. Documents already among the decoded leaves are not repeated.
        precision: the decoder's arithmetic: ``"float32"`` (the default, also for ``None``)
            returns the clusters of ``transformers``' constrained ``generate``; ``"bfloat16"`` or
            ``"float16"`` decode faster where the hardware multiplies 16-bit numbers natively
            (recent x86 CPUs for bfloat16, GPUs for both) and may rank close clusters in another
            order. The encoder stays in float32, so the query vectors the ranker uses do not change.
        verbose: show progress over query batches.
    """

    def __init__(
        self, index, *, num_clusters: int = 10, beam_size: Optional[int] = None, batch_size: int = 32, cache: bool = False,
        added_clusters: Optional[int] = None, precision: Optional[str] = "float32", verbose: bool = False,
    ):
        from pyterrier_gdr.decoding import DECODER_DTYPES

        if num_clusters < 1:
            raise ValueError(f"num_clusters={num_clusters} is invalid; it must be at least 1")
        is_whole_number = isinstance(added_clusters, (int, np.integer)) and not isinstance(added_clusters, bool)
        if added_clusters is not None and (not is_whole_number or added_clusters < 0):
            raise ValueError(
                f"added_clusters={added_clusters!r} is invalid; use a whole number: 0 adds no groups, m adds the groups "
                "among the m best centroids of leaves and groups, and None means num_clusters"
            )
        precision = "float32" if precision is None else precision
        if precision not in DECODER_DTYPES:
            raise ValueError(
                f"precision={precision!r} is invalid; use 'float32' (exact), 'bfloat16' (faster on recent CPUs and GPUs) "
                "or 'float16' (GPUs)"
            )
        if beam_size is not None and beam_size < num_clusters:
            raise ValueError(f"beam_size={beam_size} is smaller than num_clusters={num_clusters}; use beam_size >= num_clusters")
        self.index = index
        self.num_clusters = num_clusters
        self.beam_size = beam_size
        self.batch_size = batch_size
        self.cache = cache
        self.added_clusters = num_clusters if added_clusters is None else added_clusters
        self.precision = precision
        self.verbose = verbose
        self._router = None  # ranks leaf and group centroids for added_clusters
        self._warned_float16 = False
        self.work = WorkCounter()
        self._decoded = {}

    def __repr__(self) -> str:
        added = f", added_clusters={self.added_clusters}" if self.added_clusters else ""
        precision = f", precision={self.precision!r}" if self.precision != "float32" else ""
        return f"ClusterGenerator({self.index!r}, num_clusters={self.num_clusters}, beam_size={self.beam_size}{added}{precision})"

    @property
    def effective_beam_size(self) -> int:
        """The beam size used: ``beam_size``, or ``num_clusters`` when unset or smaller."""
        return max(self.num_clusters, self.beam_size or 0)

    def clear_cache(self) -> None:
        """Forget decoded queries (kept only when ``cache`` is on, e.g. while tuning other stages)."""
        self._decoded = {}

    def transform(self, inp: pd.DataFrame) -> pd.DataFrame:
        pta.validate.query_frame(inp, extra_columns=["query"])
        if len(inp) == 0:
            return pd.DataFrame({c: pd.Series(dtype=object) for c in CANDIDATE_COLUMNS})
        topics = inp.reset_index(drop=True)
        beam = self.effective_beam_size
        queries = topics["query"].astype(str).tolist()
        todo = sorted({q for q in queries if (q, beam) not in self._decoded})
        lookup = self._decode(todo, beam)
        if self.cache:
            self._decoded.update(lookup)
            lookup = self._decoded
        leaves = np.stack([lookup[(q, beam)][0][: self.num_clusters] for q in queries])
        scores = np.stack([lookup[(q, beam)][1][: self.num_clusters] for q in queries])
        vectors = np.stack([lookup[(q, beam)][2] for q in queries])
        if self.added_clusters:
            leaves, scores = self._with_added_clusters(leaves, scores, vectors)
        self.work.queries += len(topics)
        return expand_clusters(self.index, topics, leaves, scores, vectors)

    def _with_added_clusters(self, leaves: np.ndarray, scores: np.ndarray, vectors: np.ndarray) -> tuple:
        """Append to ``(B, C)`` decoded leaves and scores the groups that centroid routing with ``added_clusters`` clusters chooses."""
        groups = self.index.added_groups()
        if not len(groups):
            return leaves, scores
        from pyterrier_gdr.router import CentroidRouter

        if self._router is None:
            self._router = CentroidRouter(self.index, num_clusters=self.added_clusters)
        with torch.no_grad():
            query_vectors = torch.as_tensor(vectors, dtype=torch.float32, device=self.index.model.device)
            units = self._router.cluster_scores(query_vectors)  # (B, L + G), on the model's device
            best = units.topk(min(self.added_clusters, units.shape[1]), dim=1).indices.cpu().numpy()  # (B, m), best first
        num_leaves = self.index.tree.num_leaves
        # Keep the groups in their centroid order and drop the leaves (the generator chose the leaves).
        chosen = np.where(best >= num_leaves, best, -1)
        chosen = np.take_along_axis(chosen, np.argsort(chosen < 0, axis=1, kind="stable"), axis=1)
        width = int((chosen >= 0).sum(axis=1).max())
        if width == 0:
            return leaves, scores
        chosen = chosen[:, :width]
        lowest = np.where(np.isfinite(scores), scores, np.inf).min(axis=1, keepdims=True)  # the lowest decoded score
        extra_scores = np.where(chosen >= 0, np.where(np.isfinite(lowest), lowest, 0.0), -np.inf)
        return np.concatenate([leaves, chosen], axis=1), np.concatenate([scores, extra_scores], axis=1)

    def _decode(self, queries: List[str], beam: int) -> dict:
        """Return ``{(query, beam): (leaves, scores, query_vector)}`` for ``queries``, decoded in batches."""
        from pyterrier_gdr.decoding import DECODER_DTYPES, constrained_beam_search

        if not queries:
            return {}
        if self.index.meta.get("model_stale"):
            raise ValueError(
                f"the generator of {self.index.path} was trained before leaves were split, so it does not know the new "
                "CIDs; retrain it with index.train(..., overwrite=True), or route with index.centroid_router()"
            )
        model = self.index.model
        trie = self.index.torch_trie()
        dtype = DECODER_DTYPES[self.precision]
        if self.precision == "float16" and model.device.type == "cpu" and not self._warned_float16:
            logger.warning("precision='float16' decodes on the CPU, where it is usually slower than float32; use 'bfloat16' there")
            self._warned_float16 = True
        decoded = {}
        batches = range(0, len(queries), self.batch_size)
        for start in pt.tqdm(batches, desc="ClusterGenerator", unit="batch", disable=not self.verbose):
            batch = queries[start:start + self.batch_size]
            with torch.no_grad():
                tokens = model.tokenize(batch)
                encoder_outputs = model.encode(**tokens)
                query_vectors = model.query_vectors(encoder_outputs.last_hidden_state, tokens["attention_mask"])
                leaves, scores = constrained_beam_search(
                    model, tokens["input_ids"], tokens["attention_mask"], trie, beam_size=beam, encoder_outputs=encoder_outputs, dtype=dtype
                )
            leaves, scores = leaves.cpu().numpy(), scores.cpu().numpy()
            query_vectors = query_vectors.float().cpu().numpy()
            for i, query in enumerate(batch):
                decoded[(query, beam)] = (leaves[i], scores[i], query_vectors[i])
        return decoded
