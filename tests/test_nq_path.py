"""The NQ ids run through the same code as the bundled sets, when ir_datasets finds their files.

ir_datasets reads dpr-w100 offline from ``$IR_DATASETS_HOME/dpr-w100/`` (``docs.tsv.gz``,
``nq-dev.json.gz``). The test writes tiny files of the same format there and runs an
experiment on ``irds:dpr-w100`` in a fresh process, so the environment variable applies.
"""
import gzip
import json
import os
import subprocess
import sys
import textwrap

import pandas as pd
import pytest

pytestmark = pytest.mark.slow

PASSAGES = [
    ("1", "Paris is the capital and largest city of France.", "Paris"),
    ("2", "Berlin is the capital of Germany and its largest city.", "Berlin"),
    ("3", "The Eiffel Tower in Paris was built in 1889 for a world's fair.", "Eiffel Tower"),
    ("4", "Mount Everest is the highest mountain on Earth above sea level.", "Mount Everest"),
    ("5", "The Danube flows through Vienna, Budapest and Belgrade.", "Danube"),
    ("6", "Jupiter is the largest planet in the Solar System.", "Jupiter"),
]
QUESTIONS = [
    ("what is the capital of france", ["Paris"], "1"),
    ("when was the eiffel tower built", ["1889"], "3"),
    ("what is the highest mountain on earth", ["Mount Everest"], "4"),
    ("which is the largest planet", ["Jupiter"], "6"),
]


def write_dpr_files(home):
    folder = home / "dpr-w100"
    folder.mkdir(parents=True)
    with gzip.open(folder / "docs.tsv.gz", "wt", encoding="utf-8") as fout:
        fout.write("id\ttext\ttitle\n")
        for passage in PASSAGES:
            fout.write("\t".join(passage) + "\n")
    records = [
        {"question": q, "answers": a, "positive_ctxs": [{"passage_id": p, "title": "", "text": "", "score": 1000, "title_score": 1}],
         "negative_ctxs": [], "hard_negative_ctxs": []}
        for q, a, p in QUESTIONS
    ]
    with gzip.open(folder / "nq-dev.json.gz", "wt", encoding="utf-8") as fout:
        json.dump(records, fout)


def test_nq_experiment_with_local_files(tmp_path):
    write_dpr_files(tmp_path / "irds")
    (tmp_path / "nq.toml").write_text(textwrap.dedent("""
        name = "nq-shaped"
        [dataset]
        corpus = "irds:dpr-w100"
        test = { id = "irds:dpr-w100/natural-questions/dev", start = 1 }
        [gdr.tree]
        branching_factor = 2
        leaf_size = 2
        [gdr.training]
        max_steps = 2
        batch_size = 4
        pseudo_queries_per_doc = 1
        [evaluation]
        measures = ["R@5", "AnswerAcc@1", "AnswerAcc@5"]
        [[pipeline]]
        name = "BM25"
        run = "bm25"
        [[pipeline]]
        name = "GDR"
        run = "generator >> ranker"
        params = { num_clusters = 2 }
    """))
    environment = {**os.environ, "IR_DATASETS_HOME": str(tmp_path / "irds"), "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "pyterrier_gdr.cli", "experiment", str(tmp_path / "nq.toml"),
               "--output", str(tmp_path / "out"), "--cache", str(tmp_path / "cache"), "--quiet"]
    result = subprocess.run(command, capture_output=True, text=True, env=environment, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    table = pd.read_csv(tmp_path / "out" / "results.csv").set_index("name")
    assert list(table.index) == ["BM25", "GDR"]
    assert table.loc["BM25", "AnswerAcc@5"] == 1.0
    assert table.loc["BM25", "R@5"] == 1.0
    assert 0.0 <= table.loc["GDR", "AnswerAcc@1"] <= 1.0
