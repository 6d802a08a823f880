"""QST reader: a frozen 4-bit causal LM with a trainable side network, as a PyTerrier transformer.

Quantized Side Tuning (Zhang et al., ACL 2024) trains a narrow side network beside a frozen
4-bit base model, with no gradient or activation kept through the base. Here it reads the
passages a retriever returns and writes an answer per query (column ``qanswer``).

Example::

    from pyterrier_gdr.reader import QSTConfig, QSTReader, ReaderTrainingConfig, train_reader

    reader = QSTReader.from_base("gemma3-270m", qst=QSTConfig(r=16))
    train_reader(reader, questions=train_questions, retriever=bm25_with_text, output_dir="runs/qst")
    pipeline = bm25_with_text >> reader
"""
from .config import DOWNSAMPLE_KINDS, DownsampleKind, QSTConfig, ReaderTrainingConfig
from .generation import greedy_generate
from .model import IGNORE_INDEX, QSTModel, QSTOutput
from .quantized_base import GEMMA3_270M, base_fingerprint, default_compute_dtype, is_quantized, load_base, quantize_model
from .side_network import SideNetwork
from .training import TrainingStep, train_reader
from .transformer import QSTReader

__all__ = [
    "DOWNSAMPLE_KINDS",
    "DownsampleKind",
    "GEMMA3_270M",
    "IGNORE_INDEX",
    "QSTConfig",
    "QSTModel",
    "QSTOutput",
    "QSTReader",
    "SideNetwork",
    "ReaderTrainingConfig",
    "TrainingStep",
    "base_fingerprint",
    "default_compute_dtype",
    "greedy_generate",
    "is_quantized",
    "load_base",
    "quantize_model",
    "train_reader",
]
