"""CUDA paths: decoding, scoring and retrieval on a GPU give the CPU's results (skipped without CUDA)."""
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from pyterrier_gdr.datasets import load_corpus
from pyterrier_gdr.index import GDRIndex

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

TOPICS = pd.DataFrame({"qid": ["1", "2", "3"], "query": ["Who won Super Bowl 50?", "Where was the game played?", "Normandy"]})


@pytest.fixture(scope="module")
def cpu_and_gpu(trained_index):
    return GDRIndex(trained_index.path, device="cpu", verbose=False), GDRIndex(trained_index.path, device="cuda", verbose=False)


def test_generator_same_clusters_on_gpu(cpu_and_gpu):
    cpu, gpu = cpu_and_gpu
    on_cpu = cpu.cluster_generator(num_clusters=5)(TOPICS)
    on_gpu = gpu.cluster_generator(num_clusters=5)(TOPICS)
    assert gpu.model.device.type == "cuda"
    assert on_gpu["cluster_id"].tolist() == on_cpu["cluster_id"].tolist()
    assert np.allclose(on_gpu["cluster_score"], on_cpu["cluster_score"], atol=1e-3)


@pytest.mark.parametrize("precision", ["bfloat16", "float16"])
def test_generator_in_16_bits_on_gpu(cpu_and_gpu, precision):
    cpu, gpu = cpu_and_gpu
    on_cpu = cpu.cluster_generator(num_clusters=5)(TOPICS)
    on_gpu = gpu.cluster_generator(num_clusters=5, precision=precision)(TOPICS)
    assert next(gpu.model.seq2seq.decoder.parameters()).dtype == torch.float32  # a converted copy decodes
    ids = gpu.doc_ids(on_gpu["docno"].tolist())
    assert (gpu.tree.doc_leaf[ids] == on_gpu["cluster_id"].to_numpy()).all()
    for qid in TOPICS["qid"]:
        exact = set(on_cpu.loc[on_cpu["qid"] == qid, "cluster_id"])
        assert len(exact & set(on_gpu.loc[on_gpu["qid"] == qid, "cluster_id"])) >= 4  # at most one close call swapped


def test_ranker_same_scores_on_gpu(cpu_and_gpu):
    cpu, gpu = cpu_and_gpu
    on_cpu = (cpu.centroid_router(num_clusters=3) >> cpu.intra_cluster_ranker(num_results=10))(TOPICS)
    on_gpu = (gpu.centroid_router(num_clusters=3) >> gpu.intra_cluster_ranker(num_results=10))(TOPICS)
    assert gpu.resolved_device().type == "cuda"
    assert on_gpu["docno"].tolist() == on_cpu["docno"].tolist()
    assert np.allclose(on_gpu["score"], on_cpu["score"], atol=1e-3)


def test_generator_same_groups_on_gpu(trained_index, squad_slice, tmp_path):
    path = tmp_path / "added.gdr"
    shutil.copytree(trained_index.path, path)
    known = {d["docno"] for d in squad_slice[0]}
    unknown = (d for d in load_corpus("irds:pyterrier-gdr/squad-dev") if d["docno"] not in known)
    new = [{"docno": d["docno"], "text": f"{d['title']}. {d['text']}"} for _, d in zip(range(16), unknown)]
    GDRIndex(path, device="cpu", verbose=False).add_documents(new)
    topics = pd.DataFrame({"qid": ["1", "2", "3"], "query": [d["text"] for d in new[:3]]})
    cpu, gpu = GDRIndex(path, device="cpu", verbose=False), GDRIndex(path, device="cuda", verbose=False)
    on_cpu = cpu.cluster_generator(num_clusters=2)(topics)
    on_gpu = gpu.cluster_generator(num_clusters=2)(topics)
    assert (on_cpu["cluster_id"] >= cpu.tree.num_leaves).any()
    assert on_gpu["cluster_id"].tolist() == on_cpu["cluster_id"].tolist()
    assert on_gpu["docno"].tolist() == on_cpu["docno"].tolist()
