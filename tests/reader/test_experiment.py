"""Reader pipelines in an experiment file: BM25 >> base reader and BM25 >> QST reader, scored by EM and F1."""
import json
import textwrap

import pandas as pd
import pytest

from pyterrier_gdr.cli import main
from pyterrier_gdr.experiment import ExperimentError, parse_experiment
from tiny_models import PASSAGES, QUESTIONS, make_char_tokenizer, make_tiny_base


@pytest.fixture(scope="module")
def experiment_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("reader-experiment")
    tokenizer = make_char_tokenizer()
    base = make_tiny_base("llama", len(tokenizer), quantize=False)
    base.save_pretrained(folder / "tiny-llama")
    tokenizer.save_pretrained(folder / "tiny-llama")
    with open(folder / "docs.jsonl", "w", encoding="utf-8") as fout:
        for row in PASSAGES.itertuples():
            fout.write(json.dumps({"docno": row.docno, "title": row.title, "text": row.text}) + "\n")
    with open(folder / "questions.jsonl", "w", encoding="utf-8") as fout:
        for row in QUESTIONS.itertuples():
            fout.write(json.dumps({"qid": row.qid, "question": row.query, "answers": list(row.answers)}) + "\n")
    (folder / "exp.toml").write_text(textwrap.dedent("""
        name = "tiny-reader"
        [dataset]
        corpus = "docs.jsonl"
        test = "questions.jsonl"
        [reader]
        base = "tiny-llama"
        quantize = false
        train_corpus = "docs.jsonl"
        train_questions = "questions.jsonl"
        train_retriever_results = 3
        [reader.training]
        max_steps = 2
        batch_size = 2
        [evaluation]
        measures = ["EM", "F1"]
        baseline = "BM25 >> base"
        [[pipeline]]
        name = "BM25 >> base"
        run = "bm25 >> base_reader"
        params = { num_results = 3, max_new_tokens = 4, num_passages = 2 }
        [[pipeline]]
        name = "BM25 >> QST"
        run = "bm25 >> reader"
        params = { num_results = 3, max_new_tokens = 4, num_passages = 2 }
    """).replace('base = "tiny-llama"', f'base = "{folder / "tiny-llama"}"'))
    return folder


def run(folder):
    return main(["experiment", str(folder / "exp.toml"), "--output", str(folder / "out"), "--cache", str(folder / "cache"), "--quiet"])


def test_reader_experiment_scores_answers(experiment_folder):
    assert run(experiment_folder) == 0
    table = pd.read_csv(experiment_folder / "out" / "results.csv").set_index("name")
    assert list(table.index) == ["BM25 >> base", "BM25 >> QST"]
    assert table["EM"].between(0, 1).all()
    assert table["F1"].between(0, 1).all()
    assert (table["F1"] >= table["EM"]).all()


def test_reader_experiment_plots_answers(experiment_folder):
    output = experiment_folder / "out"
    if not (output / "results.csv").exists():
        assert run(experiment_folder) == 0
    # Reader runs rank no passages, so there is no top-k accuracy curve.
    assert (output / "answers.png").stat().st_size > 0
    assert not (output / "answer_accuracy.png").exists()


def test_reader_experiment_saves_answers(experiment_folder):
    output = experiment_folder / "out"
    if not (output / "results.csv").exists():
        assert run(experiment_folder) == 0
    answers = pd.read_json(output / "runs" / "BM25_base.answers.jsonl", lines=True, dtype={"qid": str})
    assert list(answers.columns) == ["qid", "query", "qanswer"]
    assert sorted(answers["qid"]) == sorted(QUESTIONS["qid"].astype(str))


def test_trained_reader_reused(experiment_folder):
    saved = sorted((experiment_folder / "cache" / "readers").glob("qst-*/pt_meta.json"))
    assert len(saved) == 1
    stamp = saved[0].stat().st_mtime_ns
    assert run(experiment_folder) == 0
    assert saved[0].stat().st_mtime_ns == stamp


BASE = {
    "dataset": {"corpus": "irds:pyterrier-gdr/wiki-slice", "test": "irds:pyterrier-gdr/wiki-slice/test"},
    "evaluation": {"measures": ["EM", "F1"]},
}


def test_reader_must_end_pipeline():
    document = {**BASE, "pipeline": [{"name": "x", "run": "bm25 >> base_reader >> ranker"}]}
    with pytest.raises(ExperimentError, match="a reader must be the last component"):
        parse_experiment(document)


def test_reader_and_retrieval_pipelines_not_mixed():
    document = {**BASE, "pipeline": [{"name": "a", "run": "bm25 >> base_reader"}, {"name": "b", "run": "bm25"}]}
    with pytest.raises(ExperimentError, match="separate experiment files"):
        parse_experiment(document)


def test_reader_measures_only_em_f1():
    document = {**BASE, "evaluation": {"measures": ["EM", "R@10"]}, "pipeline": [{"name": "a", "run": "bm25 >> base_reader"}]}
    with pytest.raises(ExperimentError, match="EM and F1 only"):
        parse_experiment(document)


def test_em_needs_reader():
    document = {**BASE, "pipeline": [{"name": "a", "run": "bm25"}]}
    with pytest.raises(ExperimentError, match="end the pipelines with 'reader'"):
        parse_experiment(document)


def test_qst_reader_needs_training_data():
    document = {**BASE, "pipeline": [{"name": "a", "run": "bm25 >> reader"}]}
    with pytest.raises(ExperimentError, match="needs \\[reader\\] train_corpus and train_questions"):
        parse_experiment(document)
