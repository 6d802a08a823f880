import numpy as np
import pytest

from pyterrier_gdr.clusters import ClusterTreeConfig, build_cluster_tree
from pyterrier_gdr.negatives import ClusterNegativeSampler


@pytest.fixture(scope="module")
def tree():
    vectors = np.random.default_rng(0).standard_normal((500, 16)).astype(np.float32)
    return build_cluster_tree(vectors, ClusterTreeConfig(branching_factor=6, leaf_size=12, adaptive=True))


def test_negatives_share_the_positive_cluster(tree):
    sampler = ClusterNegativeSampler(tree, num_negatives=5, seed=1)
    positives = np.arange(0, 500, 7)
    negatives = sampler.sample(positives)
    assert negatives.shape == (len(positives), 5)
    for positive, row in zip(positives, negatives):
        drawn = row[row >= 0]
        cluster_size = len(tree.leaf_members(tree.doc_leaf[positive]))
        assert len(drawn) == min(5, cluster_size - 1)
        assert (tree.doc_leaf[drawn] == tree.doc_leaf[positive]).all()


def test_negatives_exclude_positive_and_banned(tree):
    sampler = ClusterNegativeSampler(tree, num_negatives=20, seed=2)
    positive = 10
    members = tree.leaf_members(tree.doc_leaf[positive])
    banned = [int(d) for d in members if d != positive][:2]
    row = sampler.sample([positive], exclude=[banned])[0]
    drawn = set(row[row >= 0].tolist())
    assert positive not in drawn
    assert not drawn & set(banned)
    assert len(drawn) == len(members) - 1 - len(banned)


def test_negatives_padded_when_cluster_small(tree):
    sampler = ClusterNegativeSampler(tree, num_negatives=50, seed=3)
    row = sampler.sample([0])[0]
    size = len(tree.leaf_members(tree.doc_leaf[0]))
    assert (row >= 0).sum() == size - 1
    assert (row[size - 1:] == -1).all()


def test_negatives_distinct(tree):
    sampler = ClusterNegativeSampler(tree, num_negatives=8, seed=4)
    for row in sampler.sample(np.arange(50)):
        drawn = row[row >= 0]
        assert len(set(drawn.tolist())) == len(drawn)


def test_negative_count_must_be_non_negative(tree):
    with pytest.raises(ValueError, match="num_negatives=-1"):
        ClusterNegativeSampler(tree, num_negatives=-1)
