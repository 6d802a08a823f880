"""A small experiment from a TOML file, through the command line, on real passages and questions."""
import json
import logging
import textwrap

import pandas as pd
import pytest

from pyterrier_gdr.cli import main


@pytest.fixture(scope="module")
def experiment_file(tmp_path_factory, squad_slice):
    docs, train, dev, test = squad_slice
    folder = tmp_path_factory.mktemp("experiment")

    def write_questions(path, split, limit):
        topics, qrels, answers = split
        with open(path, "w", encoding="utf-8") as fout:
            for row in topics.head(limit).itertuples():
                relevant = qrels[qrels["qid"] == row.qid]["docno"].tolist()
                fout.write(json.dumps({"qid": row.qid, "question": row.query, "answers": answers[row.qid], "relevant": relevant}) + "\n")

    with open(folder / "docs.jsonl", "w", encoding="utf-8") as fout:
        for doc in docs:
            text = doc["text"][len(doc["title"]) + 2:]  # the fixture prefixed the title; store it apart
            fout.write(json.dumps({"docno": doc["docno"], "title": doc["title"], "text": text}) + "\n")
    write_questions(folder / "train.jsonl", train, 200)
    write_questions(folder / "dev.jsonl", dev, 20)
    write_questions(folder / "test.jsonl", test, 30)
    (folder / "exp.toml").write_text(textwrap.dedent("""
        name = "tiny"
        [dataset]
        corpus = "docs.jsonl"
        train = "train.jsonl"
        dev = "dev.jsonl"
        test = "test.jsonl"
        [gdr.tree]
        branching_factor = 8
        leaf_size = 10
        adaptive = true
        [gdr.training]
        max_steps = 6
        batch_size = 16
        pseudo_queries_per_doc = 1
        [evaluation]
        measures = ["R@10", "RR@10", "AnswerAcc@1", "AnswerAcc@5"]
        baseline = "BM25"
        tune_measure = "R@10"
        [[pipeline]]
        name = "BM25"
        run = "bm25"
        params = { num_results = 20 }
        [[pipeline]]
        name = "Dense"
        run = "dense"
        params = { num_results = 20 }
        [[pipeline]]
        name = "GDR"
        run = "generator >> ranker"
        params = { num_clusters = 3 }
        tune = { alpha = [0.0, 1.0] }
        [[pipeline]]
        name = "GDR, centroid routing"
        run = "centroid >> ranker"
        params = { num_clusters = 3 }
        [[pipeline]]
        name = "BM25 >> GDR ranker"
        run = "bm25 >> ranker"
        params = { "bm25.num_results" = 20 }
    """))
    return folder


@pytest.fixture(scope="module")
def first_run(experiment_file):
    output, cache = experiment_file / "out", experiment_file / "cache"
    code = main(["experiment", str(experiment_file / "exp.toml"), "--output", str(output), "--cache", str(cache), "--quiet"])
    return code, output, cache


def test_experiment_succeeds(first_run):
    assert first_run[0] == 0


def test_results_table(first_run):
    table = pd.read_csv(first_run[1] / "results.csv")
    assert table["name"].tolist() == ["BM25", "Dense", "GDR", "GDR, centroid routing", "BM25 >> GDR ranker"]
    for column in ("R@10", "RR@10", "AnswerAcc@1", "AnswerAcc@5", "mrt (ms)", "docs scored/q"):
        assert column in table.columns
    assert table["R@10"].between(0, 1).all()
    assert (table["AnswerAcc@5"] >= table["AnswerAcc@1"]).all()


def test_documents_scored(first_run, squad_slice):
    table = pd.read_csv(first_run[1] / "results.csv").set_index("name")
    assert table.loc["Dense", "docs scored/q"] == len(squad_slice[0])
    assert table.loc["BM25 >> GDR ranker", "docs scored/q"] <= 20
    assert 0 < table.loc["GDR", "docs scored/q"] <= 30
    assert pd.isna(table.loc["BM25", "docs scored/q"])


def test_report_files(first_run):
    output = first_run[1]
    for name in ("results.md", "tuning.json", "answer_accuracy.png", "cost.png", "runs/BM25.res.gz", "runs/GDR.res.gz"):
        assert (output / name).exists(), name
    tuned = json.loads((output / "tuning.json").read_text())
    assert tuned["GDR"]["ranker"]["alpha"] in (0.0, 1.0)
    assert "| GDR " in (output / "results.md").read_text()


def test_rerun_reuses_cache(first_run, experiment_file, caplog):
    _, output, cache = first_run
    model_files = sorted(cache.glob("*/gdr-*/model/gdr_model.json"))
    assert len(model_files) == 1
    stamp = model_files[0].stat().st_mtime_ns
    with caplog.at_level(logging.INFO):
        code = main(["experiment", str(experiment_file / "exp.toml"), "--output", str(output), "--cache", str(cache), "--quiet"])
    assert code == 0
    assert model_files[0].stat().st_mtime_ns == stamp
    messages = " ".join(record.getMessage() for record in caplog.records)
    assert "training the GDR model" not in messages
    assert "encoding the corpus" not in messages
    assert "building the BM25 index" not in messages
    assert f"using the GDR index at {model_files[0].parent.parent}" in messages


def test_decoder_precisions_from_cache(first_run, experiment_file):
    """Two GDR pipelines that differ in decoder precision, the second written with an unquoted dotted key."""
    _, _, cache = first_run
    settings = (experiment_file / "exp.toml").read_text().split("[evaluation]")[0]
    (experiment_file / "precision.toml").write_text(settings + textwrap.dedent("""
        [evaluation]
        measures = ["R@10"]
        baseline = "GDR"
        [[pipeline]]
        name = "GDR"
        run = "generator >> ranker"
        params = { num_clusters = 3 }
        [[pipeline]]
        name = "GDR, bfloat16"
        run = "generator >> ranker"
        params = { num_clusters = 3, generator.precision = "bfloat16" }
    """))
    output = experiment_file / "precision-out"
    code = main(["experiment", str(experiment_file / "precision.toml"), "--output", str(output), "--cache", str(cache), "--quiet"])
    assert code == 0
    report = (output / "results.md").read_text()
    assert "| GDR, bfloat16 " in report
    assert "PISA" not in report  # no BM25 pipeline, so no note about BM25's cost
    assert "n/a for BM25, whose work PISA does not report" in (first_run[1] / "results.md").read_text()


def test_bad_file_reports_error(tmp_path, capsys):
    path = tmp_path / "bad.toml"
    path.write_text('[dataset]\ncorpus = "irds:pyterrier-gdr/squad"\ntest = "irds:pyterrier-gdr/squad-dev/test"\n[[pipeline]]\nrun = "bm25"\n')
    code = main(["experiment", str(path), "--output", str(tmp_path / "o"), "--cache", str(tmp_path / "c")])
    assert code == 2
    assert "unknown ir_datasets id 'irds:pyterrier-gdr/squad'" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
