import numpy as np
import pytest

from pyterrier_gdr.clusters import CIDCodec, ClusterTree, ClusterTreeConfig, build_cluster_tree


def unit_vectors(n, dim=16, seed=0):
    vectors = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


@pytest.mark.parametrize("adaptive", [False, True])
def test_every_document_in_exactly_one_leaf(adaptive):
    tree = build_cluster_tree(unit_vectors(700), ClusterTreeConfig(branching_factor=6, leaf_size=8, adaptive=adaptive))
    assert tree.doc_leaf.shape == (700,)
    assert tree.leaf_sizes().sum() == 700
    offsets, members = tree.members()
    assert sorted(members.tolist()) == list(range(700))
    for leaf in range(tree.num_leaves):
        assert (tree.doc_leaf[tree.leaf_members(leaf)] == leaf).all()


@pytest.mark.parametrize("adaptive", [False, True])
def test_leaves_not_larger_than_leaf_size(adaptive):
    tree = build_cluster_tree(unit_vectors(700), ClusterTreeConfig(branching_factor=6, leaf_size=8, adaptive=adaptive))
    assert tree.leaf_sizes().max() <= 8
    assert tree.leaf_sizes().min() >= 1


def test_digits_within_branching_factor():
    tree = build_cluster_tree(unit_vectors(500), ClusterTreeConfig(branching_factor=5, leaf_size=4))
    digits = tree.leaf_codes[tree.leaf_codes >= 0]
    assert digits.max() < 5


def test_leaf_cids_unique_and_prefix_free():
    tree = build_cluster_tree(unit_vectors(600), ClusterTreeConfig(branching_factor=4, leaf_size=6, adaptive=True))
    codes = [tree.leaf_code(leaf) for leaf in range(tree.num_leaves)]
    assert len(set(codes)) == len(codes)
    as_set = set(codes)
    for code in codes:
        for cut in range(1, len(code)):
            assert code[:cut] not in as_set


def test_adaptive_fills_leaves():
    vectors = unit_vectors(900)
    fixed = build_cluster_tree(vectors, ClusterTreeConfig(branching_factor=30, leaf_size=30))
    adaptive = build_cluster_tree(vectors, ClusterTreeConfig(branching_factor=30, leaf_size=30, adaptive=True))
    assert adaptive.stats()["leaf_size_median"] > 2 * fixed.stats()["leaf_size_median"]
    assert adaptive.stats()["single_document_leaves"] < fixed.stats()["single_document_leaves"]


def test_codec_round_trip():
    codec = CIDCodec(branching_factor=30, max_depth=10)
    assert codec.vocab_size == 302
    for code in [(0,), (29, 0, 5), tuple(range(10))]:
        tokens = codec.encode(code)
        assert tokens[-1] == CIDCodec.EOS
        assert codec.decode(tokens) == code


def test_codec_position_aware_tokens():
    codec = CIDCodec(branching_factor=30, max_depth=3)
    assert codec.encode((0, 0)) == [2, 32, 1]
    assert codec.encode((29, 1)) == [31, 33, 1]


def test_codec_rejects_bad_digit():
    codec = CIDCodec(branching_factor=4, max_depth=3)
    with pytest.raises(ValueError, match="digit 4"):
        codec.encode((1, 4))


def test_codec_rejects_wrong_position():
    codec = CIDCodec(branching_factor=4, max_depth=3)
    with pytest.raises(ValueError, match="position"):
        codec.decode([2 + 4 * 1 + 1])  # a position-1 token first


def test_leaf_tokens_decode_to_leaf_codes():
    tree = build_cluster_tree(unit_vectors(300), ClusterTreeConfig(branching_factor=5, leaf_size=7, adaptive=True))
    codec = tree.codec()
    labels = tree.leaf_tokens(np.arange(tree.num_leaves))
    for leaf, row in enumerate(labels):
        assert codec.decode(row) == tree.leaf_code(leaf)


def test_trie_reaches_every_leaf():
    tree = build_cluster_tree(unit_vectors(400), ClusterTreeConfig(branching_factor=5, leaf_size=7, adaptive=True))
    trie = tree.trie()
    for leaf in range(tree.num_leaves):
        node = 0
        for digit in tree.leaf_code(leaf):
            node = trie.children[node, digit]
            assert node >= 0
        assert trie.node_leaf[node] == leaf
    assert (trie.node_leaf >= 0).sum() == tree.num_leaves


def test_duplicate_vectors_terminate():
    vectors = np.ones((100, 8), dtype=np.float32)
    tree = build_cluster_tree(vectors, ClusterTreeConfig(branching_factor=3, leaf_size=10))
    assert tree.leaf_sizes().sum() == 100
    assert tree.leaf_sizes().max() <= 10


def test_single_document():
    tree = build_cluster_tree(unit_vectors(1), ClusterTreeConfig())
    assert tree.num_leaves == 1
    assert tree.leaf_code(0) == (0,)


def test_empty_corpus_rejected():
    with pytest.raises(ValueError, match="empty corpus"):
        build_cluster_tree(np.empty((0, 8), dtype=np.float32))


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="branching_factor=1"):
        ClusterTreeConfig(branching_factor=1)
    with pytest.raises(ValueError, match="unknown cluster tree settings"):
        ClusterTreeConfig.from_dict({"leafsize": 3})


def test_assign_picks_nearest_centroid():
    tree = build_cluster_tree(unit_vectors(300), ClusterTreeConfig(branching_factor=5, leaf_size=10, adaptive=True))
    assert (tree.assign(tree.leaf_centroids) == np.arange(tree.num_leaves)).all()


def test_save_load_round_trip(tmp_path):
    tree = build_cluster_tree(unit_vectors(300), ClusterTreeConfig(branching_factor=5, leaf_size=10, seed=3))
    tree.save(tmp_path)
    loaded = ClusterTree.load(tmp_path)
    assert (loaded.leaf_codes == tree.leaf_codes).all()
    assert (loaded.doc_leaf == tree.doc_leaf).all()
    assert np.allclose(loaded.leaf_centroids, tree.leaf_centroids)
    assert loaded.config == tree.config


def test_seed_makes_tree_reproducible():
    vectors = unit_vectors(400)
    first = build_cluster_tree(vectors, ClusterTreeConfig(branching_factor=5, leaf_size=10, seed=7))
    second = build_cluster_tree(vectors, ClusterTreeConfig(branching_factor=5, leaf_size=10, seed=7))
    assert (first.doc_leaf == second.doc_leaf).all()
