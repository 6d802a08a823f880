"""Configurations of the QST side network and of reader training."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, Literal, Optional, get_args

__all__ = ["DownsampleKind", "DOWNSAMPLE_KINDS", "QSTConfig", "ReaderTrainingConfig"]

DownsampleKind = Literal["adapter", "lora", "linear", "max_pool", "avg_pool"]
DOWNSAMPLE_KINDS = get_args(DownsampleKind)


class _DictMixin:
    """``to_dict``/``from_dict`` for flat dataclasses, rejecting unknown keys."""

    def to_dict(self) -> Dict[str, Any]:
        """Return the fields as a JSON-serialisable dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Dict[str, Any]):
        """Build the config from ``data``.

        Raises:
            ValueError: if ``data`` has keys that are not fields of this config.
        """
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown {cls.__name__} fields {unknown}; valid fields: {sorted(names)}")
        return cls(**data)


def _check_positive_int(owner: str, name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{owner}.{name} must be a positive integer, got {value!r}")


@dataclass
class QSTConfig(_DictMixin):
    """Shape of a Quantized Side Tuning (QST) side network (Zhang et al., ACL 2024).

    The side network has the base model's depth; its hidden size, intermediate size and
    attention head size are the base's divided by ``r``.
    """

    r: int = field(
        default=16,
        metadata={"help": "reduction factor: the side network's hidden, intermediate and head sizes are the base's divided by r"},
    )
    downsample: DownsampleKind = field(
        default="adapter",
        metadata={
            "help": "how each base hidden state is reduced to the side width: 'adapter' (down projection, "
            "activation, up projection), 'lora' (product of two low-rank matrices), 'linear', "
            "'max_pool' or 'avg_pool' (over groups of r channels, no parameters)"
        },
    )
    downsample_rank: int = field(
        default=16, metadata={"help": "bottleneck width of the 'adapter' and 'lora' downsamples"}
    )
    adapter_activation: str = field(
        default="silu", metadata={"help": "activation between the two projections of the 'adapter' downsample (a transformers ACT2FN name)"}
    )
    dropout: float = field(
        default=0.0, metadata={"help": "dropout probability on each downsample's input while training"}
    )
    seed: int = field(
        default=0, metadata={"help": "seed of the side network's random initialisation, so that a build is reproducible"}
    )

    def __post_init__(self):
        _check_positive_int("QSTConfig", "r", self.r)
        _check_positive_int("QSTConfig", "downsample_rank", self.downsample_rank)
        if self.downsample not in DOWNSAMPLE_KINDS:
            raise ValueError(f"QSTConfig.downsample={self.downsample!r} is invalid; valid: {', '.join(DOWNSAMPLE_KINDS)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"QSTConfig.dropout must be in [0, 1), got {self.dropout!r}")
        from transformers.activations import ACT2FN

        if self.adapter_activation not in ACT2FN:
            raise ValueError(
                f"QSTConfig.adapter_activation={self.adapter_activation!r} is not a transformers activation; "
                "use e.g. 'silu', 'gelu' or 'relu'"
            )
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"QSTConfig.seed must be an integer, got {self.seed!r}")


@dataclass
class ReaderTrainingConfig(_DictMixin):
    """Hyperparameters of :func:`~pyterrier_gdr.reader.train_reader`.

    The prompt settings (passages per prompt, prompt length limit) come from the reader being
    trained, so training prompts and reading prompts are built the same way.
    """

    # On Gemma-3-270m (benchmarks/qst_vs_qlora.py, 21 steps of 4 x 512 tokens, CPU) the held-out
    # answer loss fell from 2.07 to 2.00 at 1e-3, to 1.75 at 3e-3 and to 1.09 at 1e-2. The side
    # output enters through (1 - alpha), which starts at 0 and grows by about one learning rate
    # per step, so a low rate keeps the model close to the base for many steps.
    # NOTE: only these short runs chose the default; longer runs may need a lower rate or a schedule.
    learning_rate: float = field(
        default=1e-2,
        metadata={"help": "peak AdamW learning rate of the side network; far above QLoRA's usual 2e-4 because "
                  "the side output starts at zero weight and most side weights start random"},
    )
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    num_epochs: int = field(default=1, metadata={"help": "passes over the training questions (ignored when max_steps is set)"})
    max_steps: Optional[int] = field(
        default=None, metadata={"help": "optimizer steps to run; overrides num_epochs when set"}
    )
    batch_size: int = field(default=4, metadata={"help": "questions per forward pass"})
    gradient_accumulation_steps: int = field(
        default=1, metadata={"help": "forward passes whose gradients are summed before each optimizer step"}
    )
    warmup_steps: int = field(default=0, metadata={"help": "optimizer steps of linear learning-rate warmup"})
    lr_schedule: Literal["constant", "linear"] = field(
        default="constant", metadata={"help": "learning rate after warmup: 'constant', or 'linear' decay to 0 at the last step"}
    )
    max_grad_norm: Optional[float] = field(
        default=1.0, metadata={"help": "clip the gradient norm of the side parameters to this value; None disables clipping"}
    )
    max_answer_tokens: int = field(
        default=32, metadata={"help": "answer length limit in tokens, end-of-sequence token included"}
    )
    save_every: int = field(default=100, metadata={"help": "write a resumable checkpoint every this many optimizer steps"})
    seed: int = field(default=42, metadata={"help": "seed of the question order and of dropout"})

    def __post_init__(self):
        for name in ("num_epochs", "batch_size", "gradient_accumulation_steps", "max_answer_tokens", "save_every"):
            _check_positive_int("ReaderTrainingConfig", name, getattr(self, name))
        if self.max_steps is not None:
            _check_positive_int("ReaderTrainingConfig", "max_steps", self.max_steps)
        if isinstance(self.warmup_steps, bool) or not isinstance(self.warmup_steps, int) or self.warmup_steps < 0:
            raise ValueError(f"ReaderTrainingConfig.warmup_steps must be a non-negative integer, got {self.warmup_steps!r}")
        if not self.learning_rate > 0:
            raise ValueError(f"ReaderTrainingConfig.learning_rate must be positive, got {self.learning_rate!r}")
        if self.weight_decay < 0:
            raise ValueError(f"ReaderTrainingConfig.weight_decay must be non-negative, got {self.weight_decay!r}")
        if self.lr_schedule not in ("constant", "linear"):
            raise ValueError(f"ReaderTrainingConfig.lr_schedule={self.lr_schedule!r} is invalid; valid: constant, linear")
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise ValueError(f"ReaderTrainingConfig.max_grad_norm must be positive or None, got {self.max_grad_norm!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"ReaderTrainingConfig.seed must be an integer, got {self.seed!r}")
