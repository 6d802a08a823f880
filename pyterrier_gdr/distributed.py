"""Corpus encoding split across the processes of ``accelerate launch`` (or ``torchrun``), merged by the main process.

Each process encodes one contiguous shard of the corpus into its own files; the main
process then concatenates the shards in order, so the result is the single-process
layout (same rows, same docno order) whatever the number of processes.
"""
from __future__ import annotations

import itertools
import logging
import shutil
from pathlib import Path
from typing import Iterable, Optional, Tuple

import numpy as np

__all__ = ["process_state", "encode_sharded"]

logger = logging.getLogger(__name__)


def process_state():
    """Return Accelerate's ``PartialState``: one process, unless started by ``accelerate launch`` or ``torchrun``.

    Without CUDA the processes use the CPU and the gloo backend.
    """
    import torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def encode_sharded(encoder, docs: Iterable[dict], count: int, work_dir: Path, state) -> Optional[Tuple[Path, Path]]:
    """Encode this process's shard of ``docs``; on the main process, merge all shards.

    Args:
        encoder: a :class:`~pyterrier_gdr.encoding.DocumentEncoder`.
        docs: the whole corpus, in order (every process reads it and skips other shards).
        count: the number of documents in ``docs``.
        work_dir: a folder all processes can write to.
        state: the ``PartialState``.

    Returns:
        On the main process, ``(vectors_file, docnos_file)`` with all rows in corpus order
        (a raw float32 file and a text file of docnos); ``None`` on the other processes.
    """
    rank, world = state.process_index, state.num_processes
    start, stop = rank * count // world, (rank + 1) * count // world
    if state.is_main_process:
        shutil.rmtree(work_dir, ignore_errors=True)
        work_dir.mkdir(parents=True)
    state.wait_for_everyone()

    class _DocnoFile:
        def __init__(self, path):
            self.out = open(path, "w", encoding="utf-8")

        def add(self, docno):
            if "\n" in docno:
                raise ValueError(f"docno {docno!r} contains a line break")
            self.out.write(docno + "\n")

    shard = itertools.islice(docs, start, stop)
    sink = _DocnoFile(work_dir / f"docnos.{rank}.txt")
    written = encoder.encode_to_file(shard, work_dir / f"vecs.{rank}.f4", sink, total=stop - start)
    sink.out.close()
    if written != stop - start:
        raise ValueError(f"process {rank} read {written} documents for rows {start}..{stop}; the corpus has fewer than count={count}")
    logger.info("process %d/%d encoded documents %d..%d", rank, world, start, stop)
    state.wait_for_everyone()
    if not state.is_main_process:
        return None

    vectors_file, docnos_file = work_dir / "vecs.f4", work_dir / "docnos.txt"
    with open(vectors_file, "wb") as vectors_out, open(docnos_file, "w", encoding="utf-8") as docnos_out:
        for shard_rank in range(world):
            with open(work_dir / f"vecs.{shard_rank}.f4", "rb") as fin:
                shutil.copyfileobj(fin, vectors_out, length=1 << 24)
            with open(work_dir / f"docnos.{shard_rank}.txt", encoding="utf-8") as fin:
                shutil.copyfileobj(fin, docnos_out)
    return vectors_file, docnos_file


def read_docnos(path: Path):
    """Yield the docnos of a text file written by :func:`encode_sharded`."""
    with open(path, encoding="utf-8") as fin:
        for line in fin:
            yield line.rstrip("\n")


def count_rows(path: Path, dim: int) -> int:
    return int(np.memmap(path, dtype=np.float32, mode="r").shape[0] // dim)
