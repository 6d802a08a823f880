"""The ``reader train`` command: argument parsing, input files, BM25 over a JSONL corpus, a saved reader."""
import argparse
import gzip
import json

import pytest
import torch

from pyterrier_gdr.reader import QSTReader
from pyterrier_gdr.reader.cli import register
from pyterrier_gdr.reader.inputs import read_questions

from tiny_models import PASSAGES, QUESTIONS


def _parser():
    parser = argparse.ArgumentParser(prog="pyterrier-gdr")
    register(parser.add_subparsers(dest="command"))
    return parser


def _write_jsonl(path, rows):
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wt", encoding="utf-8") as fout:
        for row in rows:
            fout.write(json.dumps(row) + "\n")
    return path


@pytest.fixture
def inputs(tmp_path, tokenizer, make_base):
    model_dir = tmp_path / "tiny-llama"
    make_base("llama", len(tokenizer), quantize=False).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    questions = [{"qid": row.qid, "question": row.query, "answers": row.answers, "split": "train" if i < 3 else "test"}
                 for i, row in enumerate(QUESTIONS.itertuples())]
    return {
        "model": model_dir,
        "questions": _write_jsonl(tmp_path / "questions.jsonl", questions),
        "corpus": _write_jsonl(tmp_path / "passages.jsonl.gz", PASSAGES.to_dict("records")),
    }


def test_reader_train_command_saves_reader(inputs, tmp_path, tokenizer):
    output = tmp_path / "reader"
    args = _parser().parse_args([
        "reader", "train", "--base", str(inputs["model"]), "--questions", str(inputs["questions"]),
        "--split", "train", "--corpus", str(inputs["corpus"]), "--output", str(output),
        "--num-passages", "2", "--max-prompt-tokens", "160", "--max-new-tokens", "4", "--side-r", "4",
        "--max-steps", "2", "--batch-size", "2", "--compute-dtype", "float32", "--device", "cpu", "--quiet",
    ])
    assert args.func(args) == 0
    assert (tmp_path / "reader-bm25").is_dir()  # the default PISA index directory

    reader = QSTReader.from_pretrained(output, device="cpu")
    assert reader.model.base.lm_head.weight.dtype == torch.float32  # the saved compute dtype
    assert reader.num_passages == 2
    assert reader.max_new_tokens == 4
    assert reader.model.qst_config.r == 4
    with open(output / "reader.json", encoding="utf-8") as fin:
        saved = json.load(fin)
    assert saved["training"]["steps"] == 2
    assert saved["training"]["examples"] == 3


def test_reader_train_rejects_invalid_config(inputs, tmp_path):
    args = _parser().parse_args([
        "reader", "train", "--base", str(inputs["model"]), "--questions", str(inputs["questions"]),
        "--corpus", str(inputs["corpus"]), "--output", str(tmp_path / "reader"), "--batch-size", "0",
    ])
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        args.func(args)


def test_reader_train_requires_base():
    with pytest.raises(SystemExit):
        _parser().parse_args(["reader", "train", "--questions", "q.jsonl", "--corpus", "c.jsonl", "--output", "out"])


def test_read_questions_renames_question_and_filters_split(inputs):
    frame = read_questions(str(inputs["questions"]), split="test")
    assert list(frame.columns) == ["qid", "query", "answers"]
    assert frame["qid"].tolist() == ["q4"]
    assert frame["answers"].iloc[0] == ["Madrid", "Madrid, Spain"]


def test_read_questions_errors(inputs, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_questions(str(tmp_path / "missing.jsonl"))
    with pytest.raises(ValueError, match="no question of"):
        read_questions(str(inputs["questions"]), split="dev")
    no_answers = _write_jsonl(tmp_path / "bad.jsonl", [{"qid": "q1", "question": "x"}])
    with pytest.raises(ValueError, match=r"lacks the fields \['answers'\]"):
        read_questions(str(no_answers))
