"""Adding documents to a GDR index without retraining, GDR's answer to generative retrieval's update cost.

New documents are encoded, their vectors and docnos appended after the existing ones
(which are never rewritten), and each is attached to the leaf whose centroid is nearest.
The generator is untouched: it still decodes the same CIDs, and the new documents become
candidates wherever their leaf is generated. The centroids of the leaves that received
documents are then recomputed as the mean of all their members, as k-means would, so the
next addition and the :class:`~pyterrier_gdr.router.CentroidRouter` see where the leaves
now lie (``update_centroids=False`` keeps the build-time centroids).

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

from pyterrier_gdr._util import atomic_write_json
from pyterrier_gdr.docnos import segment_name

__all__ = ["AddResult", "add_documents", "refresh_centroids", "split_oversized_leaves"]

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
    update_centroids: bool = True,
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
        update_centroids: recompute the centroids of the leaves that received documents.
        count: the number of documents, for the progress bar.

    Returns:
        An :class:`AddResult`.

    Raises:
        ValueError: if ``docs`` is empty, or a docno is already in the index or repeated.
    """
    from npids import Lookup

    from pyterrier_gdr.encoding import DocumentEncoder

    verbose = index.verbose if verbose is None else verbose
    started = time.perf_counter()
    iterator = iter(docs)
    first = next(iterator, None)
    if first is None:
        raise ValueError("no documents to add")
    docs = itertools.chain([first], iterator)
    if encoder is None:
        encoder = DocumentEncoder(index.config["encoder"], device=index.device, verbose=verbose)
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
        with Lookup.builder(index.path / segment_name(segment)) as builder:
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
    if update_centroids:
        refresh_centroids(index, since=centroids_current_to)

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


def refresh_centroids(index, *, since: int = 0) -> int:
    """Recompute the centroid of every leaf that contains a document numbered ``since`` or later.

    Each such centroid becomes the mean of all the leaf's members (old and new), read from the
    memory-mapped vectors; other leaves are not read. ``tree/leaf_centroids.f4`` is replaced
    atomically, then ``pt_meta.json`` records ``centroid_doc_count``. Returns the number of
    leaves recomputed.
    """
    tree = index.tree
    doc_count = len(index)
    touched = np.unique(tree.doc_leaf[since:doc_count])
    if len(touched):
        vectors = index.vectors
        centroids = np.array(tree.leaf_centroids, dtype=np.float32, copy=True)
        for leaf in touched:
            members = np.sort(tree.leaf_members(int(leaf)))
            centroids[leaf] = np.asarray(vectors[members], dtype=np.float32).mean(axis=0)
        path = index.path / "tree" / "leaf_centroids.f4"
        tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
        try:
            with open(tmp, "wb") as fout:
                fout.write(np.ascontiguousarray(centroids).tobytes())
                fout.flush()
                os.fsync(fout.fileno())
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                tmp.unlink()
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
    meta = dict(index.meta, num_leaves=len(new_leaves), centroid_doc_count=len(index), model_stale=bool(index.meta.get("has_model")))
    atomic_write_json(index.path / "pt_meta.json", meta)
    index._reset_payload()
    if meta["model_stale"]:
        warnings.warn(
            f"split {len(leaves)} leaves of {index.path} into {len(new_leaves) - tree.num_leaves + len(leaves)}; their CIDs "
            "changed, so retrain the generator (index.train(..., overwrite=True)) before using it",
            stacklevel=4,
        )
