"""Several processes on one CPU (gloo): sharded encoding, data-parallel training, and resuming."""
import json
import logging
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from pyterrier_gdr.clusters import ClusterTreeConfig
from pyterrier_gdr.index import GDRIndex
from pyterrier_gdr.training import TrainingConfig

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def torchrun(*arguments, processes=2):
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes), "--master_addr", "127.0.0.1",
               "--master_port", str(free_port()), "-m", "pyterrier_gdr.cli", *arguments]
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, env=environment, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    return result


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory, squad_slice):
    path = tmp_path_factory.mktemp("corpus") / "docs.jsonl"
    with open(path, "w", encoding="utf-8") as fout:
        for doc in squad_slice[0][:60]:
            fout.write(json.dumps({"docno": doc["docno"], "text": doc["text"]}) + "\n")
    return path


def test_two_process_build_equals_one_process(tmp_path, corpus_file, encoder_path):
    torchrun("build", str(tmp_path / "two.gdr"), str(corpus_file), "--encoder", encoder_path, "--tree", "leaf_size=10", "adaptive=true", "--quiet")
    two = GDRIndex(tmp_path / "two.gdr")
    docs = [json.loads(line) for line in open(corpus_file, encoding="utf-8")]
    one = GDRIndex.build(tmp_path / "one.gdr", docs, encoder=encoder_path, tree=ClusterTreeConfig(leaf_size=10, adaptive=True), verbose=False)
    assert two.config["build"]["encode_processes"] == 2
    assert list(two.docnos_of(np.arange(len(two)))) == [d["docno"] for d in docs]
    assert np.allclose(np.asarray(two.vectors), np.asarray(one.vectors), atol=1e-5)
    assert not (tmp_path / ".two.gdr.shards").exists()


def test_two_process_training_ends_with_identical_weights(tmp_path, corpus_file, encoder_path):
    docs = [json.loads(line) for line in open(corpus_file, encoding="utf-8")]
    GDRIndex.build(tmp_path / "idx.gdr", docs, encoder=encoder_path, tree=ClusterTreeConfig(leaf_size=10, adaptive=True), verbose=False)
    torchrun("train", str(tmp_path / "idx.gdr"), "--corpus", str(corpus_file), "--quiet",
             "--setting", "max_steps=3", "batch_size=8", "checkpoint_every=0", "pseudo_queries_per_doc=1")
    record = GDRIndex(tmp_path / "idx.gdr").config["training"]
    assert record["processes"] == 2
    digests = record["process_weight_digests"]
    assert len(digests) == 2
    assert digests[0] == digests[1]


def test_interrupted_training_resumes(tmp_path, squad_slice, encoder_path, monkeypatch, caplog):
    import pyterrier_gdr.training as training

    docs, (topics, qrels, _), _, _ = squad_slice
    config = TrainingConfig(max_steps=6, batch_size=8, checkpoint_every=3, pseudo_queries_per_doc=0)

    reference = GDRIndex.build(tmp_path / "ref.gdr", docs[:60], encoder=encoder_path, tree=ClusterTreeConfig(leaf_size=10, adaptive=True), verbose=False)
    reference.train(topics, qrels, config=config)

    index = GDRIndex.from_vectors(tmp_path / "resumed.gdr", reference.vectors, reference.path / "docnos.npids",
                                  encoder=encoder_path, tree=reference.tree.config, verbose=False)
    save = training._save_checkpoint

    def save_then_crash(accelerator, checkpoint):
        save(accelerator, checkpoint)
        raise KeyboardInterrupt

    monkeypatch.setattr(training, "_save_checkpoint", save_then_crash)
    with pytest.raises(KeyboardInterrupt):
        index.train(topics, qrels, config=config)
    assert not index.has_model
    monkeypatch.undo()

    with caplog.at_level(logging.INFO, logger="pyterrier_gdr.training"):
        index.train(topics, qrels, config=config)
    assert "resumed training" in caplog.text
    assert "at step 3" in caplog.text
    record = GDRIndex(index.path).config["training"]
    assert record["steps"] == 6
    assert record["process_weight_digests"] == reference.config["training"]["process_weight_digests"]
    assert not (index.path / "training").exists()
