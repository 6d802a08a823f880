"""Greedy decoding: cached steps match full forwards, batching and transformers' own generate."""
import pytest
import torch

from pyterrier_gdr.reader import QSTConfig, QSTModel, greedy_generate
from pyterrier_gdr.reader.prompts import encode_prompt

PROMPTS = [
    ("capital of France", [("France", "Paris is the capital of France.")]),
    ("which river flows through Paris?", [(None, "The Seine flows through Paris."), (None, "Rome is in Italy.")]),
]


@pytest.fixture
def perturbed_qst(tiny_base):
    """A QST model whose side network visibly changes the output, as after training."""
    model = QSTModel(tiny_base, qst=QSTConfig(r=4))
    with torch.no_grad():
        model.side.alpha.fill_(0.5)
        model.side.gate.normal_(generator=torch.Generator().manual_seed(0))
    return model


def _prompt_ids(tokenizer):
    return [encode_prompt(tokenizer, query, passages, max_prompt_tokens=200) for query, passages in PROMPTS]


def test_cached_decoding_matches_full_forward(perturbed_qst, tokenizer):
    prompt = _prompt_ids(tokenizer)[0]
    generated = greedy_generate(perturbed_qst, [prompt], max_new_tokens=8, pad_token_id=0, stop_token_ids=[2])[0]
    assert len(generated) > 0
    with torch.no_grad():
        logits = perturbed_qst(torch.tensor([prompt + generated])).logits[0]
    recomputed = [int(logits[len(prompt) - 1 + i].argmax()) for i in range(len(generated))]
    assert recomputed == generated


def test_batched_decoding_matches_single(perturbed_qst, tokenizer):
    prompts = _prompt_ids(tokenizer)
    assert len(prompts[0]) != len(prompts[1])  # so the batch needs left padding
    batched = greedy_generate(perturbed_qst, prompts, max_new_tokens=8, pad_token_id=0, stop_token_ids=[2])
    single = [greedy_generate(perturbed_qst, [prompt], max_new_tokens=8, pad_token_id=0, stop_token_ids=[2])[0]
              for prompt in prompts]
    assert batched == single


def test_base_decoding_matches_transformers_generate(tiny_base, tokenizer):
    prompt = _prompt_ids(tokenizer)[1]
    ours = greedy_generate(QSTModel(tiny_base), [prompt], max_new_tokens=6, pad_token_id=0, stop_token_ids=[2])[0]
    theirs = tiny_base.generate(torch.tensor([prompt]), max_new_tokens=6, do_sample=False,
                                pad_token_id=0, eos_token_id=2)[0, len(prompt):].tolist()
    theirs = theirs[:theirs.index(2)] if 2 in theirs else theirs
    assert ours == theirs


def test_decoding_stops_at_stop_token(perturbed_qst, tokenizer):
    prompt = _prompt_ids(tokenizer)[0]
    free = greedy_generate(perturbed_qst, [prompt], max_new_tokens=5, pad_token_id=0, stop_token_ids=[2])[0]
    stopped = greedy_generate(perturbed_qst, [prompt], max_new_tokens=5, pad_token_id=0, stop_token_ids=[free[2]])[0]
    assert stopped == free[:free.index(free[2])]


def test_decoding_respects_max_new_tokens(perturbed_qst, tokenizer):
    outputs = greedy_generate(perturbed_qst, _prompt_ids(tokenizer), max_new_tokens=3, pad_token_id=0, stop_token_ids=[2])
    assert all(len(tokens) <= 3 for tokens in outputs)


def test_prompt_is_cut_to_limit(tokenizer):
    passages = [(None, "x" * 500), (None, "y" * 500)]
    prompt = encode_prompt(tokenizer, "a question", passages, max_prompt_tokens=150)
    text = tokenizer.decode(prompt, skip_special_tokens=True)
    assert len(prompt) == 150
    assert prompt[0] == tokenizer.bos_token_id
    assert text.endswith("Question: a question\nAnswer:")
    assert "Passage 1: xxx" in text
    assert "yyy" not in text


def test_prompt_keeps_question_when_limit_is_tiny(tokenizer):
    prompt = encode_prompt(tokenizer, "a question", [(None, "passage")], max_prompt_tokens=20)
    assert len(prompt) == 20
    assert tokenizer.decode(prompt, skip_special_tokens=True).endswith("Answer:")
