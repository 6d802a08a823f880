"""train_reader: answer-only loss, learning, checkpoints, resuming after an interruption."""
import pandas as pd
import pyterrier as pt
import pytest
import torch

from pyterrier_gdr.reader import QSTConfig, QSTReader, ReaderTrainingConfig, train_reader
from pyterrier_gdr.reader.model import IGNORE_INDEX
from pyterrier_gdr.reader.training import _collate, build_examples

READER_SETTINGS = dict(num_passages=2, max_new_tokens=8, max_prompt_tokens=160)


def _reader(base, tokenizer):
    return QSTReader.from_base(base, tokenizer=tokenizer, qst=QSTConfig(r=4, seed=0), **READER_SETTINGS)


def _config(**overrides):
    return ReaderTrainingConfig(**{"learning_rate": 1e-2, "batch_size": 2, "max_steps": 4, "save_every": 2, **overrides})


def test_labels_cover_answer_tokens_only(tokenizer, bm25, questions):
    run = bm25(questions[["qid", "query"]])
    examples = build_examples(questions, run, tokenizer=tokenizer, num_passages=2, max_prompt_tokens=160,
                              max_answer_tokens=8, eos_token_id=tokenizer.eos_token_id)
    prompt, answer = examples[0]
    assert tokenizer.decode(answer) == " Paris<eos>"
    assert "Paris is the capital of France." in tokenizer.decode(prompt)

    batch = _collate(examples[:2], tokenizer.pad_token_id, torch.device("cpu"))
    labels = batch["labels"][0]
    labelled = labels != IGNORE_INDEX
    assert labelled.sum() == len(answer)
    assert labels[labelled].tolist() == answer
    assert not labelled[:len(prompt)].any()
    padded_row = 1 if len(examples[1][0]) + len(examples[1][1]) < batch["input_ids"].shape[1] else 0
    assert batch["attention_mask"][padded_row].sum() == sum(len(part) for part in examples[padded_row])


def test_answer_is_cut_but_keeps_eos(tokenizer, questions):
    run = pd.DataFrame(columns=["qid", "docno", "text"])
    examples = build_examples(questions, run, tokenizer=tokenizer, num_passages=2, max_prompt_tokens=160,
                              max_answer_tokens=3, eos_token_id=tokenizer.eos_token_id)
    assert tokenizer.decode(examples[0][1]) == " P<eos>"


def test_training_lowers_loss(llama_base, tokenizer, bm25, questions, tmp_path):
    reader = _reader(llama_base, tokenizer)
    losses = []
    train_reader(reader, questions=questions, retriever=bm25, output_dir=tmp_path / "run",
                 config=_config(max_steps=30, save_every=100, learning_rate=3e-2),
                 callback=lambda step: losses.append(step.loss))
    assert len(losses) == 30
    assert sum(losses[-5:]) / 5 < 0.6 * sum(losses[:5]) / 5


def test_trained_reader_is_saved_and_checkpoint_removed(llama_base, tokenizer, bm25, questions, tmp_path):
    reader = train_reader(_reader(llama_base, tokenizer), questions=questions, retriever=bm25,
                          output_dir=tmp_path / "run", config=_config())
    assert (tmp_path / "run" / "pt_meta.json").exists()
    assert not (tmp_path / "run" / "checkpoint").exists()
    loaded = QSTReader.from_pretrained(tmp_path / "run", base=llama_base, tokenizer=tokenizer)
    topics = questions[["qid", "query"]]
    assert (bm25 >> loaded)(topics)["qanswer"].tolist() == (bm25 >> reader)(topics)["qanswer"].tolist()


class Interrupt(Exception):
    pass


def _interrupt_at(step_number):
    def callback(step):
        if step.step == step_number:
            raise Interrupt()
    return callback


