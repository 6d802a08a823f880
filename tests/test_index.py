import json
import shutil

import numpy as np
import pandas as pd
import pytest

from pyterrier_gdr.index import GDRIndex, IndexFormatError

TOPICS = pd.DataFrame({"qid": ["1", "2", "3"], "query": ["Who won Super Bowl 50?", "Where was the game played?", "Normandy"]})


def test_reopened_index_gives_same_rankings(trained_index):
    first = (trained_index.cluster_generator(num_clusters=3) >> trained_index.intra_cluster_ranker(num_results=10))(TOPICS)
    reopened = GDRIndex(trained_index.path, verbose=False)
    second = (reopened.cluster_generator(num_clusters=3) >> reopened.intra_cluster_ranker(num_results=10))(TOPICS)
    assert first["docno"].tolist() == second["docno"].tolist()
    assert np.allclose(first["score"].to_numpy(), second["score"].to_numpy(), atol=1e-5)


def test_index_metadata(trained_index, squad_slice):
    meta = trained_index.meta
    assert meta["type"] == "gdr_index"
    assert meta["doc_count"] == len(squad_slice[0])
    assert meta["vec_size"] == 384
    assert meta["has_model"] is True


def test_config_records_every_setting(trained_index):
    config = trained_index.config
    assert config["tree"]["branching_factor"] == 8
    assert config["tree"]["adaptive"] is True
    assert config["training"]["config"]["max_steps"] == 12
    assert config["tree_stats"]["documents"] == len(trained_index)


def test_docno_round_trip(trained_index, squad_slice):
    docnos = [d["docno"] for d in squad_slice[0][:5]]
    ids = trained_index.doc_ids(docnos)
    assert list(trained_index.docnos_of(ids)) == docnos
    assert trained_index.doc_ids(["no-such-doc"])[0] == -1


def test_vectors_normalised(trained_index):
    norms = np.linalg.norm(np.asarray(trained_index.vectors), axis=1)
    assert np.allclose(norms, 1.0, atol=1e-4)


def test_untrained_model_scores_like_base_encoder(trained_index):
    from sentence_transformers import SentenceTransformer

    from pyterrier_gdr.model import GDRModel

    model = GDRModel.from_encoder(trained_index.encoder_path, vocab_size=20, max_cid_length=3, query_dim=384)
    ours = model.encode_queries(["what is the capital of france"]).numpy()
    base = SentenceTransformer(trained_index.encoder_path, device="cpu").encode(["what is the capital of france"], normalize_embeddings=True)
    assert np.allclose(ours, base, atol=1e-5)


def test_build_refuses_existing_path(trained_index, squad_slice):
    with pytest.raises(FileExistsError, match="overwrite=True"):
        GDRIndex.build(trained_index.path, squad_slice[0][:3])


def test_empty_corpus_writes_nothing(tmp_path, encoder_path):
    path = tmp_path / "empty.gdr"
    with pytest.raises(ValueError, match="empty corpus"):
        GDRIndex.build(path, [], encoder=encoder_path, verbose=False)
    assert not path.exists()
    assert list(tmp_path.iterdir()) == []


def test_failed_build_leaves_nothing(tmp_path, encoder_path):
    def documents():
        yield {"docno": "1", "text": "a passage"}
        raise RuntimeError("corpus reader failed")

    path = tmp_path / "broken.gdr"
    with pytest.raises(RuntimeError, match="corpus reader failed"):
        GDRIndex.build(path, documents(), encoder=encoder_path, verbose=False)
    assert list(tmp_path.iterdir()) == []


def test_half_written_directory_rejected(tmp_path, trained_index):
    half = tmp_path / "half.gdr"
    shutil.copytree(trained_index.path, half)
    (half / "pt_meta.json").unlink()
    with pytest.raises(IndexFormatError, match="no pt_meta.json"):
        GDRIndex(half).meta


def test_other_format_version_rejected(tmp_path, trained_index):
    copy = tmp_path / "old.gdr"
    shutil.copytree(trained_index.path, copy)
    meta = json.loads((copy / "pt_meta.json").read_text())
    meta["format_version"] = 99
    (copy / "pt_meta.json").write_text(json.dumps(meta))
    with pytest.raises(IndexFormatError, match="format version 99"):
        GDRIndex(copy).meta


def test_truncated_vectors_rejected(tmp_path, trained_index):
    copy = tmp_path / "cut.gdr"
    shutil.copytree(trained_index.path, copy)
    with open(copy / "vecs.f4", "r+b") as fout:
        fout.truncate(1000)
    with pytest.raises(IndexFormatError, match="damaged"):
        GDRIndex(copy).meta


def test_missing_index_rejected(tmp_path):
    with pytest.raises(FileNotFoundError, match="build one"):
        GDRIndex(tmp_path / "nothing").meta


def test_untrained_index_has_no_generator(tmp_path, squad_slice, encoder_path):
    index = GDRIndex.build(tmp_path / "u.gdr", squad_slice[0][:40], encoder=encoder_path, verbose=False)
    with pytest.raises(ValueError, match="no trained GDR model"):
        index.cluster_generator()(TOPICS)
    # the memory-free router and the ranker work without a model
    result = (index.centroid_router(num_clusters=2) >> index.intra_cluster_ranker())(TOPICS)
    assert len(result) > 0


def test_from_vectors_matches_build(tmp_path, trained_index):
    copy = GDRIndex.from_vectors(
        tmp_path / "copy.gdr", trained_index.vectors, trained_index.path / "docnos.npids",
        encoder=trained_index.encoder_path, verbose=False,
    )
    assert len(copy) == len(trained_index)
    assert np.array_equal(np.asarray(copy.vectors), np.asarray(trained_index.vectors))
