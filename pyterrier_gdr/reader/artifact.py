"""The saved reader: a directory with the side weights, what they were trained on, and ``pt_meta.json``.

Layout::

    side.safetensors   the side network's weights (absent for a base reader)
    reader.json        base name, base fingerprint, QST config, reader settings, training summary
    pt_meta.json       type/format/version, written last, so a directory without it is incomplete

The base model's weights are never saved: a reader is reloaded onto the base that
``reader.json`` names, or onto one the caller passes, after checking its fingerprint.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Optional, Union

from torch import nn

from .._util import atomic_write_json
from .model import SIDE_WEIGHTS_FILE, QSTModel
from .quantized_base import base_fingerprint

__all__ = ["FORMAT", "FORMAT_VERSION", "write_reader_files", "read_reader_files", "check_base_matches"]

FORMAT = "qst"
FORMAT_VERSION = 1
READER_FILE = "reader.json"
META_FILE = "pt_meta.json"
CHECKPOINT_DIR = "checkpoint"


def write_reader_files(
    directory: Union[str, Path],
    model: QSTModel,
    settings: Dict[str, Any],
    *,
    training: Optional[Dict[str, Any]] = None,
) -> None:
    """Write the reader's files into the existing ``directory``, ``pt_meta.json`` last."""
    directory = Path(directory)
    if model.side is not None:
        model.save_side(directory / SIDE_WEIGHTS_FILE)
    description = model.describe()
    atomic_write_json(directory / READER_FILE, {**description, "reader": settings, "training": training})
    atomic_write_json(directory / META_FILE, {
        "type": "reader",
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "package_hint": "pyterrier-gdr",
        "base": description["base"]["name_or_path"],
        "side_parameters": sum(p.numel() for p in model.trainable_parameters()),
    })


def read_reader_files(directory: Union[str, Path]) -> Dict[str, Any]:
    """Return the contents of ``reader.json`` of a complete saved reader.

    Raises:
        FileNotFoundError: if ``directory`` is missing or incomplete (no ``pt_meta.json``),
            with a hint to resume when it contains an unfinished training run.
        ValueError: if it contains another artifact type or format version.
    """
    directory = Path(directory)
    meta_path = directory / META_FILE
    if not meta_path.exists():
        if (directory / CHECKPOINT_DIR).exists():
            raise FileNotFoundError(
                f"{directory} contains an unfinished training run (a checkpoint but no {META_FILE}); "
                "call train_reader with the same output_dir to resume it"
            )
        raise FileNotFoundError(f"no saved reader at {directory}: {META_FILE} is missing; save one with QSTReader.save")
    with open(meta_path, encoding="utf-8") as fin:
        meta = json.load(fin)
    if meta.get("type") != "reader" or meta.get("format") != FORMAT:
        raise ValueError(f"{directory} contains a {meta.get('type')!r}/{meta.get('format')!r} artifact, not a QST reader")
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{directory} has QST reader format version {meta.get('format_version')!r}; this pyterrier-gdr "
            f"reads version {FORMAT_VERSION}"
        )
    with open(directory / READER_FILE, encoding="utf-8") as fin:
        return json.load(fin)


def check_base_matches(saved: Dict[str, Any], base: nn.Module, *, source: str) -> None:
    """Check that ``base`` is the model whose fingerprint ``saved`` (a ``reader.json``) records.

    Raises:
        ValueError: naming the fields that differ and the base the reader was trained on.
    """
    expected = saved["base"]["fingerprint"]
    actual = base_fingerprint(base)
    differing = [key for key in sorted(set(expected) | set(actual)) if expected.get(key) != actual.get(key)]
    if differing:
        details = ", ".join(f"{key}: saved {expected.get(key)!r}, given {actual.get(key)!r}" for key in differing)
        raise ValueError(
            f"the reader at {source} was trained on base {saved['base']['name_or_path']!r}, but the given base "
            f"model differs ({details}); load it onto that base, e.g. with base=None to load the saved name"
        )