def test_interrupted_training_resumes_to_same_weights(llama_base, tokenizer, bm25, questions, tmp_path):
    uninterrupted = train_reader(_reader(llama_base, tokenizer), questions=questions, retriever=bm25,
                                 output_dir=tmp_path / "full", config=_config())

    with pytest.raises(Interrupt):
        train_reader(_reader(llama_base, tokenizer), questions=questions, retriever=bm25,
                     output_dir=tmp_path / "resumed", config=_config(), callback=_interrupt_at(3))
    assert (tmp_path / "resumed" / "checkpoint").exists()
    assert not (tmp_path / "resumed" / "pt_meta.json").exists()

    steps = []
    resumed = train_reader(_reader(llama_base, tokenizer), questions=questions, retriever=bm25,
                           output_dir=tmp_path / "resumed", config=_config(),
                           callback=lambda step: steps.append(step.step))
    assert steps == [3, 4]
    expected = uninterrupted.model.side_state_dict()
    actual = resumed.model.side_state_dict()
    assert all(torch.equal(expected[name], actual[name]) for name in expected)


def test_unfinished_run_cannot_be_loaded(llama_base, tokenizer, bm25, questions, tmp_path):
    with pytest.raises(Interrupt):
        train_reader(_reader(llama_base, tokenizer), questions=questions, retriever=bm25,
                     output_dir=tmp_path / "run", config=_config(), callback=_interrupt_at(3))
    with pytest.raises(FileNotFoundError, match="unfinished training run"):
        QSTReader.from_pretrained(tmp_path / "run", base=llama_base, tokenizer=tokenizer)


def test_resume_with_other_config_raises(llama_base, tokenizer, bm25, questions, tmp_path):
    with pytest.raises(Interrupt):
        train_reader(_reader(llama_base, tokenizer), questions=questions, retriever=bm25,
                     output_dir=tmp_path / "run", config=_config(), callback=_interrupt_at(3))
    with pytest.raises(ValueError, match="training_config"):
        train_reader(_reader(llama_base, tokenizer), questions=questions, retriever=bm25,
                     output_dir=tmp_path / "run", config=_config(learning_rate=5e-3))


def test_finished_run_is_not_overwritten(llama_base, tokenizer, bm25, questions, tmp_path):
    train_reader(_reader(llama_base, tokenizer), questions=questions, retriever=bm25,
                 output_dir=tmp_path / "run", config=_config(max_steps=1))
    with pytest.raises(FileExistsError, match="overwrite=True"):
        train_reader(_reader(llama_base, tokenizer), questions=questions, retriever=bm25,
                     output_dir=tmp_path / "run", config=_config(max_steps=1))
    train_reader(_reader(llama_base, tokenizer), questions=questions, retriever=bm25,
                 output_dir=tmp_path / "run", config=_config(max_steps=1), overwrite=True)


def test_base_reader_cannot_train(llama_base, tokenizer, bm25, questions, tmp_path):
    reader = QSTReader.from_base(llama_base, tokenizer=tokenizer)
    with pytest.raises(ValueError, match="no side network"):
        train_reader(reader, questions=questions, retriever=bm25, output_dir=tmp_path / "run", config=_config())


def test_retriever_without_text_raises(llama_base, tokenizer, bm25, questions, tmp_path):
    no_text = bm25 >> pt.apply.generic(lambda frame: frame.drop(columns=["text"]))
    with pytest.raises(ValueError, match="no 'text' column"):
        train_reader(_reader(llama_base, tokenizer), questions=questions, retriever=no_text,
                     output_dir=tmp_path / "run", config=_config())


def test_questions_without_answers_raise(llama_base, tokenizer, bm25, questions, tmp_path):
    questions["answers"] = [[] for _ in range(len(questions))]
    with pytest.raises(ValueError, match="no training question has an answer"):
        train_reader(_reader(llama_base, tokenizer), questions=questions, retriever=bm25,
                     output_dir=tmp_path / "run", config=_config())


@pytest.mark.parametrize("kwargs, message", [
    ({"batch_size": 0}, "batch_size must be a positive integer"),
    ({"learning_rate": 0.0}, "learning_rate must be positive"),
    ({"lr_schedule": "cosine"}, "lr_schedule='cosine' is invalid"),
    ({"max_steps": -1}, "max_steps must be a positive integer"),
])
def test_training_config_rejects_invalid_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ReaderTrainingConfig(**kwargs)
