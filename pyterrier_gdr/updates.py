"""Adding documents to a GDR index without retraining, GDR's answer to generative retrieval's update cost.

New documents are encoded, their vectors and docnos appended after the existing ones
(which are never rewritten), and each is attached to the leaf whose centroid is nearest.
The generator is untouched: it still decodes the same CIDs, and the new documents become
candidates wherever their leaf is generated.

Then the routing, by ``centroids=``:

- ``"added"`` (the default): the build-time centroids stay, and the documents added since
  the build are clustered among themselves, with the tree's own hierarchical k-means, into
  *groups* of about a leaf's size (``tree/added_groups.npz``). Each group has a centroid and
  is a routing unit of its own: :class:`~pyterrier_gdr.router.CentroidRouter` ranks the
  leaves and the groups together, and :class:`~pyterrier_gdr.generator.ClusterGenerator`
  adds to the clusters it decodes the groups that this centroid ranking places among its
  best ``added_clusters`` (by default, as many as the clusters it decodes). A group's
  candidates are its own documents only. Added articles are often whole new topics: their
  passages scatter over many old leaves, where they are a minority, while the groups keep
  each topic together, as a rebuild's leaves would. Every addition re-clusters all the
  documents added since the build, so the groups do not depend on how the additions were
  batched. That costs a k-means over the added documents, not over the corpus.
- ``"mean"``: the centroid of each leaf that received documents becomes the mean of all its
  members, as k-means would compute it, and documents of those leaves leave their groups.
- ``"keep"``: the build-time centroids only, and the new documents join no group.

Crash safety: the new rows are written past the committed end of ``vecs.f4`` and
``tree/doc_leaf.i4`` and into a new docno segment, and only the final atomic rewrite of
``pt_meta.json`` commits them. An interrupted addition leaves the index as it was; the
next addition truncates the uncommitted tail. The centroids and groups are rewritten after
that commit (atomically); ``pt_meta.json`` records up to which document they are current
(``centroid_doc_count``), so centroids left stale by a crash at that point are refreshed by
the next addition.
"""
from __future__ import annotations

import itertools
import logging
import os
import time
import warnings
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional

import numpy as np

from pyterrier_gdr._util import atomic_write, atomic_write_json
from pyterrier_gdr.docnos import segment_builder, segment_name

__all__ = ["AddResult", "AddedGroups", "CENTROID_MODES", "add_documents", "read_added_groups", "refresh_centroids", "split_oversized_leaves"]

CENTROID_MODES = ("added", "mean", "keep")
ADDED_GROUPS = "added_groups.npz"  # in the index's tree/ directory
# Written before groups existed: one added centroid per leaf. Its leaves' added documents are grouped when read.
LEGACY_ADDED_CENTROIDS = "added_centroids.npz"

logger = logging.getLogger(__name__)


@dataclass
class AddResult:
    """What :func:`add_documents` did."""

    added: int
    doc_count: int
    seconds: float
    leaves_touched: int
    oversized_leaves: Dict[int, int] = field(default_factory=dict)
    split: bool = False


def _truncate_uncommitted(index) -> None:
    """Drop rows past the committed document count, left by an interrupted addition."""
    meta = index.meta
    for path, row_bytes in ((index.path / "vecs.f4", meta["vec_size"] * 4), (index.path / "tree" / "doc_leaf.i4", 4)):
        committed = meta["doc_count"] * row_bytes
        if path.stat().st_size > committed:
            logger.warning("truncating %d uncommitted bytes of %s (an interrupted addition)", path.stat().st_size - committed, path)
            with open(path, "r+b") as fout:
                fout.truncate(committed)
    number = len(meta["docno_segments"])
    stray = index.path / segment_name(number)
    if stray.exists():
        stray.unlink()


