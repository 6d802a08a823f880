"""``CentroidRouter``: memory-free cluster selection, the baseline GDR's generator competes with.

Clusters are ranked by how near the query vector lies to each leaf's centroid, with no
generative model and nothing memorised. "Near" follows the tree's ``assign_metric``: for
``"l2"`` (the default, the rule by which k-means formed the leaves) the score is
``q . c - |c|^2 / 2``, which orders centroids as Euclidean distance does, so a query equal
to a document's vector routes to that document's leaf; for ``"ip"`` it is ``q . c``. At the same number of clusters, comparing
``router >> ranker`` with ``generator >> ranker`` isolates what the generator's memory adds.

Documents added after the build (:meth:`~pyterrier_gdr.index.GDRIndex.add_documents`) are
also clustered among themselves into groups. A group is ranked by its centroid alongside the
leaves, and its candidates are its own documents.
"""
from __future__ import annotations

from typing import List

import numpy as np
import pandas as pd
import pyterrier as pt
import pyterrier_alpha as pta
import torch

from pyterrier_gdr.generator import CANDIDATE_COLUMNS, WorkCounter, expand_clusters

__all__ = ["CentroidRouter", "centroid_offsets"]


def centroid_offsets(centroids, metric: str):
    """Return what each centroid's score subtracts from ``q . c``: ``|c|^2 / 2`` for ``"l2"``, 0 for ``"ip"``.

    Works on NumPy arrays and torch tensors alike.
    """
    if metric == "l2":
        return (centroids * centroids).sum(1) / 2
    return centroids.sum(1) * 0


class CentroidRouter(pt.Transformer):
    """Queries -> candidate documents of the clusters whose centroids best match the query.

    Output columns are those of :class:`~pyterrier_gdr.generator.ClusterGenerator`;
    ``cluster_score`` is the centroid score divided by ``temperature``, a logit on the scale
    of the contrastive training, so the ranker's fusion treats it like a generator's
    log-probability.

    Args:
        index: the :class:`~pyterrier_gdr.index.GDRIndex` (its trained model encodes queries;
            an untrained index uses the base encoder).
        num_clusters: clusters per query whose documents are returned.
        batch_size: queries encoded together.
        temperature: divides the inner products.
    """

    def __init__(self, index, *, num_clusters: int = 10, batch_size: int = 64, temperature: float = 0.05, verbose: bool = False):
        if num_clusters < 1:
            raise ValueError(f"num_clusters={num_clusters} is invalid; it must be at least 1")
        if temperature <= 0:
            raise ValueError(f"temperature={temperature} is invalid; it must be positive")
        self.index = index
        self.num_clusters = num_clusters
        self.batch_size = batch_size
        self.temperature = temperature
        self.verbose = verbose
        self.work = WorkCounter()
        self._centroids = None

    def __repr__(self) -> str:
        return f"CentroidRouter({self.index!r}, num_clusters={self.num_clusters})"

    def transform(self, inp: pd.DataFrame) -> pd.DataFrame:
        pta.validate.query_frame(inp, extra_columns=["query"])
        if len(inp) == 0:
            return pd.DataFrame({c: pd.Series(dtype=object) for c in CANDIDATE_COLUMNS})
        topics = inp.reset_index(drop=True)
        frames: List[pd.DataFrame] = []
        batches = range(0, len(topics), self.batch_size)
        for start in pt.tqdm(batches, desc="CentroidRouter", unit="batch", disable=not self.verbose):
            batch = topics.iloc[start:start + self.batch_size].reset_index(drop=True)
            query_vectors = self.index.encode_queries(batch["query"].tolist())  # (B, dim) tensor
            with torch.no_grad():
                scores = self.cluster_scores(query_vectors)
                k = min(self.num_clusters, scores.shape[1])
                scores, leaves = scores.topk(k, dim=1)  # (B, k)
            frames.append(
                expand_clusters(
                    self.index, batch, leaves.cpu().numpy(), (scores / self.temperature).double().cpu().numpy(),
                    query_vectors.float().cpu().numpy(),
                )
            )
        self.work.queries += len(topics)
        return pd.concat(frames, ignore_index=True)

    def cluster_scores(self, query_vectors: torch.Tensor) -> torch.Tensor:
        """Return the ``(B, L + G)`` centroid scores of ``(B, dim)`` query vectors: L leaves, then G groups of added documents."""
        centroids, offsets = self._centroid_tensors(query_vectors.device)
        return query_vectors @ centroids.T - offsets

    def _centroid_tensors(self, device) -> tuple:
        """Return ``(centroids (L + G, dim), offsets (L + G,))`` with score = q . c - offset."""
        tree, groups = self.index.tree, self.index.added_groups()
        # The index reloads its tree and groups after documents are added, and the cached tensors then go stale.
        current = self._centroids is not None and self._centroids[0] is tree and self._centroids[1] is groups
        if not current or self._centroids[2].device != device:
            centroids = np.concatenate([np.asarray(tree.leaf_centroids, dtype=np.float32), groups.centroids])
            centroids = torch.as_tensor(centroids, device=device)
            self._centroids = (tree, groups, centroids, centroid_offsets(centroids, tree.config.assign_metric))
        return self._centroids[2:]
