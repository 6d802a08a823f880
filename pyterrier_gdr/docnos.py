"""Docno lookups over append-only segments.

An index's docnos live in ``npids`` files, one per batch of documents: the build writes
``docnos.npids`` and each later addition writes ``docnos.<n>.npids``. A segment is never
rewritten, so adding documents costs only the new docnos.
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Sequence

import numpy as np

__all__ = ["SegmentedDocnos", "segment_name"]


def segment_name(number: int) -> str:
    """Return the file name of docno segment ``number`` (0 is the build's)."""
    return "docnos.npids" if number == 0 else f"docnos.{number}.npids"


class SegmentedDocnos:
    """Forward (id -> docno) and inverse (docno -> id) lookups over consecutive npids segments.

    Args:
        directory: the index directory.
        counts: documents per segment, in order; segment ``i`` is :func:`segment_name`\\ ``(i)``.
    """

    def __init__(self, directory: Path, counts: Sequence[int]):
        from npids import Lookup

        self.counts = [int(c) for c in counts]
        self.offsets = np.concatenate([[0], np.cumsum(self.counts)]).astype(np.int64)
        self.segments = [Lookup(Path(directory) / segment_name(i)) for i in range(len(self.counts))]

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def fwd(self, doc_ids: np.ndarray) -> List[str]:
        """Return the docnos of row ids ``doc_ids``."""
        doc_ids = np.asarray(doc_ids, dtype=np.int64)
        if len(doc_ids) and (doc_ids.min() < 0 or doc_ids.max() >= len(self)):
            raise IndexError(f"document ids must be in [0, {len(self)}); got {doc_ids.min()}..{doc_ids.max()}")
        result = np.empty(len(doc_ids), dtype=object)
        segment_of = np.searchsorted(self.offsets, doc_ids, side="right") - 1
        for segment in np.unique(segment_of):
            rows = segment_of == segment
            local = doc_ids[rows] - self.offsets[segment]
            result[rows] = self.segments[segment].fwd[local]
        return result.tolist()

    def inv(self, docnos: Sequence[str]) -> np.ndarray:
        """Return the row ids of ``docnos`` (-1 where absent)."""
        keys = np.asarray(list(docnos), dtype=str)
        result = np.full(len(keys), -1, dtype=np.int64)
        for segment, lookup in enumerate(self.segments):
            missing = result < 0
            if not missing.any():
                break
            found = np.asarray(lookup.inv[keys[missing]], dtype=np.int64)
            result[np.flatnonzero(missing)[found >= 0]] = found[found >= 0] + self.offsets[segment]
        return result

    def __iter__(self):
        for lookup in self.segments:
            yield from lookup
