"""Cluster identifiers (CIDs): hierarchical k-means over document vectors, and their codec.

GDR (Yuan et al., EACL 2024, "Generative Dense Retrieval: Memory Can Be a Burden") groups
documents by recursive k-means: each node with more than ``leaf_size`` documents is split
into at most ``branching_factor`` children, and a node with at most ``leaf_size`` documents
becomes a leaf. The digits on the path from the root to a leaf are that leaf's cluster
identifier (CID); a query decodes CIDs, and documents are ranked only inside the leaves
it reaches.
"""
from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Dict, List, Literal, Optional, Sequence, Tuple

import numpy as np

from pyterrier_gdr._util import atomic_write_json

__all__ = ["ClusterTreeConfig", "ClusterTree", "CIDCodec", "CIDTrie", "build_cluster_tree"]

logger = logging.getLogger(__name__)

AssignMetric = Literal["l2", "ip"]


@dataclass
class ClusterTreeConfig:
    """Parameters of the hierarchical k-means that produces the cluster identifiers."""

    branching_factor: int = field(default=30, metadata={"help": "maximum number of children per node (k; 30 in the GDR paper)"})
    leaf_size: int = field(default=30, metadata={"help": "a node with at most this many documents becomes a leaf (c; 30 in the GDR paper)"})
    adaptive: bool = field(
        default=False,
        metadata={
            "help": "split a node of n documents into min(branching_factor, ceil(n / leaf_size)) children instead of "
            "always branching_factor, so leaves are filled close to leaf_size rather than holding one or two documents"
        },
    )
    kmeans_iterations: int = field(default=20, metadata={"help": "Lloyd iterations of each k-means"})
    max_points_per_centroid: int = field(
        default=256,
        metadata={"help": "k-means trains on a sample of at most this many points per centroid (mini-batch for big nodes)"},
    )
    assign_metric: AssignMetric = field(
        default="l2",
        metadata={"help": "how new documents pick their leaf: 'l2' (nearest centroid, as k-means assigns) or 'ip' (inner product)"},
    )
    seed: int = field(default=0, metadata={"help": "random seed of k-means++ initialisation and sampling"})

    def __post_init__(self):
        if self.branching_factor < 2:
            raise ValueError(f"branching_factor={self.branching_factor} is invalid; it must be at least 2")
        if self.leaf_size < 1:
            raise ValueError(f"leaf_size={self.leaf_size} is invalid; it must be at least 1")
        if self.kmeans_iterations < 1:
            raise ValueError(f"kmeans_iterations={self.kmeans_iterations} is invalid; it must be at least 1")
        if self.assign_metric not in ("l2", "ip"):
            raise ValueError(f"assign_metric={self.assign_metric!r} is invalid; valid: 'l2', 'ip'")

    @classmethod
    def from_dict(cls, values: Dict) -> "ClusterTreeConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown cluster tree settings {sorted(unknown)}; valid: {sorted(known)}")
        return cls(**values)


class CIDCodec:
    """Maps a CID (a sequence of digits) to decoder tokens and back.

    Tokens are position-aware, as in NCI and GDR: digit ``d`` at position ``p`` is token
    ``p * branching_factor + d + 2``; token 0 is padding (also the decoder start token) and
    1 is end of sequence. So ``branching_factor=30`` and ``max_depth=10`` need 302 tokens.
    """

    PAD = 0
    EOS = 1

    def __init__(self, branching_factor: int, max_depth: int):
        self.branching_factor = int(branching_factor)
        self.max_depth = int(max_depth)

    @property
    def vocab_size(self) -> int:
        return self.max_depth * self.branching_factor + 2

    def encode(self, code: Sequence[int]) -> List[int]:
        """Return the tokens of ``code`` followed by EOS."""
        if len(code) > self.max_depth:
            raise ValueError(f"CID {tuple(code)} is deeper than max_depth={self.max_depth}")
        for digit in code:
            if not 0 <= digit < self.branching_factor:
                raise ValueError(f"CID {tuple(code)} has digit {digit} outside [0, {self.branching_factor})")
        return [p * self.branching_factor + d + 2 for p, d in enumerate(code)] + [self.EOS]

    def decode(self, tokens: Sequence[int]) -> Tuple[int, ...]:
        """Return the digits of ``tokens`` (stopping at EOS; padding is skipped)."""
        digits = []
        for token in tokens:
            token = int(token)
            if token == self.EOS:
                break
            if token == self.PAD:
                continue
            position, digit = divmod(token - 2, self.branching_factor)
            if position != len(digits):
                raise ValueError(f"token {token} encodes position {position}, expected position {len(digits)}")
            digits.append(digit)
        return tuple(digits)