def add_documents(
    index,
    docs: Iterable[dict],
    *,
    encoder=None,
    max_leaf_size: Optional[int] = None,
    split_oversized: bool = False,
    centroids: str = "added",
    count: Optional[int] = None,
    verbose: Optional[bool] = None,
) -> AddResult:
    """Encode ``docs`` and attach each to its nearest leaf; see the module docstring.

    Args:
        index: the :class:`~pyterrier_gdr.index.GDRIndex`.
        docs: dictionaries with ``docno`` and ``text`` (docnos new to the index), or a DataFrame with those columns.
        encoder: a :class:`~pyterrier_gdr.encoding.DocumentEncoder`; the index's encoder when omitted.
        max_leaf_size: leaves above this size are reported; twice the tree's ``leaf_size`` when omitted.
        split_oversized: re-cluster the oversized leaves into children. This changes CIDs,
            so the generator must be retrained afterwards (the index records that).
        centroids: ``"added"`` (cluster the documents added since the build into groups that
            route on their own), ``"mean"`` (recompute the centroids of the leaves that received
            documents) or ``"keep"``; see the module docstring.
        count: the number of documents, for the progress bar.

    Returns:
        An :class:`AddResult`.

    Raises:
        ValueError: if ``docs`` is empty, a docno is already in the index or repeated, or
            ``centroids`` is not one of :data:`CENTROID_MODES`.
    """
    from pyterrier_gdr.encoding import DocumentEncoder

    if centroids not in CENTROID_MODES:
        raise ValueError(f"centroids={centroids!r} is invalid; valid: {', '.join(map(repr, CENTROID_MODES))}")
    if max_leaf_size is not None and max_leaf_size < 1:
        raise ValueError(f"max_leaf_size={max_leaf_size} is invalid; it must be at least 1 (omit it for twice the tree's leaf size)")
    verbose = index.verbose if verbose is None else verbose
    started = time.perf_counter()
    if hasattr(docs, "to_dict") and hasattr(docs, "columns"):  # a DataFrame with docno and text columns
        docs = docs.to_dict("records")
    iterator = iter(docs)
    first = next(iterator, None)
    if first is None:
        raise ValueError("no documents to add")
    docs = itertools.chain([first], iterator)
    if encoder is None:
        encoder = DocumentEncoder(index.encoder_path, device=index.device, verbose=verbose)
    meta = dict(index.meta)
    old_count, dim = meta["doc_count"], meta["vec_size"]
    # The centroids are current up to this document number. Without the key, they are the build's.
    centroids_current_to = int(meta.get("centroid_doc_count", meta["docno_segments"][0]))
    max_leaf_size = max_leaf_size if max_leaf_size is not None else 2 * index.tree.config.leaf_size

    # Write past the committed end: vectors, then docnos in a new segment.
    _truncate_uncommitted(index)
    segment = len(meta["docno_segments"])
    seen = set()

    def checked(stream):
        for doc in stream:
            docno = str(doc["docno"])
            if docno in seen:
                raise ValueError(f"docno {docno!r} appears twice among the new documents")
            if index.doc_ids([docno])[0] >= 0:
                raise ValueError(f"docno {docno!r} is already in {index.path}; new documents need new docnos")
            seen.add(docno)
            yield doc

    try:
        with segment_builder(index.path / segment_name(segment)) as builder:
            added = encoder.encode_to_file(checked(docs), index.path / "vecs.f4", builder, total=count)
    except BaseException:
        _truncate_uncommitted(index)
        raise

    # Nearest leaf of each new vector, appended to doc_leaf.
    vectors = np.memmap(index.path / "vecs.f4", mode="r", dtype=np.float32, shape=(old_count + added, dim))[old_count:]
    leaves = np.empty(added, dtype=np.int32)
    for start in range(0, added, 65536):
        leaves[start:start + 65536] = index.tree.assign(np.asarray(vectors[start:start + 65536]))
    del vectors
    with open(index.path / "tree" / "doc_leaf.i4", "ab") as fout:
        fout.write(leaves.tobytes())
        fout.flush()
        os.fsync(fout.fileno())

    # Commit.
    meta["doc_count"] = old_count + added
    meta["docno_segments"] = list(meta["docno_segments"]) + [added]
    atomic_write_json(index.path / "pt_meta.json", meta)
    index._reset_payload()
    refresh_centroids(index, since=centroids_current_to, mode=centroids)

    sizes = index.tree.leaf_sizes()
    oversized = {int(leaf): int(sizes[leaf]) for leaf in np.flatnonzero(sizes > max_leaf_size)}
    result = AddResult(added, meta["doc_count"], 0.0, len(np.unique(leaves)), oversized)
    history = index.config.get("additions", []) + [{"added": added, "doc_count": meta["doc_count"], "oversized_leaves": len(oversized)}]
    index._update_config(additions=history)
    if oversized:
        message = (
            f"{len(oversized)} leaves now hold more than {max_leaf_size} documents (largest: {max(oversized.values())}); "
            "candidates per cluster grow with them."
        )
        if split_oversized:
            split_oversized_leaves(index, list(oversized), verbose=verbose)
            result.split = True
        else:
            # stacklevel 3: the caller of GDRIndex.add_documents, the public entry point.
            warnings.warn(message + " Pass split_oversized=True to split them (the generator then needs retraining).", stacklevel=3)
    result.seconds = time.perf_counter() - started
    logger.info("added %d documents to %s in %.1f s; %d leaves received documents", added, index.path, result.seconds, result.leaves_touched)
    return result


