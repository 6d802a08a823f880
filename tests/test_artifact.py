"""GDRIndex as a PyTerrier artifact: discovery by type, packaging and loading from a URL."""
import functools
import http.server
import threading

import pandas as pd
import pyterrier_alpha as pta
import pytest

from pyterrier_gdr.index import GDRIndex

TOPICS = pd.DataFrame({"qid": ["1", "2"], "query": ["Who won Super Bowl 50?", "Where was the game played?"]})


def rankings(index):
    return (index.cluster_generator(num_clusters=3) >> index.intra_cluster_ranker(num_results=10))(TOPICS)


def test_artifact_load_finds_gdr_index(trained_index):
    loaded = pta.Artifact.load(str(trained_index.path))
    assert isinstance(loaded, GDRIndex)
    assert len(loaded) == len(trained_index)


@pytest.fixture()
def loopback_server(tmp_path):
    """Serve ``tmp_path / "served"`` over HTTP on 127.0.0.1 (PyTerrier's from_url downloads packages over HTTP)."""
    folder = tmp_path / "served"
    folder.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield folder, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_package_round_trip(trained_index, tmp_path, monkeypatch, loopback_server):
    monkeypatch.setenv("PYTERRIER_HOME", str(tmp_path / "pyterrier-home"))
    folder, base_url = loopback_server
    trained_index.build_package(str(folder / "slice.tar.lz4"), verbose=False)
    loaded = GDRIndex.from_url(f"{base_url}/slice.tar.lz4")
    assert isinstance(loaded, GDRIndex)
    assert loaded.path != trained_index.path
    expected, found = rankings(trained_index), rankings(loaded)
    assert found["docno"].tolist() == expected["docno"].tolist()


def test_artifact_metadata(trained_index):
    import json

    meta = json.loads((trained_index.path / "pt_meta.json").read_text())
    assert (meta["type"], meta["format"], meta["package_hint"]) == ("gdr_index", "gdr", "pyterrier-gdr")
    assert meta["format_version"] == 1


def test_package_round_trip_keeps_added_documents(trained_index, squad_slice, tmp_path, monkeypatch, loopback_server):
    import shutil

    import numpy as np

    from pyterrier_gdr.datasets import load_corpus

    monkeypatch.setenv("PYTERRIER_HOME", str(tmp_path / "pyterrier-home"))
    known = {d["docno"] for d in squad_slice[0]}
    new_docs = [{"docno": d["docno"], "text": d["text"]} for d in load_corpus("irds:pyterrier-gdr/squad-dev") if d["docno"] not in known][:8]
    shutil.copytree(trained_index.path, tmp_path / "grown.gdr")
    grown = GDRIndex(tmp_path / "grown.gdr", verbose=False)
    grown.add_documents(new_docs)
    folder, base_url = loopback_server
    grown.build_package(str(folder / "grown.tar.lz4"), verbose=False)
    loaded = GDRIndex.from_url(f"{base_url}/grown.tar.lz4")
    assert len(loaded) == len(grown)
    mine, theirs = grown.added_groups(), loaded.added_groups()
    assert len(mine) > 0
    assert mine.first == theirs.first
    assert np.array_equal(mine.doc_group, theirs.doc_group)
    assert np.array_equal(mine.centroids, theirs.centroids)

    def routed(index):
        generator = index.cluster_generator(num_clusters=2, added_clusters=2) >> index.intra_cluster_ranker(num_results=10)
        router = index.centroid_router(num_clusters=3) >> index.intra_cluster_ranker(num_results=10)
        return generator(TOPICS)["docno"].tolist(), router(TOPICS)["docno"].tolist()

    assert routed(loaded) == routed(grown)
