"""4-bit base loading: quantize_model, load_base, the full-precision fallback and base fingerprints."""
import warnings

import pytest
import torch

import pyterrier_gdr.reader.quantized_base as quantized_base
from pyterrier_gdr.reader import base_fingerprint, is_quantized, load_base, quantize_model


def test_quantize_model_uses_nf4_double_quant(tokenizer, make_base):
    import bitsandbytes as bnb

    model = make_base("llama", len(tokenizer), quantize=False)
    quantize_model(model, compute_dtype=torch.float32, device="cpu")
    linear4bit = [module for module in model.modules() if isinstance(module, bnb.nn.Linear4bit)]
    assert len(linear4bit) == 2 * 7  # q, k, v, o, gate, up, down per layer
    state = linear4bit[0].weight.quant_state
    assert state.quant_type == "nf4"
    assert state.nested  # double quantization of the block scales
    assert linear4bit[0].compute_dtype == torch.float32


def test_quantize_model_keeps_lm_head(tokenizer, make_base):
    model = make_base("gemma3", len(tokenizer), quantize=False)
    quantize_model(model, compute_dtype=torch.float32, device="cpu")
    assert type(model.lm_head) is torch.nn.Linear
    assert not any(parameter.requires_grad for parameter in model.parameters())
    assert is_quantized(model)


def test_quantized_logits_stay_close_to_full_precision(tokenizer, make_base):
    full = make_base("llama", len(tokenizer), quantize=False)
    quantized = make_base("llama", len(tokenizer), quantize=True)
    input_ids = torch.randint(4, len(tokenizer), (1, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = full(input_ids).logits
        actual = quantized(input_ids).logits
    assert not torch.equal(actual, expected)
    assert torch.allclose(actual, expected, atol=0.1)


def test_quantize_falls_back_to_full_precision_with_warning(tokenizer, make_base, monkeypatch):
    monkeypatch.setattr(quantized_base, "is_available", lambda module: False)
    model = make_base("llama", len(tokenizer), quantize=False)
    with pytest.warns(UserWarning, match="bitsandbytes is not installed"):
        quantize_model(model, compute_dtype=torch.float32, device="cpu")
    assert type(model.model.layers[0].self_attn.q_proj) is torch.nn.Linear


@pytest.fixture(scope="module")
def saved_tiny_llama(tmp_path_factory, tokenizer, make_base):
    directory = tmp_path_factory.mktemp("tiny-llama")
    make_base("llama", len(tokenizer), quantize=False).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def test_load_base_from_directory_in_4bit(saved_tiny_llama):
    model, loaded_tokenizer = load_base(str(saved_tiny_llama), compute_dtype="float32", device="cpu")
    assert is_quantized(model)
    assert not model.training
    assert not any(parameter.requires_grad for parameter in model.parameters())
    assert loaded_tokenizer.eos_token == "<eos>"


def test_load_base_full_precision(saved_tiny_llama):
    model, _ = load_base(str(saved_tiny_llama), quantize=False, compute_dtype="float32", device="cpu")
    assert not is_quantized(model)


def test_load_base_missing_directory_raises(tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(FileNotFoundError, match="was not found"):
        load_base(str(missing), device="cpu")


def test_load_base_unknown_hub_name_offline_raises(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OSError, match="could not be loaded"):
        load_base("no-such-org/no-such-model", device="cpu")


def test_load_base_rejects_bad_dtype(saved_tiny_llama):
    with pytest.raises(ValueError, match="not a floating-point torch dtype"):
        load_base(str(saved_tiny_llama), compute_dtype="int8", device="cpu")


def test_fingerprint_ignores_dtype_and_quantization(tokenizer, make_base):
    full = make_base("llama", len(tokenizer), quantize=False)
    quantized = make_base("llama", len(tokenizer), quantize=True)
    assert base_fingerprint(full) == base_fingerprint(quantized)
    assert base_fingerprint(full) == base_fingerprint(full.to(torch.bfloat16))


def test_fingerprint_differs_for_other_weights(tokenizer, make_base):
    first = make_base("llama", len(tokenizer), quantize=False, seed=0)
    second = make_base("llama", len(tokenizer), quantize=False, seed=1)
    assert base_fingerprint(first)["embedding_sha256"] != base_fingerprint(second)["embedding_sha256"]


def test_default_compute_dtype_on_cpu_is_a_float_dtype():
    with warnings.catch_warnings():
        dtype = quantized_base.default_compute_dtype("cpu")
    assert dtype in (torch.bfloat16, torch.float32)
