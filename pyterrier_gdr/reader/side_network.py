"""The QST side network: a narrow copy of the base decoder fed with downsampled base hidden states.

Quantized Side Tuning (Zhang et al., "QST: Quantized Side Tuning for Large Language Models",
ACL 2024) trains a small side network g beside a frozen base f. With ``N`` base layers and
``h_f_i`` the output of base layer ``i``, side layer ``i`` receives::

    (1 - beta_i) * downsample_i(h_f_i) + beta_i * h_g_(i-1),    beta_i = sigmoid(gamma_i)

with ``h_g_0 = 0`` and ``gamma_i`` a zero-initialised vector, so every gate starts at 0.5. The
model output is ``alpha * h_f_N + (1 - alpha) * upsample(h_g_N)``, where ``h_f_N`` and ``h_g_N``
are the final hidden states after each decoder's final norm (what the base's LM head reads) and
``alpha`` starts at 1, so an untrained side network leaves the base's logits unchanged.
"""
from __future__ import annotations

import copy
import logging
from typing import Any, Optional, Sequence, Tuple

import torch
from torch import nn

from ._compat import cache_kwargs, output_cache
from .config import QSTConfig

__all__ = ["SideNetwork", "build_downsample", "side_model_config"]

logger = logging.getLogger(__name__)


class AdapterDownsample(nn.Module):
    """Bottleneck adapter: down projection to ``rank``, activation, projection to the side width."""

    def __init__(self, in_features: int, out_features: int, *, rank: int, activation: str, dropout: float):
        super().__init__()
        from transformers.activations import ACT2FN

        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.down = nn.Linear(in_features, rank, bias=False)
        self.activation = ACT2FN[activation]
        self.up = nn.Linear(rank, out_features, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.activation(self.down(self.dropout(x))))