def _base_count(index) -> int:
    """Return the number of documents the build-time centroids were computed from; later ones count as added."""
    meta = index.meta
    return int(meta.get("centroid_base_count", meta["docno_segments"][0]))


@dataclass
class AddedGroups:
    """Documents added since the build, clustered among themselves (see the module docstring).

    ``doc_group[i]`` is the group of document ``first + i`` (-1: in no group); documents past
    the end of ``doc_group`` are in no group.
    """

    first: int
    doc_group: np.ndarray  # (n,) int32
    centroids: np.ndarray  # (G, dim) float32
    _members: Optional[tuple] = field(default=None, init=False, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.centroids)

    def members(self) -> tuple:
        """Return the CSR form ``(offsets (G + 1,), doc_ids)``: group ``g`` contains ``doc_ids[offsets[g]:offsets[g+1]]``."""
        if self._members is None:
            grouped = np.flatnonzero(self.doc_group >= 0)
            order = grouped[np.argsort(self.doc_group[grouped], kind="stable")]
            offsets = np.zeros(len(self) + 1, dtype=np.int64)
            np.cumsum(np.bincount(self.doc_group[grouped], minlength=len(self)), out=offsets[1:])
            self._members = (offsets, (order + self.first).astype(np.int64))
        return self._members


def _group(index, grouped: np.ndarray, first: int) -> AddedGroups:
    """Cluster the documents ``first + i`` where ``grouped[i]``, with the tree's configuration."""
    from pyterrier_gdr.clusters import build_cluster_tree

    doc_group = np.full(len(grouped), -1, dtype=np.int32)
    if not grouped.any():
        return AddedGroups(first, doc_group, np.empty((0, index.meta["vec_size"]), dtype=np.float32))
    vectors = index.vectors
    if grouped.all():
        chosen = vectors[first:first + len(grouped)]  # a memory map: k-means copies one node at a time
    else:
        chosen = np.asarray(vectors[first + np.flatnonzero(grouped)], dtype=np.float32)
    tree = build_cluster_tree(chosen, index.tree.config, log=False)
    doc_group[grouped] = tree.doc_leaf
    logger.info("grouped %d added documents into %d groups", int(grouped.sum()), tree.num_leaves)
    return AddedGroups(first, doc_group, np.asarray(tree.leaf_centroids, dtype=np.float32))


def read_added_groups(index) -> AddedGroups:
    """Return the index's :class:`AddedGroups` (none when no documents were added with ``centroids="added"``).

    An index written before groups existed has one added centroid per leaf instead. Its added
    documents in those leaves are grouped here, in memory, as an addition would group them now.
    """
    path = index.path / "tree" / ADDED_GROUPS
    if path.exists():
        with np.load(path) as data:
            return AddedGroups(int(data["first"]), data["doc_group"].astype(np.int32), data["centroids"].astype(np.float32))
    legacy = index.path / "tree" / LEGACY_ADDED_CENTROIDS
    if legacy.exists():
        with np.load(legacy) as data:
            leaves = data["leaves"]
        first = _base_count(index)
        return _group(index, np.isin(index.tree.doc_leaf[first:len(index)], leaves), first)
    return _group(index, np.zeros(0, dtype=bool), _base_count(index))


def _write_groups(index, groups: AddedGroups) -> None:
    atomic_write(
        index.path / "tree" / ADDED_GROUPS,
        lambda fout: np.savez(fout, first=np.int64(groups.first), doc_group=groups.doc_group, centroids=groups.centroids),
    )
    legacy = index.path / "tree" / LEGACY_ADDED_CENTROIDS
    if legacy.exists():
        legacy.unlink()


