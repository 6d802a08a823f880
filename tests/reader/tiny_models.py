"""Tiny random causal LMs, a character tokenizer and a five-passage corpus for the reader tests."""
from __future__ import annotations

import string

import pandas as pd
import torch

from pyterrier_gdr.reader import quantize_model

SPECIAL_TOKENS = ["<pad>", "<bos>", "<eos>", "<unk>"]

PASSAGES = pd.DataFrame([
    {"docno": "d1", "title": "France", "text": "Paris is the capital of France."},
    {"docno": "d2", "title": "Germany", "text": "Berlin is the capital of Germany."},
    {"docno": "d3", "title": "Italy", "text": "Rome is the capital of Italy."},
    {"docno": "d4", "title": "Spain", "text": "Madrid is the capital of Spain."},
    {"docno": "d5", "title": "Rivers", "text": "The Seine flows through Paris."},
])

QUESTIONS = pd.DataFrame([
    {"qid": "q1", "query": "capital of France", "answers": ["Paris"]},
    {"qid": "q2", "query": "capital of Germany", "answers": ["Berlin"]},
    {"qid": "q3", "query": "capital of Italy", "answers": ["Rome"]},
    {"qid": "q4", "query": "capital of Spain", "answers": ["Madrid", "Madrid, Spain"]},
])


def make_char_tokenizer():
    """Return a character-level fast tokenizer with pad/bos/eos/unk tokens (no model hub needed)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    characters = sorted(set(string.printable) - set("\r\x0b\x0c"))
    vocab = {token: index for index, token in enumerate(SPECIAL_TOKENS + characters)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    backend.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>", unk_token="<unk>"
    )


def make_tiny_base(family: str, vocab_size: int, *, quantize: bool = True, seed: int = 0):
    """Return a randomly initialised 2-layer causal LM of ``family`` ('llama' or 'gemma3'), NF4-quantized when asked."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig, LlamaConfig, LlamaForCausalLM

    common = dict(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, max_position_embeddings=1024, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(seed)
    if family == "llama":
        model = LlamaForCausalLM(LlamaConfig(num_key_value_heads=2, **common))
    elif family == "gemma3":
        config = Gemma3TextConfig(num_key_value_heads=1, head_dim=16, query_pre_attn_scalar=16, sliding_window=16,
                                  layer_types=["sliding_attention", "full_attention"], **common)
        model = Gemma3ForCausalLM(config)
    else:
        raise ValueError(family)
    model.config.name_or_path = f"tiny-{family}"
    model.eval()
    if quantize:
        # float32 products keep the tiny models' greedy choices away from bf16 rounding ties.
        model = quantize_model(model, compute_dtype=torch.float32, device="cpu")
    return model
