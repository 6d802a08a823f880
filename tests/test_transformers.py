"""GDR transformers end to end on the slice index, and PyTerrier's contract checks."""
import logging

import pandas as pd
import pyterrier as pt
import pyterrier_alpha as pta
import pytest
import pyterrier.testing as pt_testing


def test_generator_returns_cluster_documents(trained_index):
    generator = trained_index.cluster_generator(num_clusters=3)
    result = generator(pd.DataFrame({"qid": ["1", "2"], "query": ["Who won Super Bowl 50?", "What is a forest?"]}))
    tree = trained_index.tree
    for qid, group in result.groupby("qid"):
        assert group["cluster_rank"].max() <= 2
        ids = trained_index.doc_ids(group["docno"].tolist())
        assert (tree.doc_leaf[ids] == group["cluster_id"].to_numpy()).all()
        # every document of each returned cluster is a candidate
        for leaf in group["cluster_id"].unique():
            assert set(ids[group["cluster_id"].to_numpy() == leaf]) == set(tree.leaf_members(leaf))


def test_generator_scores_are_log_probabilities(trained_index):
    result = trained_index.cluster_generator(num_clusters=4)(pd.DataFrame({"qid": ["1"], "query": ["Super Bowl"]}))
    scores = result.drop_duplicates("cluster_id")["cluster_score"].to_numpy()
    assert (scores <= 0).all()
    assert (scores[:-1] >= scores[1:]).all()


def test_generator_cache_gives_same_result(trained_index):
    topics = pd.DataFrame({"qid": ["1", "2"], "query": ["Super Bowl", "Normans"]})
    cached = trained_index.cluster_generator(num_clusters=3, cache=True)
    first = cached(topics)
    second = cached(topics)
    plain = trained_index.cluster_generator(num_clusters=3)(topics)
    pd.testing.assert_frame_equal(first.drop(columns="query_vec"), second.drop(columns="query_vec"))
    pd.testing.assert_frame_equal(first.drop(columns="query_vec"), plain.drop(columns="query_vec"))


def test_generator_then_ranker(trained_index):
    pipeline = trained_index.cluster_generator(num_clusters=3) >> trained_index.intra_cluster_ranker(num_results=10)
    result = pipeline(pd.DataFrame({"qid": ["1"], "query": ["Who won Super Bowl 50?"]}))
    assert 0 < len(result) <= 10
    assert result["rank"].tolist() == list(range(len(result)))
    assert "query_vec" not in result.columns


def test_centroid_router_matches_best_centroid(trained_index):
    query = "Who won Super Bowl 50?"
    result = trained_index.centroid_router(num_clusters=1)(pd.DataFrame({"qid": ["1"], "query": [query]}))
    vector = trained_index.encode_queries([query])[0].numpy()
    distances = ((trained_index.tree.leaf_centroids - vector) ** 2).sum(axis=1)
    best = int(distances.argmin())
    assert set(result["cluster_id"]) == {best}


def test_generator_needs_query_column(trained_index):
    with pytest.raises(pta.validate.InputValidationError):
        trained_index.cluster_generator()(pd.DataFrame({"qid": ["1"], "text": ["x"]}))


def test_generator_rejects_small_beam(trained_index):
    with pytest.raises(ValueError, match="beam_size=2 is smaller than num_clusters=5"):
        trained_index.cluster_generator(num_clusters=5, beam_size=2)


@pytest.mark.parametrize("precision", ["float8", "fp16", ""])
def test_generator_rejects_unknown_precision(trained_index, precision):
    with pytest.raises(ValueError, match=f"precision={precision!r} is invalid; use 'float32' \\(exact\\), 'bfloat16'"):
        trained_index.cluster_generator(precision=precision)


def test_generator_precision_none_is_float32(trained_index):
    assert trained_index.cluster_generator(precision=None).precision == "float32"


def test_generator_warns_float16_on_cpu(trained_index, caplog):
    generator = trained_index.cluster_generator(num_clusters=2, precision="float16")
    topics = pd.DataFrame({"qid": ["1"], "query": ["Normans"]})
    with caplog.at_level(logging.WARNING, logger="pyterrier_gdr.generator"):
        result = generator(topics)
        generator(pd.DataFrame({"qid": ["2"], "query": ["Super Bowl"]}))
    warnings = [r.getMessage() for r in caplog.records if "float16" in r.getMessage()]
    assert warnings == ["precision='float16' decodes on the CPU, where it is usually slower than float32; use 'bfloat16' there"]
    assert result["cluster_id"].nunique() == 2


def test_generator_in_bfloat16_keeps_query_vectors(trained_index):
    """bfloat16 changes only the decoder: valid clusters, float32 query vectors identical to the default's."""
    topics = pd.DataFrame({"qid": ["1", "2"], "query": ["Who won Super Bowl 50?", "Normans"]})
    exact = trained_index.cluster_generator(num_clusters=3)(topics)
    half = trained_index.cluster_generator(num_clusters=3, precision="bfloat16")
    assert "precision='bfloat16'" in repr(half)
    result = half(topics)
    tree = trained_index.tree
    ids = trained_index.doc_ids(result["docno"].tolist())
    assert (tree.doc_leaf[ids] == result["cluster_id"].to_numpy()).all()
    assert result.groupby("qid")["cluster_id"].nunique().tolist() == [3, 3]
    vectors = result.drop_duplicates("qid").set_index("qid")["query_vec"]
    exact_vectors = exact.drop_duplicates("qid").set_index("qid")["query_vec"]
    for qid in topics["qid"]:
        assert vectors[qid].dtype == exact_vectors[qid].dtype
        assert (vectors[qid] == exact_vectors[qid]).all()
    assert (result["cluster_score"] <= 0).all()


def test_bm25_then_ranker(trained_index, squad_slice, tmp_path):
    from pyterrier_pisa import PisaIndex

    docs = squad_slice[0]
    bm25 = PisaIndex(str(tmp_path / "bm25.pisa"), text_field="text")
    bm25.index(docs)
    pipeline = bm25.bm25(num_results=20) >> trained_index.intra_cluster_ranker(num_results=5)
    result = pipeline(pd.DataFrame({"qid": ["1"], "query": ["Super Bowl champion"]}))
    assert len(result) == 5
    assert set(result["docno"]) <= {d["docno"] for d in docs}


class _ContractBase(pt_testing.TransformerTestCase):
    """PyTerrier's transformer contract checks, on the slice index bound by the fixture below."""

    __test__ = False
    index = None

    @classmethod
    def setUpClass(cls):
        # pt.schematic looks up documentation links by downloading PyTerrier's objects.inv;
        # an empty inventory keeps the check offline (our classes have no PyTerrier docs page).
        import pyterrier.documentation

        if pyterrier.documentation._cached_objects_inv is None:
            pyterrier.documentation._cached_objects_inv = {}
        super().setUpClass()


@pytest.fixture(autouse=True, scope="module")
def _bind_index(trained_index):
    _ContractBase.index = trained_index
    yield


class TestGeneratorContract(_ContractBase):
    __test__ = True

    @staticmethod
    def get_transformer():
        return _ContractBase.index.cluster_generator()


class TestRouterContract(_ContractBase):
    __test__ = True

    @staticmethod
    def get_transformer():
        return _ContractBase.index.centroid_router()


class TestRankerContract(_ContractBase):
    __test__ = True

    @staticmethod
    def get_transformer():
        return _ContractBase.index.intra_cluster_ranker()