def refresh_centroids(index, *, since: int = 0, mode: str = "added") -> int:
    """Update centroids and groups for the documents numbered ``since`` or later.

    ``mode`` is one of :data:`CENTROID_MODES` (see the module docstring):

    - ``"added"``: those documents join the groups, and all grouped documents are clustered again;
    - ``"mean"``: the centroid of each leaf they joined becomes the mean of all its members, and
      that leaf's documents leave their groups (the mean covers them);
    - ``"keep"``: no centroid changes, and those documents join no group.

    Only the affected vectors are read, from the memory-mapped file. Each file is replaced
    atomically, then ``pt_meta.json`` records ``centroid_doc_count``.

    Returns:
        The number of leaves that received those documents.
    """
    tree = index.tree
    doc_count = len(index)
    touched = np.unique(tree.doc_leaf[since:doc_count])
    groups = read_added_groups(index)
    first = groups.first
    # Which documents since the build are grouped: as before, then the new ones by mode.
    grouped = np.zeros(max(doc_count - first, 0), dtype=bool)
    known = min(len(groups.doc_group), len(grouped))
    grouped[:known] = groups.doc_group[:known] >= 0
    start = max(since - first, 0)
    if mode == "added":
        grouped[start:] = True
    else:
        grouped[start:] = False
    if mode == "mean" and len(touched):
        centroids = np.array(tree.leaf_centroids, dtype=np.float32, copy=True)
        vectors = index.vectors
        for leaf in touched:
            members = np.sort(tree.leaf_members(int(leaf)))
            centroids[leaf] = np.asarray(vectors[members], dtype=np.float32).mean(axis=0)
        atomic_write(index.path / "tree" / "leaf_centroids.f4", lambda fout: fout.write(np.ascontiguousarray(centroids).tobytes()))
        grouped &= ~np.isin(tree.doc_leaf[first:doc_count], touched)
    legacy = (index.path / "tree" / LEGACY_ADDED_CENTROIDS).exists()
    if mode == "added" or legacy or not np.array_equal(grouped[:known], groups.doc_group[:known] >= 0):
        _write_groups(index, _group(index, grouped, first))
    atomic_write_json(index.path / "pt_meta.json", dict(index.meta, centroid_doc_count=doc_count))
    index._reset_payload()
    return len(touched)


def split_oversized_leaves(index, leaves: List[int], *, verbose: bool = False) -> None:
    """Re-cluster ``leaves`` into child leaves and rewrite the tree atomically.

    Splitting changes the CIDs of those documents, which the trained generator has never
    seen: the index is marked ``model_stale`` and a warning says to retrain.
    """
    from pyterrier_gdr._util import atomic_directory
    from pyterrier_gdr.clusters import ClusterTree, build_cluster_tree

    tree = index.tree
    config = tree.config
    vectors = index.vectors
    codes = [tree.leaf_code(leaf) for leaf in range(tree.num_leaves)]
    members = {leaf: tree.leaf_members(leaf) for leaf in range(tree.num_leaves)}
    new_leaves = []
    for leaf in range(tree.num_leaves):
        if leaf not in leaves:
            new_leaves.append((codes[leaf], members[leaf]))
            continue
        doc_ids = members[leaf]
        subtree = build_cluster_tree(np.asarray(vectors[doc_ids]), config)
        for child in range(subtree.num_leaves):
            new_leaves.append((codes[leaf] + subtree.leaf_code(child), doc_ids[subtree.leaf_members(child)]))
    new_leaves.sort(key=lambda item: item[0])
    depth = max(len(code) for code, _ in new_leaves)
    leaf_codes = np.full((len(new_leaves), depth), -1, dtype=np.int32)
    doc_leaf = np.empty(len(index), dtype=np.int32)
    centroids = np.empty((len(new_leaves), vectors.shape[1]), dtype=np.float32)
    for number, (code, doc_ids) in enumerate(new_leaves):
        leaf_codes[number, : len(code)] = code
        doc_leaf[doc_ids] = number
        centroids[number] = np.asarray(vectors[np.sort(doc_ids)]).mean(axis=0)
    with atomic_directory(index.path / "tree", overwrite=True) as tmp:
        ClusterTree(leaf_codes, doc_leaf, centroids, config).save(tmp)
    # Every centroid is now the mean of all its leaf's members, so no document counts as added.
    meta = dict(
        index.meta, num_leaves=len(new_leaves), centroid_doc_count=len(index), centroid_base_count=len(index),
        model_stale=bool(index.meta.get("has_model")),
    )
    atomic_write_json(index.path / "pt_meta.json", meta)
    index._reset_payload()
    if meta["model_stale"]:
        warnings.warn(
            f"split {len(leaves)} leaves of {index.path} into {len(new_leaves) - tree.num_leaves + len(leaves)}; their CIDs "
            "changed, so retrain the generator (index.train(..., overwrite=True)) before using it",
            stacklevel=4,
        )