@dataclass
class CIDTrie:
    """The valid CIDs as a trie over tree nodes, in arrays for tensorised constrained decoding.

    Attributes:
        children: ``(n_nodes, branching_factor)`` child node of each digit, -1 where absent.
        node_leaf: ``(n_nodes,)`` leaf id of a leaf node (where only EOS may follow), else -1.
        node_depth: ``(n_nodes,)`` depth of each node; the root is node 0 at depth 0.
    """

    children: np.ndarray
    node_leaf: np.ndarray
    node_depth: np.ndarray

    @property
    def num_nodes(self) -> int:
        return len(self.node_leaf)


class ClusterTree:
    """The result of hierarchical k-means: each document's leaf, each leaf's CID and centroid.

    Attributes:
        leaf_codes: ``(n_leaves, max_depth)`` int32 CIDs, padded with -1.
        doc_leaf: ``(n_docs,)`` int32 leaf of each document (document ids are row numbers).
        leaf_centroids: ``(n_leaves, dim)`` float32 mean vector of each leaf's documents at build time.
    """

    def __init__(self, leaf_codes: np.ndarray, doc_leaf: np.ndarray, leaf_centroids: np.ndarray, config: ClusterTreeConfig):
        self.leaf_codes = np.asarray(leaf_codes, dtype=np.int32)
        self.doc_leaf = np.asarray(doc_leaf, dtype=np.int32)
        self.leaf_centroids = np.asarray(leaf_centroids, dtype=np.float32)
        self.config = config
        self._members = None
        self._leaf_index = None

    @property
    def num_leaves(self) -> int:
        return len(self.leaf_codes)

    @property
    def num_docs(self) -> int:
        return len(self.doc_leaf)

    @property
    def max_depth(self) -> int:
        return self.leaf_codes.shape[1]

    def codec(self) -> CIDCodec:
        return CIDCodec(self.config.branching_factor, self.max_depth)

    def leaf_code(self, leaf: int) -> Tuple[int, ...]:
        row = self.leaf_codes[leaf]
        return tuple(int(d) for d in row[row >= 0])

    def leaf_tokens(self, leaves: np.ndarray) -> np.ndarray:
        """Return ``(len(leaves), max_depth + 1)`` decoder labels: CID tokens, EOS, then padding."""
        leaves = np.asarray(leaves)
        codes = self.leaf_codes[leaves]  # (n, max_depth), -1 padded
        positions = np.arange(self.max_depth)[None, :]
        tokens = np.where(codes >= 0, positions * self.config.branching_factor + codes + 2, CIDCodec.PAD)
        depth = (codes >= 0).sum(axis=1)
        labels = np.concatenate([tokens, np.zeros((len(leaves), 1), dtype=tokens.dtype)], axis=1)
        labels[np.arange(len(leaves)), depth] = CIDCodec.EOS
        return labels.astype(np.int64)

    def leaf_sizes(self) -> np.ndarray:
        return np.bincount(self.doc_leaf, minlength=self.num_leaves)

    def members(self) -> Tuple[np.ndarray, np.ndarray]:
        """Return the CSR form ``(offsets, doc_ids)``: leaf ``j`` holds ``doc_ids[offsets[j]:offsets[j+1]]``."""
        if self._members is None:
            order = np.argsort(self.doc_leaf, kind="stable").astype(np.int64)
            offsets = np.zeros(self.num_leaves + 1, dtype=np.int64)
            np.cumsum(self.leaf_sizes(), out=offsets[1:])
            self._members = (offsets, order)
        return self._members

    def leaf_members(self, leaf: int) -> np.ndarray:
        offsets, docs = self.members()
        return docs[offsets[leaf]:offsets[leaf + 1]]

    def stats(self) -> Dict[str, float]:
        """Return the leaf-size distribution and depth figures, for reports."""
        sizes = self.leaf_sizes()
        depths = (self.leaf_codes >= 0).sum(axis=1)
        return {
            "documents": int(self.num_docs),
            "leaves": int(self.num_leaves),
            "leaf_size_min": int(sizes.min()),
            "leaf_size_median": float(np.median(sizes)),
            "leaf_size_mean": float(sizes.mean()),
            "leaf_size_p90": float(np.percentile(sizes, 90)),
            "leaf_size_max": int(sizes.max()),
            "single_document_leaves": float((sizes == 1).mean()),
            "depth_min": int(depths.min()),
            "depth_max": int(depths.max()),
        }

    def trie(self) -> CIDTrie:
        """Build the trie of all leaf CIDs (nodes numbered in order of first appearance)."""
        k = self.config.branching_factor
        children: List[List[int]] = [[-1] * k]
        node_leaf = [-1]
        node_depth = [0]
        for leaf in range(self.num_leaves):
            node = 0
            for depth, digit in enumerate(self.leaf_code(leaf), start=1):
                child = children[node][digit]
                if child < 0:
                    child = len(children)
                    children[node][digit] = child
                    children.append([-1] * k)
                    node_leaf.append(-1)
                    node_depth.append(depth)
                node = child
            node_leaf[node] = leaf
        return CIDTrie(
            np.asarray(children, dtype=np.int32), np.asarray(node_leaf, dtype=np.int32), np.asarray(node_depth, dtype=np.int32)
        )

    # --- nearest-leaf assignment --------------------------------------------------------

    def assign(self, vectors: np.ndarray) -> np.ndarray:
        """Return the nearest leaf of each vector (``config.assign_metric``), as GDR attaches new documents."""
        import faiss

        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if self._leaf_index is None:
            dim = self.leaf_centroids.shape[1]
            index = faiss.IndexFlatL2(dim) if self.config.assign_metric == "l2" else faiss.IndexFlatIP(dim)
            index.add(np.ascontiguousarray(self.leaf_centroids))
            self._leaf_index = index
        _, nearest = self._leaf_index.search(vectors, 1)
        return nearest[:, 0].astype(np.int32)

    # --- storage ------------------------------------------------------------------------

    def save(self, directory: Path) -> None:
        """Write the tree into ``directory`` (which must exist); ``tree.json`` is written last."""
        directory = Path(directory)
        self.leaf_codes.tofile(directory / "leaf_codes.i4")
        self.doc_leaf.tofile(directory / "doc_leaf.i4")
        self.leaf_centroids.tofile(directory / "leaf_centroids.f4")
        atomic_write_json(
            directory / "tree.json",
            {
                "config": asdict(self.config),
                "num_leaves": self.num_leaves,
                "num_docs": self.num_docs,
                "max_depth": self.max_depth,
                "dim": int(self.leaf_centroids.shape[1]),
                "stats": self.stats(),
            },
        )

    @classmethod
    def load(cls, directory: Path, *, num_docs: Optional[int] = None) -> "ClusterTree":
        """Read a tree written by :meth:`save`; ``num_docs`` limits ``doc_leaf`` to the committed documents."""
        import json

        directory = Path(directory)
        with open(directory / "tree.json", encoding="utf-8") as fin:
            meta = json.load(fin)
        n_leaves, depth, dim = meta["num_leaves"], meta["max_depth"], meta["dim"]
        leaf_codes = np.fromfile(directory / "leaf_codes.i4", dtype=np.int32).reshape(n_leaves, depth)
        doc_leaf = np.fromfile(directory / "doc_leaf.i4", dtype=np.int32)
        count = meta["num_docs"] if num_docs is None else num_docs
        if len(doc_leaf) < count:
            raise ValueError(f"{directory / 'doc_leaf.i4'} holds {len(doc_leaf)} documents, expected {count}; the index is damaged")
        leaf_centroids = np.fromfile(directory / "leaf_centroids.f4", dtype=np.float32).reshape(n_leaves, dim)
        return cls(leaf_codes, doc_leaf[:count], leaf_centroids, ClusterTreeConfig(**meta["config"]))


