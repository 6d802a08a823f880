"""Docno lookups over append-only segments.

An index's docnos live in ``npids`` files, one per batch of documents: the build writes
``docnos.npids`` and each later addition writes ``docnos.<n>.npids``. A segment is never
rewritten, so adding documents costs only the new docnos.
"""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, List, Sequence

import numpy as np

__all__ = ["SegmentedDocnos", "segment_builder", "segment_name"]

# npids 0.1 cannot write a file of one docno (ZeroDivisionError), so a one-docno segment also
# stores this key after its docno. Lookups ignore rows past a segment's count.
_PADDING_KEY = "\x00pyterrier-gdr-padding"


def segment_name(number: int) -> str:
    """Return the file name of docno segment ``number`` (0 is the build's)."""
    return "docnos.npids" if number == 0 else f"docnos.{number}.npids"


@contextmanager
def segment_builder(path: Path) -> Iterator:
    """Open an npids builder for a docno segment at ``path``; yield an object with ``add(docno)``."""
    from npids import Lookup

    added = [0]
    with Lookup.builder(path) as builder:

        class CountingBuilder:
            def add(self, docno) -> None:
                builder.add(docno)
                added[0] += 1

        yield CountingBuilder()
        if added[0] == 1:
            builder.add(_PADDING_KEY)


def _int_sequence_rows(lookup, keys: np.ndarray) -> np.ndarray:
    """Return the rows of ``keys`` in the numbered blocks of ``lookup`` (-1 elsewhere).

    npids 0.1 stores docnos such as ``doc-001, doc-002, ...`` as numbered blocks, and its
    inverse lookup misses the keys of a block whose number reaches the block's length (always
    the last key of a block that starts at 1). This recomputes those rows from the blocks'
    prefix, start and length; the caller checks each row against the forward lookup.

    NOTE: this reads npids 0.1 internals (``fwd.codecs``, ``fmt.prefix``, ``fmt.start``). With
    another npids version it may find nothing, and the forward check still rejects wrong rows.
    """
    result = np.full(len(keys), -1, dtype=np.int64)
    blocks = zip(getattr(lookup.fwd, "codecs", ()), getattr(lookup.fwd, "offsets", ()))
    for block, offset in blocks:
        fmt = block.fmt
        if type(fmt).__name__ not in ("FwdIntSequence", "FwdIntSequencePad"):
            continue
        prefix, start = fmt.prefix or "", fmt.start or 0
        for i, key in enumerate(keys):
            number = key[len(prefix):]
            if result[i] < 0 and key.startswith(prefix) and number.isdigit() and 0 <= int(number) - start < block.count:
                result[i] = offset + int(number) - start
    return result


def _inverse(lookup, keys: np.ndarray) -> np.ndarray:
    """Return ``lookup.inv`` of ``keys`` as int64, -1 where absent.

    The inverse lookup of npids 0.1 over a numbered block (``p_1, p_2, ...``) raises a
    ValueError for some keys: when every key is shorter than the block's prefix (``"zz"``),
    or when a key is the prefix followed by no digits (``"p_"``, ``"p_x"``). Such keys cannot
    be in the block, so after a failure each key is looked up alone, with a long key that no
    docno equals beside it, and a key that still fails is absent.
    """
    try:
        return np.asarray(lookup.inv[keys], dtype=np.int64)
    except ValueError:
        pass
    result = np.full(len(keys), -1, dtype=np.int64)
    for i, key in enumerate(keys.tolist()):
        try:
            result[i] = int(lookup.inv[np.array([key, _PADDING_KEY * 64])][0])
        except ValueError:
            pass
    return result


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
            missing = np.flatnonzero(result < 0)
            if not len(missing):
                break
            found = _inverse(lookup, keys[missing])
            unfound = found < 0
            if unfound.any():
                found[unfound] = _int_sequence_rows(lookup, keys[missing[unfound]])
            # Keep a row only if it is inside the segment and stores the same docno.
            found[found >= self.counts[segment]] = -1
            hits = np.flatnonzero(found >= 0)
            if len(hits):
                stored = np.asarray(lookup.fwd[found[hits]]).astype(str)
                found[hits[stored != keys[missing[hits]]]] = -1
            result[missing[found >= 0]] = found[found >= 0] + self.offsets[segment]
        return result

    def __iter__(self):
        for lookup, count in zip(self.segments, self.counts):
            for row, docno in enumerate(lookup):
                if row == count:
                    break
                yield docno

