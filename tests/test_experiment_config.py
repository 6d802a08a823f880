import textwrap

import pytest

from pyterrier_gdr.experiment import ExperimentError, load_experiment, parse_experiment

VALID = {
    "name": "t",
    "dataset": {"corpus": "irds:pyterrier-gdr/wiki-slice", "dev": "irds:pyterrier-gdr/wiki-slice/dev", "test": "irds:pyterrier-gdr/wiki-slice/test"},
    "gdr": {"training": {"pseudo_queries_per_doc": 2}},
    "evaluation": {"measures": ["R@100", "AnswerAcc@20"], "baseline": "BM25"},
    "pipeline": [
        {"name": "BM25", "run": "bm25"},
        {"name": "GDR", "run": "generator >> ranker", "params": {"alpha": 0.5}, "tune": {"num_clusters": [5, 10]}},
    ],
}


def with_changes(**changes):
    document = {key: (dict(value) if isinstance(value, dict) else value) for key, value in VALID.items()}
    document["pipeline"] = [dict(p) for p in VALID["pipeline"]]
    document.update(changes)
    return document


def test_valid_file_parses():
    config = parse_experiment(VALID)
    assert [p.name for p in config.pipelines] == ["BM25", "GDR"]
    assert config.pipelines[1].components == ["generator", "ranker"]
    assert config.pipelines[1].params["ranker"] == {"alpha": 0.5}
    assert config.pipelines[1].tune == {"generator": {"num_clusters": [5, 10]}}
    assert config.needed_indexes() == {"bm25", "gdr"}


def test_misspelt_component():
    document = with_changes(pipeline=[{"name": "GDR", "run": "genrator >> ranker"}])
    with pytest.raises(ExperimentError, match="unknown component 'genrator' \\(did you mean 'generator'\\?\\); valid: bm25, dense"):
        parse_experiment(document)


def test_missing_pipeline():
    with pytest.raises(ExperimentError, match="defines no \\[\\[pipeline\\]\\]"):
        parse_experiment(with_changes(pipeline=[]))


def test_pipeline_without_run():
    with pytest.raises(ExperimentError, match="has no 'run'"):
        parse_experiment(with_changes(pipeline=[{"name": "x"}]))


def test_unknown_measure():
    document = with_changes(evaluation={"measures": ["R@100", "Recal@10"]})
    with pytest.raises(ExperimentError, match="unknown measure 'Recal@10'"):
        parse_experiment(document)


def test_bad_answer_measure():
    document = with_changes(evaluation={"measures": ["AnswerAcc@0"]})
    with pytest.raises(ExperimentError, match="unknown answer measure 'AnswerAcc@0'"):
        parse_experiment(document)


def test_unknown_baseline():
    document = with_changes(evaluation={"measures": ["R@100"], "baseline": "bm25"})
    with pytest.raises(ExperimentError, match="baseline = 'bm25' is not a pipeline name \\(did you mean 'BM25'\\?\\)"):
        parse_experiment(document)


def test_unknown_parameter():
    document = with_changes(pipeline=[{"name": "GDR", "run": "generator >> ranker", "params": {"alpah": 1}}])
    with pytest.raises(ExperimentError, match="takes params key 'alpah' \\(did you mean 'alpha'\\?\\)"):
        parse_experiment(document)


def test_ambiguous_parameter_needs_component():
    document = with_changes(pipeline=[{"name": "x", "run": "bm25 >> ranker", "params": {"num_results": 10}}])
    with pytest.raises(ExperimentError, match="fits bm25, ranker; write e.g. ranker.num_results"):
        parse_experiment(document)


def test_qualified_parameter():
    document = with_changes(pipeline=[{"name": "BM25", "run": "bm25 >> ranker", "params": {"bm25.num_results": 50}}])
    assert parse_experiment(document).pipelines[0].params["bm25"] == {"num_results": 50}


def test_generator_precision_parameter():
    # The pipeline is named BM25 because VALID's [evaluation] names BM25 as the baseline.
    document = with_changes(pipeline=[{"name": "BM25", "run": "generator >> ranker", "params": {"precision": "bfloat16"}}])
    assert parse_experiment(document).pipelines[0].params["generator"] == {"precision": "bfloat16"}


@pytest.mark.parametrize("section,key,value,message", [
    ("params", "precision", "bf16", "generator.precision = 'bf16' is invalid \\(did you mean 'bfloat16'\\?\\); valid: float32, bfloat16, float16 \\(float32 is exact; float16 is faster only on GPUs\\)"),
    ("tune", "fusion", ["log_prob", "papers"], "ranker.fusion = 'papers' is invalid \\(did you mean 'paper'\\?\\); valid: log_prob, paper"),
])
def test_choices_checked_when_read(section, key, value, message):
    document = with_changes(pipeline=[{"name": "BM25", "run": "generator >> ranker", section: {key: value}}])
    with pytest.raises(ExperimentError, match=message):
        parse_experiment(document)