_ASSIGN_CHUNK = 65536


def _kmeans(vectors: np.ndarray, doc_ids: np.ndarray, k: int, config: ClusterTreeConfig, seed: int) -> np.ndarray:
    """Return the k-means cluster of each document in ``doc_ids`` (faiss; on GPUs when faiss has them).

    k-means trains on a random sample of at most ``k * max_points_per_centroid`` documents;
    all documents are then assigned in chunks, so a node is never copied into memory whole.
    """
    import faiss

    rng = np.random.default_rng(seed)
    sample_size = min(len(doc_ids), k * config.max_points_per_centroid)
    sample = np.sort(rng.choice(doc_ids, size=sample_size, replace=False)) if sample_size < len(doc_ids) else doc_ids
    use_gpu = hasattr(faiss, "get_num_gpus") and faiss.get_num_gpus() > 0
    kmeans = faiss.Kmeans(
        vectors.shape[1],
        k,
        niter=config.kmeans_iterations,
        seed=seed,
        max_points_per_centroid=config.max_points_per_centroid,
        min_points_per_centroid=1,
        gpu=use_gpu,
        verbose=False,
    )
    kmeans.train(np.ascontiguousarray(vectors[sample], dtype=np.float32))
    assignment = np.empty(len(doc_ids), dtype=np.int64)
    for start in range(0, len(doc_ids), _ASSIGN_CHUNK):
        chunk = np.ascontiguousarray(vectors[doc_ids[start:start + _ASSIGN_CHUNK]], dtype=np.float32)
        _, nearest = kmeans.index.search(chunk, 1)
        assignment[start:start + len(chunk)] = nearest[:, 0]
    return assignment


