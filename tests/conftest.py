"""Shared fixtures: a real slice of the bundled SQuAD set, the offline MiniLM, and small built indexes."""
from __future__ import annotations

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("PT_TEST_TRANSFORMER_REPORTS", "0")

import numpy as np
import pandas as pd
import pytest

import pyterrier_gdr  # noqa: F401  (registers the bundled data sets)
from pyterrier_gdr._util import default_encoder_path
from pyterrier_gdr.datasets import load_corpus, load_questions

# The first articles of SQuAD dev: enough real passages for clusters of several levels.
SLICE_DOCS = 240


@pytest.fixture(scope="session")
def encoder_path() -> str:
    return default_encoder_path()


@pytest.fixture(scope="session")
def squad_slice():
    """``(docs, train, dev, test)``: the first passages of the bundled SQuAD set and their questions."""
    corpus = load_corpus("irds:pyterrier-gdr/squad-dev")
    docs = []
    for doc in corpus:
        if len(docs) == SLICE_DOCS:
            break
        docs.append({"docno": doc["docno"], "title": doc["title"], "text": f"{doc['title']}. {doc['text']}"})
    docnos = {d["docno"] for d in docs}
    splits = []
    for split in ("train", "dev", "test"):
        questions = load_questions(f"irds:pyterrier-gdr/squad-dev/{split}")
        qrels = questions.qrels[questions.qrels["docno"].isin(docnos)]
        topics = questions.topics[questions.topics["qid"].isin(set(qrels["qid"]))].reset_index(drop=True)
        answers = {q: questions.answers[q] for q in topics["qid"]}
        splits.append((topics, qrels.reset_index(drop=True), answers))
    return docs, splits[0], splits[1], splits[2]


@pytest.fixture(scope="session")
def trained_index(tmp_path_factory, squad_slice, encoder_path):
    """A GDR index of the slice, with a briefly trained model (quality is not the point here)."""
    from pyterrier_gdr.clusters import ClusterTreeConfig
    from pyterrier_gdr.index import GDRIndex
    from pyterrier_gdr.training import TrainingConfig

    docs, (topics, qrels, _), _, _ = squad_slice
    path = tmp_path_factory.mktemp("index") / "slice.gdr"
    index = GDRIndex.build(path, docs, encoder=encoder_path, tree=ClusterTreeConfig(branching_factor=8, leaf_size=10, adaptive=True), verbose=False)
    config = TrainingConfig(max_steps=12, batch_size=16, checkpoint_every=0, pseudo_queries_per_doc=1)
    index.train(topics, qrels, corpus=docs, config=config)
    return GDRIndex(path, verbose=False)


@pytest.fixture()
def write_jsonl():
    def write(path, records):
        with open(path, "w", encoding="utf-8") as fout:
            for record in records:
                fout.write(json.dumps(record) + "\n")
        return path

    return write
