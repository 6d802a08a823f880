"""The GDR model: a pretrained text encoder, a CID decoder and a query-vector head.

One encoder pass over the query feeds both stages of GDR:

- inter-cluster matching: a freshly initialised transformer decoder reads the encoder
  states through cross-attention and generates the query's cluster identifier (CID),
  token by token, over the position-aware CID vocabulary of :class:`~pyterrier_gdr.clusters.CIDCodec`;
- intra-cluster matching: the query vector, pooled from the same encoder states and
  projected to the document-vector space, is scored against document vectors.

The encoder is any BERT-like model (e.g. all-MiniLM-L6-v2, offline) or the encoder of a
T5-family model (``t5-base``, the GDR paper's choice). The seq2seq core is a
``transformers.EncoderDecoderModel``, so ``generate(prefix_allowed_tokens_fn=...)`` works on
it as a reference for the faster decoder in :mod:`pyterrier_gdr.decoding`.

NOTE: NCI and GDR use a prefix-aware weight-adaptive (PAWA) decoder, whose output
projection depends on the CID prefix. Here the position-aware vocabulary gives each
position its own output rows, but the projection does not depend on the prefix.
"""
from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import List, Literal, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from pyterrier_gdr._util import portable_encoder_name

__all__ = ["GDRModelConfig", "GDRModel"]

logger = logging.getLogger(__name__)

QueryPooling = Literal["mean", "first"]

_T5_FAMILY = ("t5", "mt5", "umt5", "longt5")
MODEL_FORMAT_VERSION = 1


@dataclass
class GDRModelConfig:
    """Shape of a :class:`GDRModel`; saved as ``gdr_model.json`` beside its weights."""

    encoder: str = field(metadata={"help": "path or Hugging Face name of the pretrained encoder (BERT-like or T5-family)"})
    vocab_size: int = field(metadata={"help": "size of the CID vocabulary (max_depth * branching_factor + 2)"})
    max_cid_length: int = field(metadata={"help": "longest CID in tokens, EOS included"})
    query_dim: int = field(metadata={"help": "dimension of the document vectors the query vector is scored against"})
    decoder_layers: int = field(default=2, metadata={"help": "transformer layers of the CID decoder"})
    decoder_heads: Optional[int] = field(default=None, metadata={"help": "attention heads of the CID decoder; hidden size / 64 when unset"})
    query_pooling: QueryPooling = field(
        default="mean",
        metadata={"help": "'mean' (sentence-transformers models such as MiniLM) or 'first' (first-token state, as GDR does with T5)"},
    )
    normalize_query: bool = field(default=True, metadata={"help": "L2-normalise query vectors (match normalised document vectors)"})
    max_query_length: int = field(default=64, metadata={"help": "query tokens kept by the tokenizer"})

    def __post_init__(self):
        if self.query_pooling not in ("mean", "first"):
            raise ValueError(f"query_pooling={self.query_pooling!r} is invalid; valid: 'mean', 'first'")
        for name in ("vocab_size", "max_cid_length", "query_dim", "decoder_layers", "max_query_length"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} is invalid; it must be positive")


def _load_encoder(name_or_path: str):
    """Load the encoder module of ``name_or_path`` (BERT-like via AutoModel, T5-family via T5EncoderModel)."""
    from transformers import AutoConfig, AutoModel, T5EncoderModel

    try:
        config = AutoConfig.from_pretrained(name_or_path)
    except (OSError, ValueError) as e:
        raise OSError(
            f"cannot load the encoder {name_or_path!r}: {e}. Give a local model directory, or a Hugging Face "
            "name where the hub is reachable (offline, pyterrier_gdr._util.default_encoder_path() is all-MiniLM-L6-v2)"
        ) from e
    if config.model_type in _T5_FAMILY:
        return T5EncoderModel.from_pretrained(name_or_path)
    if getattr(config, "is_encoder_decoder", False):
        raise ValueError(
            f"encoder {name_or_path!r} is a {config.model_type} encoder-decoder; supported are encoder-only models "
            f"(BERT, RoBERTa, MiniLM, ...) and the T5 family ({', '.join(_T5_FAMILY)})"
        )
    return AutoModel.from_pretrained(name_or_path)