def build_cluster_tree(vectors: np.ndarray, config: Optional[ClusterTreeConfig] = None, *, verbose: bool = False, log: bool = True) -> ClusterTree:
    """Cluster ``vectors`` into a tree by hierarchical k-means.

    Args:
        vectors: ``(n_docs, dim)`` document vectors (a memory map is fine; nodes are copied one at a time).
        config: tree parameters; the GDR paper's 30/30 when omitted.
        verbose: show a progress bar over documents placed in leaves.
        log: log the tree's leaf-size summary (at INFO level).

    Returns:
        The :class:`ClusterTree`; its ``stats()`` report the leaf-size distribution.

    Raises:
        ValueError: on an empty corpus or vectors that are not 2-dimensional.
    """
    import pyterrier as pt

    config = config or ClusterTreeConfig()
    if vectors.ndim != 2:
        raise ValueError(f"vectors must be 2-dimensional (n_docs, dim); got shape {vectors.shape}")
    n_docs = len(vectors)
    if n_docs == 0:
        raise ValueError("cannot cluster an empty corpus: no document vectors were given")

    leaves: List[Tuple[Tuple[int, ...], np.ndarray]] = []
    # Depth-first over (CID prefix, document ids); the root always splits at least once, so every CID has a digit.
    stack: List[Tuple[Tuple[int, ...], np.ndarray]] = [((), np.arange(n_docs, dtype=np.int64))]
    progress = pt.tqdm(total=n_docs, desc="hierarchical k-means", unit="doc", disable=not verbose)
    node_counter = 0
    while stack:
        prefix, doc_ids = stack.pop()
        if len(doc_ids) <= config.leaf_size and prefix:
            leaves.append((prefix, doc_ids))
            progress.update(len(doc_ids))
            continue
        if config.adaptive:
            k = min(config.branching_factor, max(2, math.ceil(len(doc_ids) / config.leaf_size)))
        else:
            k = config.branching_factor
        k = min(k, len(doc_ids))
        if k < 2:  # a single-document corpus: one leaf with CID (0,)
            leaves.append((prefix + (0,), doc_ids))
            progress.update(len(doc_ids))
            continue
        # doc_ids stay sorted (arange, then boolean masks), so reads from a memory map go forward.
        assignment = _kmeans(vectors, doc_ids, k, config, seed=config.seed + node_counter)
        node_counter += 1
        if len(np.unique(assignment)) < 2:
            # k-means found one cluster (e.g. duplicate vectors): split in order so the recursion ends.
            assignment = np.arange(len(doc_ids)) * k // len(doc_ids)
        digits = np.unique(assignment)
        # Push children in reverse, so the depth-first order (and the leaf numbering) follows digit order.
        for new_digit, old_digit in reversed(list(enumerate(digits))):
            stack.append((prefix + (new_digit,), doc_ids[assignment == old_digit]))
    progress.close()

    # Number leaves in CID order, so neighbouring leaves share prefixes.
    leaves.sort(key=lambda item: item[0])
    max_depth = max(len(code) for code, _ in leaves)
    leaf_codes = np.full((len(leaves), max_depth), -1, dtype=np.int32)
    doc_leaf = np.empty(n_docs, dtype=np.int32)
    centroids = np.empty((len(leaves), vectors.shape[1]), dtype=np.float32)
    for leaf, (code, doc_ids) in enumerate(leaves):
        leaf_codes[leaf, : len(code)] = code
        doc_leaf[doc_ids] = leaf
        centroids[leaf] = np.asarray(vectors[doc_ids], dtype=np.float32).mean(axis=0)

    tree = ClusterTree(leaf_codes, doc_leaf, centroids, config)
    if not log:
        return tree
    stats = tree.stats()
    logger.info(
        "cluster tree: %d documents in %d leaves; leaf size min %d, median %.1f, mean %.1f, max %d; "
        "%.0f%% single-document leaves; depth %d-%d",
        stats["documents"], stats["leaves"], stats["leaf_size_min"], stats["leaf_size_median"],
        stats["leaf_size_mean"], stats["leaf_size_max"], 100 * stats["single_document_leaves"],
        stats["depth_min"], stats["depth_max"],
    )
    return tree
