"""``QSTModel``: a frozen (4-bit) causal LM with an optional trainable QST side network."""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from ._compat import cache_kwargs, output_cache
from .config import QSTConfig
from .quantized_base import base_fingerprint, base_name, is_quantized
from .side_network import SideNetwork

__all__ = ["QSTModel", "QSTOutput", "IGNORE_INDEX"]

logger = logging.getLogger(__name__)

# Label of tokens that carry no loss (prompt and padding), as in transformers and PyTorch's cross_entropy.
IGNORE_INDEX = -100

SIDE_WEIGHTS_FILE = "side.safetensors"


@dataclasses.dataclass
class QSTOutput:
    """Output of :meth:`QSTModel.forward`.

    Attributes:
        logits: next-token logits, (batch, kept positions, vocab) or (selected positions, vocab)
            when a boolean mask selected them.
        caches: ``(base cache, side cache)`` for the next decoding step, when requested.
    """

    logits: torch.Tensor
    caches: Optional[Tuple[Any, Any]] = None


class QSTModel(nn.Module):
    """A frozen causal LM, optionally with a QST side network that alone is trained.

    The base always runs under ``torch.no_grad()``: no activation or gradient is kept through
    it, and its hidden states reach the side network detached. Without a side network the
    model is the plain base (the untrained "base" reader).

    Args:
        base: a transformers causal LM (4-bit or full precision); all its parameters are frozen.
        qst: shape of the side network to build, or ``None`` for the base alone.

    Example::

        base, tokenizer = load_base("gemma3-270m")
        model = QSTModel(base, qst=QSTConfig(r=16))
    """

    def __init__(self, base: nn.Module, *, qst: Optional[QSTConfig] = None):
        super().__init__()
        base.requires_grad_(False)
        base.eval()
        self.base = base
        self.side = SideNetwork(base, qst).to(self.device) if qst is not None else None

    @property
    def qst_config(self) -> Optional[QSTConfig]:
        """The side network's config, or ``None`` for the base alone."""
        return self.side.config if self.side is not None else None

    @property
    def device(self) -> torch.device:
        """Device of the base model's input embeddings."""
        return self.base.get_input_embeddings().weight.device

    def train(self, mode: bool = True) -> "QSTModel":
        """Set the side network's training mode; the base stays in eval mode."""
        super().train(mode)
        self.base.eval()
        return self

    def trainable_parameters(self) -> List[nn.Parameter]:
        """Return the side network's parameters (empty for the base alone)."""
        return list(self.side.parameters()) if self.side is not None else []

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: Optional[torch.Tensor] = None,
        *,
        position_ids: Optional[torch.Tensor] = None,
        caches: Optional[Tuple[Any, Any]] = None,
        use_cache: bool = False,
        logits_to_keep: Union[int, torch.Tensor, None] = None,
    ) -> QSTOutput:
        """Compute next-token logits.

        Args:
            input_ids: (batch, seq) token ids.
            attention_mask: (batch, past + seq), 1 for real tokens, 0 for padding.
            position_ids: (batch, seq) positions, needed with left padding.
            caches: ``QSTOutput.caches`` of the previous step for incremental decoding.
            use_cache: return caches for the next step.
            logits_to_keep: ``None`` for every position, an int ``k`` for the last ``k``
                positions, or a (batch, seq) boolean mask selecting positions (the logits
                are then flattened to (selected, vocab)). The LM head runs only where kept.

        Returns:
            a :class:`QSTOutput`.
        """
        base_cache, side_cache = caches if caches is not None else (None, None)
        decoder = self.base.base_model
        with torch.no_grad():
            base_output = decoder(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                output_hidden_states=self.side is not None,
                **cache_kwargs(decoder, base_cache, use_cache),
            )
        base_final = base_output.last_hidden_state

        side_final = None
        if self.side is not None:
            # transformers' hidden_states[0] is the embedding output and hidden_states[i] the
            # output of layer i, the last one after the final norm.
            side_final, side_cache = self.side(
                base_output.hidden_states[1:],
                attention_mask=attention_mask,
                position_ids=position_ids,
                cache=side_cache,
                use_cache=use_cache,
            )

        base_final = _keep(base_final, logits_to_keep)
        if side_final is not None:
            hidden = self.side.combine(base_final, _keep(side_final, logits_to_keep))
        else:
            hidden = base_final
        logits = self.lm_logits(hidden)
        caches = (output_cache(base_output), side_cache) if use_cache else None
        return QSTOutput(logits=logits, caches=caches)

    def lm_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Apply the base's frozen LM head (and final logit soft-capping where configured) to ``hidden``."""
        head = self.base.get_output_embeddings()
        logits = head(hidden.to(head.weight.dtype))
        cap = getattr(self.base.config, "final_logit_softcapping", None)
        if cap:
            logits = torch.tanh(logits / cap) * cap
        return logits

    def loss(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Return the mean next-token cross-entropy over the positions whose label is not ``IGNORE_INDEX``.

        ``labels`` has the shape of ``input_ids``; label ``t`` is the token predicted from
        position ``t - 1``, as in transformers. Only the labelled positions go through the LM head.

        Raises:
            ValueError: if no position has a label.
        """
        targets = labels[:, 1:]
        # (batch, seq): position t predicts labels[:, t + 1]; the last position predicts nothing.
        predicts = torch.zeros_like(labels, dtype=torch.bool)
        predicts[:, :-1] = targets != IGNORE_INDEX
        if not bool(predicts.any()):
            raise ValueError(f"no position of the batch has a label other than {IGNORE_INDEX}; nothing to train on")
        logits = self.forward(input_ids, attention_mask, logits_to_keep=predicts).logits
        return F.cross_entropy(logits.float(), targets[targets != IGNORE_INDEX])

    def side_state_dict(self) -> Dict[str, torch.Tensor]:
        """Return the side network's weights as contiguous CPU tensors (empty for the base alone)."""
        if self.side is None:
            return {}
        return {name: tensor.detach().contiguous().cpu() for name, tensor in self.side.state_dict().items()}

    def save_side(self, path: Union[str, Path]) -> None:
        """Write the side network's weights to ``path`` (safetensors)."""
        from safetensors.torch import save_file

        save_file(self.side_state_dict(), str(path), metadata={"format": "pt"})

    def load_side(self, path: Union[str, Path]) -> None:
        """Load side weights written by :meth:`save_side`.

        Raises:
            ValueError: if the file's tensors do not match this side network's names or shapes.
        """
        from safetensors.torch import load_file

        if self.side is None:
            raise ValueError("this QSTModel has no side network to load weights into; build it with qst=QSTConfig(...)")
        state = load_file(str(path), device=str(self.device))
        try:
            self.side.load_state_dict(state, strict=True)
        except RuntimeError as e:
            raise ValueError(f"side weights in {path} do not fit this side network: {e}") from e

    def describe(self) -> Dict[str, Any]:
        """Return what identifies this model's base and side network, as stored next to saved weights."""
        head_dtype = self.base.get_output_embeddings().weight.dtype
        return {
            "base": {
                "name_or_path": base_name(self.base),
                "fingerprint": base_fingerprint(self.base),
                "quantized": is_quantized(self.base),
                "compute_dtype": str(head_dtype).replace("torch.", ""),
            },
            "qst": self.qst_config.to_dict() if self.qst_config is not None else None,
        }


def _keep(hidden: torch.Tensor, logits_to_keep: Union[int, torch.Tensor, None]) -> torch.Tensor:
    if logits_to_keep is None:
        return hidden
    if isinstance(logits_to_keep, int):
        return hidden[:, -logits_to_keep:]
    # (batch, seq, d)[(batch, seq) mask] -> (selected, d)
    return hidden[logits_to_keep]