def _new_decoder(config: GDRModelConfig, hidden_size: int):
    from transformers import BertConfig, BertLMHeadModel

    heads = config.decoder_heads or max(1, hidden_size // 64)
    if hidden_size % heads:
        raise ValueError(f"decoder_heads={heads} does not divide the encoder's hidden size {hidden_size}")
    decoder_config = BertConfig(
        vocab_size=config.vocab_size,
        hidden_size=hidden_size,
        num_hidden_layers=config.decoder_layers,
        num_attention_heads=heads,
        intermediate_size=4 * hidden_size,
        max_position_embeddings=config.max_cid_length + 1,
        is_decoder=True,
        add_cross_attention=True,
        pad_token_id=0,
    )
    return BertLMHeadModel(decoder_config)


def fused_query_key_value(attention) -> Tuple[torch.Tensor, torch.Tensor]:
    """Return ``(weight (3H, H), bias (3H,))`` that compute a BERT self-attention's query, key and value in one product."""
    weight = torch.cat([attention.query.weight, attention.key.weight, attention.value.weight])
    bias = torch.cat([attention.query.bias, attention.key.bias, attention.value.bias])
    return weight, bias


def dense_plus_residual(dense: nn.Linear, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    """Return ``dense(x) + residual`` for 2-D ``x``, accumulated in place into a fresh ``residual + bias``.

    This allocates one output instead of two (the product, then the sum).
    """
    return (residual + dense.bias).addmm_(x, dense.weight.t())


def _unpadded_encoding_supported(encoder: nn.Module) -> bool:
    """Return whether :func:`_encode_unpadded` computes what ``encoder`` computes (BERT, absolute positions, GELU)."""
    from transformers import BertModel

    config = encoder.config
    return (
        type(encoder) is BertModel
        and getattr(config, "position_embedding_type", "absolute") == "absolute"
        and config.hidden_act == "gelu"
        and not config.is_decoder
    )


def _encode_unpadded(bert, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Run a ``transformers`` ``BertModel`` on the real tokens of a padded batch only; return ``(B, T, H)`` states.

    The linear layers, which do nearly all of the arithmetic, see only the real tokens. A batch of
    questions is padded to its longest question, so 30-50% of its positions are often padding.
    Attention runs on the padded layout with the padding masked, as in the full pass. Padded
    positions come back as zeros. Inference only: dropout is not applied.
    """
    batch, length = input_ids.shape
    real = attention_mask.reshape(-1).nonzero().squeeze(1)  # (N,) flat positions of the real tokens
    embeddings = bert.embeddings
    x = embeddings.word_embeddings(input_ids.reshape(-1)[real]) + embeddings.position_embeddings.weight[real % length]
    x = embeddings.LayerNorm(x + embeddings.token_type_embeddings.weight[0])  # (N, H)
    hidden = x.shape[1]
    heads = bert.config.num_attention_heads
    padding_bias = torch.zeros(batch, 1, 1, length, dtype=x.dtype, device=x.device)
    padding_bias = padding_bias.masked_fill(attention_mask[:, None, None, :] == 0, float("-inf"))
    for layer in bert.encoder.layer:
        query_key_value = torch.nn.functional.linear(x, *fused_query_key_value(layer.attention.self))  # (N, 3H)
        padded = x.new_zeros(batch * length, 3 * hidden).index_copy_(0, real, query_key_value)
        query, key, value = padded.view(batch, length, 3, heads, hidden // heads).permute(2, 0, 3, 1, 4)  # (B, heads, T, d) each
        context = torch.nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=padding_bias)
        context = context.transpose(1, 2).reshape(batch * length, hidden).index_select(0, real)  # (N, H)
        x = layer.attention.output.LayerNorm(dense_plus_residual(layer.attention.output.dense, context, x))
        intermediate = torch.ops.aten.gelu_(layer.intermediate.dense(x))  # in place: the supported encoders use GELU
        x = layer.output.LayerNorm(dense_plus_residual(layer.output.dense, intermediate, x))
    return x.new_zeros(batch * length, hidden).index_copy_(0, real, x).view(batch, length, hidden)


class GDRModel(nn.Module):
    """Encoder + CID decoder + query-vector head.

    Build a new one with :meth:`from_encoder`, reopen a saved one with :meth:`load`.
    """

    def __init__(self, config: GDRModelConfig, encoder: nn.Module, decoder: nn.Module, tokenizer):
        super().__init__()
        from transformers import EncoderDecoderModel

        self.config = config
        self.tokenizer = tokenizer
        self.seq2seq = EncoderDecoderModel(encoder=encoder, decoder=decoder)
        for cfg in (self.seq2seq.config, self.seq2seq.generation_config):
            cfg.decoder_start_token_id = 0
            cfg.pad_token_id = 0
            cfg.eos_token_id = 1
        hidden = encoder.config.hidden_size if hasattr(encoder.config, "hidden_size") else encoder.config.d_model
        self.query_head = nn.Linear(hidden, config.query_dim)
        if hidden == config.query_dim:
            # Start from the encoder's own pooled vector, so an untrained model scores as the base bi-encoder does.
            with torch.no_grad():
                self.query_head.weight.copy_(torch.eye(hidden))
                self.query_head.bias.zero_()

    @classmethod
    def from_encoder(cls, encoder: str, *, vocab_size: int, max_cid_length: int, query_dim: int, **options) -> "GDRModel":
        """Build a model from a pretrained encoder and a freshly initialised CID decoder.

        Example::

            model = GDRModel.from_encoder(default_encoder_path(), vocab_size=92, max_cid_length=4, query_dim=384)
        """
        from transformers import AutoTokenizer

        config = GDRModelConfig(encoder=encoder, vocab_size=vocab_size, max_cid_length=max_cid_length, query_dim=query_dim, **options)
        encoder_module = _load_encoder(encoder)
        hidden = getattr(encoder_module.config, "hidden_size", None) or encoder_module.config.d_model
        decoder = _new_decoder(config, hidden)
        tokenizer = AutoTokenizer.from_pretrained(encoder)
        return cls(config, encoder_module, decoder, tokenizer)

    # --- forward passes -----------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return self.query_head.weight.device

    def tokenize(self, queries: Sequence[str]) -> dict:
        batch = self.tokenizer(
            list(queries), padding=True, truncation=True, max_length=self.config.max_query_length, return_tensors="pt"
        )
        return {"input_ids": batch["input_ids"].to(self.device), "attention_mask": batch["attention_mask"].to(self.device)}

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        """Run the encoder once; return its output object (``last_hidden_state``: ``(B, T, H)``).

        In inference (no gradient, encoder in eval mode) a BERT encoder skips the padding: see
        :func:`_encode_unpadded`. Its states at padded positions are then zero, not the values the
        full forward pass computes there; every use of them masks those positions.
        """
        encoder = self.seq2seq.encoder
        if not torch.is_grad_enabled() and not encoder.training and _unpadded_encoding_supported(encoder):
            from transformers.modeling_outputs import BaseModelOutput

            return BaseModelOutput(last_hidden_state=_encode_unpadded(encoder, input_ids, attention_mask))
        return encoder(input_ids=input_ids, attention_mask=attention_mask, return_dict=True)

    def query_vectors(self, encoder_states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Pool ``(B, T, H)`` encoder states into ``(B, query_dim)`` query vectors."""
        if self.config.query_pooling == "mean":
            mask = attention_mask.unsqueeze(-1).to(encoder_states.dtype)  # (B, T, 1)
            pooled = (encoder_states * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        else:
            pooled = encoder_states[:, 0]
        vectors = self.query_head(pooled)
        if self.config.normalize_query:
            vectors = F.normalize(vectors, dim=-1)
        return vectors

    def decoder_logits(self, encoder_outputs, attention_mask: torch.Tensor, decoder_input_ids: torch.Tensor) -> torch.Tensor:
        """Return ``(N, L, vocab)`` logits of the CID decoder for ``(N, L)`` decoder inputs.

        ``encoder_outputs`` and ``attention_mask`` must already have N rows (repeat them per beam).
        """
        output = self.seq2seq(
            encoder_outputs=encoder_outputs,
            attention_mask=attention_mask,
            decoder_input_ids=decoder_input_ids,
            use_cache=False,
            return_dict=True,
        )
        return output.logits

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, cid_labels: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Return ``(cid_logits (B, L, vocab), query_vectors (B, query_dim))`` for teacher-forced CIDs ``(B, L)``."""
        encoder_outputs = self.encode(input_ids, attention_mask)
        decoder_input_ids = torch.zeros_like(cid_labels)
        decoder_input_ids[:, 1:] = cid_labels[:, :-1]  # shift right; token 0 is the decoder start
        logits = self.decoder_logits(encoder_outputs, attention_mask, decoder_input_ids)
        vectors = self.query_vectors(encoder_outputs.last_hidden_state, attention_mask)
        return logits, vectors

    @torch.no_grad()
    def encode_queries(self, queries: Sequence[str], *, batch_size: int = 64) -> torch.Tensor:
        """Return ``(len(queries), query_dim)`` query vectors (no gradient), on the model's device."""
        chunks: List[torch.Tensor] = []
        for start in range(0, len(queries), batch_size):
            batch = self.tokenize(queries[start:start + batch_size])
            states = self.encode(**batch).last_hidden_state
            chunks.append(self.query_vectors(states, batch["attention_mask"]))
        if not chunks:
            return torch.empty(0, self.config.query_dim, device=self.device)
        return torch.cat(chunks)

    # --- storage ------------------------------------------------------------------------

    def save(self, directory) -> None:
        """Write the model into ``directory`` (created if needed): encoder, decoder, head and config."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.seq2seq.encoder.save_pretrained(directory / "encoder")
        self.tokenizer.save_pretrained(directory / "encoder")
        self.seq2seq.decoder.save_pretrained(directory / "decoder")
        save_file({k: v.detach().cpu().contiguous() for k, v in self.query_head.state_dict().items()}, str(directory / "query_head.safetensors"))
        with open(directory / "gdr_model.json", "w", encoding="utf-8") as fout:
            # The encoder's own weights are saved above; its name is recorded for reference only.
            record = {**asdict(self.config), "encoder": portable_encoder_name(self.config.encoder)}
            json.dump({"format_version": MODEL_FORMAT_VERSION, **record}, fout, indent=2)

    @classmethod
    def load(cls, directory, *, device=None) -> "GDRModel":
        """Reopen a model written by :meth:`save`.

        Raises:
            FileNotFoundError: if ``directory`` holds no ``gdr_model.json``.
            ValueError: if the model was written by another format version.
        """
        from safetensors.torch import load_file
        from transformers import AutoTokenizer, BertLMHeadModel

        from pyterrier_gdr._util import resolve_device

        directory = Path(directory)
        meta_path = directory / "gdr_model.json"
        if not meta_path.exists():
            raise FileNotFoundError(f"{meta_path} not found: {directory} is not a saved GDR model; train one first")
        with open(meta_path, encoding="utf-8") as fin:
            meta = json.load(fin)
        version = meta.pop("format_version", None)
        if version != MODEL_FORMAT_VERSION:
            raise ValueError(
                f"{directory} holds a GDR model of format version {version}; this pyterrier-gdr reads version "
                f"{MODEL_FORMAT_VERSION}. Retrain the model with this version."
            )
        config = GDRModelConfig(**meta)
        encoder = _load_encoder(str(directory / "encoder"))
        decoder = BertLMHeadModel.from_pretrained(str(directory / "decoder"))
        tokenizer = AutoTokenizer.from_pretrained(str(directory / "encoder"))
        model = cls(config, encoder, decoder, tokenizer)
        model.query_head.load_state_dict(load_file(str(directory / "query_head.safetensors")))
        model.to(resolve_device(device))
        model.eval()
        return model
