"""Cluster-adaptive negative sampling: hard negatives drawn from the positive's own cluster.

GDR trains the query encoder to tell apart the documents that share a cluster, because
intra-cluster matching only ever ranks documents within the clusters the generator picks.
In-batch documents (mostly from other clusters) serve as the inter-cluster negatives.
"""
from __future__ import annotations

from typing import Collection, Optional, Sequence, Union

import numpy as np

from pyterrier_gdr.clusters import ClusterTree

__all__ = ["ClusterNegativeSampler"]


class ClusterNegativeSampler:
    """Samples up to ``num_negatives`` documents from the leaf cluster of each positive.

    Args:
        tree: the cluster tree (document ids are row numbers of the index).
        num_negatives: negatives per positive (10 in the GDR paper).
        seed: random seed (an int, or a sequence of ints such as (seed, step, rank)).
    """

    def __init__(self, tree: ClusterTree, *, num_negatives: int = 10, seed: Union[int, Sequence[int]] = 0):
        if num_negatives < 0:
            raise ValueError(f"num_negatives={num_negatives} is invalid; it must be non-negative")
        self.tree = tree
        self.num_negatives = num_negatives
        self.rng = np.random.default_rng(seed)

    def sample(self, positives: Sequence[int], exclude: Optional[Sequence[Collection[int]]] = None) -> np.ndarray:
        """Return ``(len(positives), num_negatives)`` document ids, -1 where a cluster has too few documents.

        Args:
            positives: the positive document id of each example.
            exclude: per example, further ids that must not be drawn (e.g. the query's other relevant documents).
        """
        negatives = np.full((len(positives), self.num_negatives), -1, dtype=np.int64)
        if self.num_negatives == 0:
            return negatives
        doc_leaf = self.tree.doc_leaf
        for row, positive in enumerate(positives):
            members = self.tree.leaf_members(int(doc_leaf[positive]))
            banned = {int(positive)}
            if exclude is not None:
                banned.update(int(d) for d in exclude[row])
            pool = members[~np.isin(members, list(banned))]
            if len(pool) == 0:
                continue
            take = min(self.num_negatives, len(pool))
            negatives[row, :take] = self.rng.choice(pool, size=take, replace=False)
        return negatives
