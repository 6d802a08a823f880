"""Differences between transformers versions that the reader has to bridge."""
from __future__ import annotations

import functools
import inspect
from typing import Any, Dict

from torch import nn

__all__ = ["cache_kwargs", "output_cache"]


@functools.lru_cache(maxsize=None)
def _cache_argument(forward_cls: type) -> str:
    # transformers 5.x renamed the decoder's `past_key_values` argument to `cache` (the old name is
    # accepted with a deprecation warning until 5.40); 4.x only knows `past_key_values`.
    parameters = inspect.signature(forward_cls.forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"


def cache_kwargs(decoder: nn.Module, cache: Any, use_cache: bool) -> Dict[str, Any]:
    """Return the keyword arguments that pass ``cache`` to ``decoder.forward`` in this transformers version."""
    return {_cache_argument(type(decoder)): cache, "use_cache": use_cache}


def output_cache(output: Any) -> Any:
    """Return the key/value cache of a decoder output (``cache`` in transformers 5, ``past_key_values`` in 4)."""
    cache = getattr(output, "cache", None)
    if cache is None:
        cache = getattr(output, "past_key_values", None)
    return cache
