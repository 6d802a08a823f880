"""Adding documents to a GDR index without retraining, GDR's answer to generative retrieval's update cost.

New documents are encoded, their vectors and docnos appended after the existing ones
(which are never rewritten), and each is attached to the leaf whose centroid is nearest.
The generator is untouched: it still decodes the same CIDs, and the new documents become
candidates wherever their leaf is generated.

Then the centroids, by ``centroids=``:

- ``"added"`` (the default): the build-time centroids stay, and each leaf that received
  documents gets a second centroid, the mean of the documents added to it since the build
  (``tree/added_centroids.npz``). :class:`~pyterrier_gdr.router.CentroidRouter` scores a leaf
  by the nearer of its two centroids, and ``ClusterGenerator(added_clusters=m)`` adds the
  ``m`` leaves whose added centroids best match the query to the clusters it decodes. Added
  articles are often whole new topics: averaged into the old centroid they would be hidden,
  while their own centroid finds them, and the old centroid still finds the old documents.
- ``"mean"``: the centroid of each leaf that received documents becomes the mean of all its
  members, as k-means would compute it.
- ``"keep"``: the build-time centroids only.

Crash safety: the new rows are written past the committed end of ``vecs.f4`` and
``tree/doc_leaf.i4`` and into a new docno segment, and only the final atomic rewrite of
``pt_meta.json`` commits them. An interrupted addition leaves the index as it was; the
next addition truncates the uncommitted tail. The centroids are rewritten after that
commit (atomically); ``pt_meta.json`` records up to which document they are current
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

__all__ = ["AddResult", "CENTROID_MODES", "add_documents", "read_added_centroids", "refresh_centroids", "split_oversized_leaves"]

CENTROID_MODES = ("added", "mean", "keep")
ADDED_CENTROIDS = "added_centroids.npz"  # in the index's tree/ directory

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
        docs: dictionaries with ``docno`` and ``text`` (docnos new to the index).
        encoder: a :class:`~pyterrier_gdr.encoding.DocumentEncoder`; the index's encoder when omitted.
        max_leaf_size: leaves above this size are reported; twice the tree's ``leaf_size`` when omitted.
        split_oversized: re-cluster the oversized leaves into children. This changes CIDs,
            so the generator must be retrained afterwards (the index records that).
        centroids: ``"added"`` (a second centroid per leaf for its added documents), ``"mean"``
            (recompute the centroids of the leaves that received documents) or ``"keep"``; see
            the module docstring.
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
    verbose = index.verbose if verbose is None else verbose
    started = time.perf_counter()
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
    max_leaf_size = max_leaf_size or 2 * index.tree.config.leaf_size

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
    logger.info("added %d documents to %s in %.1f s (%d leaves touched)", added, index.path, result.seconds, result.leaves_touched)
    return result


def _base_count(index) -> int:
    """Return the number of documents the build-time centroids were computed from; later ones count as added."""
    meta = index.meta
    return int(meta.get("centroid_base_count", meta["docno_segments"][0]))


def read_added_centroids(index):
    """Return ``(leaves (A,) int64, centroids (A, dim) float32)``, the added centroid of each leaf that has one."""
    path = index.path / "tree" / ADDED_CENTROIDS
    if not path.exists():
        return np.empty(0, dtype=np.int64), np.empty((0, index.meta["vec_size"]), dtype=np.float32)
    with np.load(path) as data:
        return data["leaves"].astype(np.int64), data["centroids"].astype(np.float32)


def refresh_centroids(index, *, since: int = 0, mode: str = "added") -> int:
    """Update the centroids of every leaf that contains a document numbered ``since`` or later.

    ``mode`` is one of :data:`CENTROID_MODES` (see the module docstring):

    - ``"added"``: the leaf's added centroid becomes the mean of its members added since the build;
    - ``"mean"``: the leaf's centroid becomes the mean of all its members, and its added
      centroid is dropped, because that mean covers the added members too;
    - ``"keep"``: no centroid changes.

    Only those leaves' vectors are read, from the memory-mapped file. Each centroid file is
    replaced atomically, then ``pt_meta.json`` records ``centroid_doc_count``.

    Returns:
        The number of leaves updated.
    """
    tree = index.tree
    doc_count = len(index)
    touched = np.unique(tree.doc_leaf[since:doc_count]) if mode != "keep" else np.empty(0, dtype=np.int64)
    if len(touched):
        vectors = index.vectors
        added_leaves, added_centroids = read_added_centroids(index)
        if mode == "mean":
            centroids = np.array(tree.leaf_centroids, dtype=np.float32, copy=True)
            for leaf in touched:
                members = np.sort(tree.leaf_members(int(leaf)))
                centroids[leaf] = np.asarray(vectors[members], dtype=np.float32).mean(axis=0)
            atomic_write(index.path / "tree" / "leaf_centroids.f4", lambda fout: fout.write(np.ascontiguousarray(centroids).tobytes()))
            keep = ~np.isin(added_leaves, touched)
            added = dict(zip(added_leaves[keep].tolist(), added_centroids[keep]))
        else:
            base = _base_count(index)
            added = dict(zip(added_leaves.tolist(), added_centroids))
            for leaf in touched:
                members = tree.leaf_members(int(leaf))
                recent = np.sort(members[members >= base])
                if len(recent):
                    added[int(leaf)] = np.asarray(vectors[recent], dtype=np.float32).mean(axis=0)
        if len(added) or len(added_leaves):
            leaves = np.array(sorted(added), dtype=np.int64)
            stacked = np.stack([added[leaf] for leaf in leaves.tolist()]) if len(leaves) else added_centroids[:0]
            atomic_write(index.path / "tree" / ADDED_CENTROIDS, lambda fout: np.savez(fout, leaves=leaves, centroids=stacked))
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