class LoRADownsample(nn.Module):
    """Low-rank linear map ``B @ A`` from the base width to the side width, with no activation."""

    def __init__(self, in_features: int, out_features: int, *, rank: int, dropout: float):
        super().__init__()
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.lora_a = nn.Linear(in_features, rank, bias=False)
        self.lora_b = nn.Linear(rank, out_features, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lora_b(self.lora_a(self.dropout(x)))


class LinearDownsample(nn.Module):
    """Dense linear map from the base width to the side width."""

    def __init__(self, in_features: int, out_features: int, *, dropout: float):
        super().__init__()
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.linear = nn.Linear(in_features, out_features, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.dropout(x))


class PoolDownsample(nn.Module):
    """Max or mean over consecutive groups of ``in_features // out_features`` channels (no parameters)."""

    def __init__(self, in_features: int, out_features: int, *, mode: str, dropout: float):
        super().__init__()
        if in_features % out_features:
            raise ValueError(
                f"{mode} downsampling needs the base hidden size ({in_features}) to be a multiple of the side "
                f"hidden size ({out_features}); pick an r that divides the hidden size or use downsample='adapter'"
            )
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.mode = mode
        self.out_features = out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (..., in_features) -> (..., out_features, group)
        grouped = self.dropout(x).unflatten(-1, (self.out_features, -1))
        return grouped.amax(-1) if self.mode == "max_pool" else grouped.mean(-1)


def build_downsample(config: QSTConfig, in_features: int, out_features: int) -> nn.Module:
    """Return the downsample module that ``config.downsample`` names."""
    if config.downsample == "adapter":
        return AdapterDownsample(in_features, out_features, rank=config.downsample_rank,
                                 activation=config.adapter_activation, dropout=config.dropout)
    if config.downsample == "lora":
        return LoRADownsample(in_features, out_features, rank=config.downsample_rank, dropout=config.dropout)
    if config.downsample == "linear":
        return LinearDownsample(in_features, out_features, dropout=config.dropout)
    return PoolDownsample(in_features, out_features, mode=config.downsample, dropout=config.dropout)


def side_model_config(base_config: Any, r: int) -> Any:
    """Return a copy of ``base_config`` with hidden, intermediate and head sizes divided by ``r``.

    The side decoder keeps the base's depth, number of heads, attention layout (e.g. Gemma 3's
    sliding-window layers) and rotary settings. Its head size is rounded down to an even number,
    at least 2, because rotary embeddings rotate channel pairs.

    Raises:
        ValueError: if the config lacks ``hidden_size``, ``intermediate_size`` or
            ``num_attention_heads``, as in architectures this side network does not support.
    """
    missing = [name for name in ("hidden_size", "intermediate_size", "num_attention_heads", "num_hidden_layers")
               if getattr(base_config, name, None) is None]
    if missing:
        raise ValueError(
            f"the base model's config ({type(base_config).__name__}) has no {', '.join(missing)}, so no side "
            "network can be derived from it; use a Llama-, Mistral-, Qwen- or Gemma-style decoder"
        )
    config = copy.deepcopy(base_config)
    base_head_dim = getattr(base_config, "head_dim", None) or base_config.hidden_size // base_config.num_attention_heads
    side_head_dim = max(2, (base_head_dim // r) // 2 * 2)
    config.hidden_size = max(1, base_config.hidden_size // r)
    config.intermediate_size = max(1, base_config.intermediate_size // r)
    config.head_dim = side_head_dim
    if getattr(base_config, "query_pre_attn_scalar", None):
        # Gemma scales attention logits by query_pre_attn_scalar ** -0.5 instead of head_dim ** -0.5,
        # so the side decoder keeps the base's ratio of that scalar to the head size.
        config.query_pre_attn_scalar = max(1, round(base_config.query_pre_attn_scalar * side_head_dim / base_head_dim))
    # The side decoder reads no token ids, so it gets a 1-row embedding that is dropped after construction.
    config.vocab_size = 1
    config.pad_token_id = None
    config.tie_word_embeddings = False
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    return config


class SideNetwork(nn.Module):
    """Trainable side network of a QST model (see the module docstring for the equations).

    Args:
        base: the frozen transformers causal LM, whose decoder class is instantiated at the
            reduced width (e.g. ``LlamaModel`` for a ``LlamaForCausalLM``).
        config: the side network's shape; its ``seed`` fixes the initial weights.
    """

    def __init__(self, base: nn.Module, config: QSTConfig):
        super().__init__()
        base_config = base.config
        self.config = config
        self.base_hidden_size = int(base_config.hidden_size)
        self.decoder_config = side_model_config(base_config, config.r)
        self.hidden_size = int(self.decoder_config.hidden_size)
        self.num_layers = int(base_config.num_hidden_layers)
        decoder_cls = type(base.base_model)

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            with _default_dtype(torch.float32):
                self.decoder = decoder_cls(self.decoder_config)
            self.decoder.embed_tokens = None
            self.downsample = nn.ModuleList(
                build_downsample(config, self.base_hidden_size, self.hidden_size) for _ in range(self.num_layers)
            )
            self.upsample = nn.Linear(self.hidden_size, self.base_hidden_size)
        # gamma_i, one vector per layer; zeros make every gate beta_i = sigmoid(0) = 0.5.
        self.gate = nn.Parameter(torch.zeros(self.num_layers, self.hidden_size))
        # alpha = 1 makes the output the base's alone until training moves it.
        self.alpha = nn.Parameter(torch.ones(self.base_hidden_size))
        self.to(torch.float32)

        if len(self.decoder.layers) != self.num_layers:
            raise ValueError(f"side decoder has {len(self.decoder.layers)} layers, expected {self.num_layers}")
        self._base_states: Optional[Sequence[torch.Tensor]] = None
        for index, layer in enumerate(self.decoder.layers):
            layer.register_forward_pre_hook(self._make_input_hook(index), with_kwargs=True)

    def _make_input_hook(self, index: int):
        def mix_base_state(module, args, kwargs):
            if self._base_states is None:
                raise RuntimeError("SideNetwork decoder layers run only inside SideNetwork.forward")
            side_state = args[0] if args else kwargs["hidden_states"]
            fed = self.downsample[index](self._base_states[index].to(side_state.dtype))
            beta = torch.sigmoid(self.gate[index])
            mixed = (1 - beta) * fed + beta * side_state
            if args:
                return (mixed, *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": mixed}

        return mix_base_state

    def forward(
        self,
        base_states: Sequence[torch.Tensor],
        *,
        attention_mask: Optional[torch.Tensor] = None,
        position_ids: Optional[torch.Tensor] = None,
        cache: Any = None,
        use_cache: bool = False,
    ) -> Tuple[torch.Tensor, Any]:
        """Run the side decoder over the base's per-layer outputs.

        Args:
            base_states: ``N`` tensors of shape (batch, seq, base hidden size), the output of each
                base layer in order (transformers' ``hidden_states[1:]``).
            attention_mask: (batch, past + seq) mask, as given to the base.
            position_ids: (batch, seq) positions, as given to the base.
            cache: the side decoder's key/value cache from the previous step, or ``None``.
            use_cache: return a key/value cache for incremental decoding.

        Returns:
            ``(h_g_N, cache)``: the final side hidden state (batch, seq, side hidden size)
            after the side decoder's final norm, and the updated cache (``None`` unless ``use_cache``).
        """
        if len(base_states) != self.num_layers:
            raise ValueError(f"expected {self.num_layers} base hidden states, got {len(base_states)}")
        first = base_states[0]
        # h_g_0 = 0, so the input of the first side layer is (1 - beta_1) * downsample_1(h_f_1).
        start = torch.zeros(*first.shape[:-1], self.hidden_size, dtype=self.alpha.dtype, device=first.device)
        self._base_states = base_states
        try:
            output = self.decoder(
                inputs_embeds=start,
                attention_mask=attention_mask,
                position_ids=position_ids,
                **cache_kwargs(self.decoder, cache, use_cache),
            )
        finally:
            self._base_states = None
        return output.last_hidden_state, output_cache(output) if use_cache else None

    def combine(self, base_final: torch.Tensor, side_final: torch.Tensor) -> torch.Tensor:
        """Return ``alpha * base_final + (1 - alpha) * upsample(side_final)`` in float32."""
        upsampled = self.upsample(side_final.to(self.upsample.weight.dtype))
        return self.alpha * base_final.to(self.alpha.dtype) + (1 - self.alpha) * upsampled


class _default_dtype:
    """Context manager that sets ``torch``'s default dtype and restores it on exit."""

    def __init__(self, dtype: torch.dtype):
        self.dtype = dtype

    def __enter__(self):
        self.previous = torch.get_default_dtype()
        torch.set_default_dtype(self.dtype)

    def __exit__(self, *exc_info):
        torch.set_default_dtype(self.previous)
