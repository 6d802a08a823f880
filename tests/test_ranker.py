import warnings

import numpy as np
import pandas as pd
import pytest

from pyterrier_gdr.ranker import IntraClusterRanker, cluster_log_prior, fuse_scores


def candidates():
    return pd.DataFrame({
        "qid": ["q1"] * 4 + ["q2"] * 2,
        "docno": ["a", "b", "c", "d", "a", "e"],
        "cluster_id": [0, 0, 1, 2, 5, 6],
        "cluster_score": [-0.5, -0.5, -1.0, -3.0, -2.0, -2.0],
    })


def test_log_prior_normalises_over_distinct_clusters():
    frame = candidates()
    prior = cluster_log_prior(frame)
    q1 = np.exp(prior[:4])
    # clusters 0, 1, 2 of q1: each counted once, whatever the number of its documents
    assert np.isclose(q1[0] + q1[2] + q1[3], 1.0)
    assert q1[0] == q1[1]


def test_log_prior_equal_scores_equal_share():
    prior = cluster_log_prior(candidates())
    assert np.allclose(np.exp(prior[4:]), [0.5, 0.5])


def test_log_prob_fusion_alpha_zero_is_dense_logit():
    dense = np.array([0.2, 0.5, 0.1])
    fused = fuse_scores(dense, np.log([0.2, 0.3, 0.5]), alpha=0.0, fusion="log_prob", temperature=0.05)
    assert np.allclose(fused, dense / 0.05)


def test_log_prob_fusion_adds_weighted_log_prior():
    dense = np.array([0.2, 0.2])
    fused = fuse_scores(dense, np.log([0.9, 0.1]), alpha=2.0, fusion="log_prob", temperature=0.05)
    assert fused[0] > fused[1]
    assert np.isclose(fused[0] - fused[1], 2.0 * (np.log(0.9) - np.log(0.1)))


def test_paper_fusion_formula():
    dense = np.array([0.3])
    fused = fuse_scores(dense, np.log([0.25]), alpha=1.5, fusion="paper", temperature=0.05)
    assert np.isclose(fused[0], np.tanh(0.3) + 1.5 * 0.25)


def test_ranker_rejects_unknown_fusion(trained_index):
    with pytest.raises(ValueError, match="fusion='sum' is invalid"):
        IntraClusterRanker(trained_index, fusion="sum")


def test_ranker_scores_are_inner_products(trained_index, squad_slice):
    docs = squad_slice[0]
    ranker = trained_index.intra_cluster_ranker(alpha=0.0, num_results=5)
    frame = pd.DataFrame({"qid": "q", "query": "Super Bowl 50 winner", "docno": [d["docno"] for d in docs[:8]]})
    result = ranker(frame)
    query_vector = trained_index.encode_queries(["Super Bowl 50 winner"])[0].numpy()
    ids = trained_index.doc_ids(result["docno"].tolist())
    expected = trained_index.vectors[ids] @ query_vector / 0.05
    assert np.allclose(result["score"].to_numpy(), expected, atol=1e-4)
    assert result["rank"].tolist() == list(range(5))
    assert (np.diff(result["score"].to_numpy()) <= 0).all()


def test_ranker_prior_changes_order(trained_index, squad_slice):
    docs = squad_slice[0]
    frame = pd.DataFrame({
        "qid": "q", "query": "Super Bowl 50 winner", "docno": [docs[0]["docno"], docs[100]["docno"]],
        "cluster_id": [1, 2], "cluster_score": [-50.0, 0.0],
    })
    strong_prior = trained_index.intra_cluster_ranker(alpha=10.0)(frame)
    assert strong_prior["docno"].iloc[0] == docs[100]["docno"]


def test_ranker_drops_unknown_docnos_with_warning(trained_index, squad_slice):
    frame = pd.DataFrame({"qid": "q", "query": "x", "docno": [squad_slice[0][0]["docno"], "not-a-docno"]})
    with pytest.warns(UserWarning, match="not-a-docno"):
        result = trained_index.intra_cluster_ranker()(frame)
    assert result["docno"].tolist() == [squad_slice[0][0]["docno"]]


def test_ranker_empty_input_typed_frame(trained_index):
    frame = pd.DataFrame({"qid": pd.Series(dtype=str), "query": pd.Series(dtype=str), "docno": pd.Series(dtype=str)})
    result = trained_index.intra_cluster_ranker()(frame)
    assert len(result) == 0
    assert {"qid", "query", "docno", "score", "rank"} <= set(result.columns)


def test_ranker_needs_docno(trained_index):
    import pyterrier_alpha as pta

    with pytest.raises(pta.validate.InputValidationError):
        trained_index.intra_cluster_ranker()(pd.DataFrame({"qid": ["q"], "query": ["x"]}))