def test_unquoted_dotted_key_names_component(tmp_path):
    path = tmp_path / "exp.toml"
    path.write_text(textwrap.dedent("""
        [dataset]
        corpus = "irds:pyterrier-gdr/wiki-slice"
        test = "irds:pyterrier-gdr/wiki-slice/test"
        [[pipeline]]
        run = "generator >> ranker"
        params = { generator.precision = "bfloat16", ranker.alpha = 0.5 }
    """))
    assert load_experiment(path).pipelines[0].params == {"generator": {"precision": "bfloat16"}, "ranker": {"alpha": 0.5}}


def test_choices_match_transformers():
    from pyterrier_gdr.decoding import DECODER_DTYPES
    from pyterrier_gdr.experiment.config import CHOICES
    from pyterrier_gdr.ranker import _FUSIONS

    assert CHOICES[("generator", "precision")] == tuple(DECODER_DTYPES)
    assert set(CHOICES[("ranker", "fusion")]) == set(_FUSIONS)


def test_tune_needs_dev_split():
    document = with_changes(dataset={"corpus": "irds:pyterrier-gdr/wiki-slice", "test": "irds:pyterrier-gdr/wiki-slice/test"})
    with pytest.raises(ExperimentError, match="no 'dev' split"):
        parse_experiment(document)


def test_gdr_needs_training_queries():
    document = with_changes(gdr={"training": {"pseudo_queries_per_doc": 0}})
    with pytest.raises(ExperimentError, match="GDR needs training queries"):
        parse_experiment(document)


def test_invalid_training_setting():
    document = with_changes(gdr={"training": {"epochs": -1}})
    with pytest.raises(ExperimentError, match="epochs=-1 is invalid"):
        parse_experiment(document)


def test_unknown_training_setting():
    document = with_changes(gdr={"training": {"epoch": 2}})
    with pytest.raises(ExperimentError, match="unknown training settings \\['epoch'\\]"):
        parse_experiment(document)


def test_unknown_top_level_key():
    with pytest.raises(ExperimentError, match="unknown top-level keys \\['pipelines'\\]"):
        parse_experiment(with_changes(pipelines=[]))


def test_duplicate_pipeline_names():
    document = with_changes(pipeline=[{"name": "A", "run": "bm25"}, {"name": "A", "run": "dense"}])
    with pytest.raises(ExperimentError, match="repeated: \\['A'\\]"):
        parse_experiment(document)


def test_load_reports_toml_errors(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("name = \n")
    with pytest.raises(ExperimentError, match="not valid TOML"):
        load_experiment(path)


def test_load_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        load_experiment(tmp_path / "missing.toml")


def test_local_paths_resolve_against_file(tmp_path):
    (tmp_path / "data").mkdir()
    for name in ("docs.jsonl", "q.jsonl", "qrels.txt"):
        (tmp_path / "data" / name).write_text("")
    path = tmp_path / "exp.toml"
    path.write_text(textwrap.dedent("""
        [dataset]
        corpus = "data/docs.jsonl"
        test = { questions = "data/q.jsonl", qrels = "data/qrels.txt" }
        [[pipeline]]
        run = "bm25"
    """))
    config = load_experiment(path)
    assert config.corpus == str(tmp_path / "data" / "docs.jsonl")
    assert config.test["questions"] == str(tmp_path / "data" / "q.jsonl")
    assert config.test["qrels"] == str(tmp_path / "data" / "qrels.txt")


def test_examples_parse():
    from pathlib import Path

    root = Path(__file__).parent.parent
    for path in sorted(root.glob("examples/*.toml")) + sorted(root.glob("benchmarks/*.toml")):
        config = load_experiment(path)
        assert config.pipelines, path


def test_unknown_dataset_id():
    document = with_changes(dataset={"corpus": "irds:pyterrier-gdr/wiki", "test": "irds:pyterrier-gdr/wiki-slice/test"})
    with pytest.raises(ExperimentError, match="\\[dataset\\].corpus: unknown ir_datasets id 'irds:pyterrier-gdr/wiki'"):
        parse_experiment(document)


def test_missing_local_file(tmp_path):
    document = with_changes(dataset={"corpus": str(tmp_path / "none.jsonl"), "test": "irds:pyterrier-gdr/wiki-slice/test"})
    with pytest.raises(ExperimentError, match="none.jsonl' not found"):
        parse_experiment(document)
