"""Retrieval cost at 100k and 1M documents: GDR vs pyterrier-dr flat search vs a faiss IVF retriever.

Document vectors are random unit vectors (384-d, the size of all-MiniLM-L6-v2's); there
are only 6,924 real passages offline. Queries are real SQuAD questions, encoded by the
GDR model (all-MiniLM-L6-v2 encoder, fresh CID decoder) for every method, and the
encoding is timed in every method. Because the vectors are random and the generator is
untrained, the generator's recall overlap says nothing about quality (it is reported for
completeness); the point is its cost. Each method runs in a fresh process, so its peak
resident memory (model, index pages read, working memory) is its own.

    python benchmarks/retrieval.py [--sizes 100000 1000000] [--queries 256] [--work /tmp/gdr-bench]
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from _common import command, machine, markdown_table, peak_rss_mib, run_isolated

METHODS = ("flat (pyterrier-dr)", "IVF (faiss via pyterrier-dr)", "GDR generator", "GDR centroid routing")


def build(work: Path, size: int) -> None:
    """Write the FlexIndex and the GDR index (with an untrained model) of ``size`` random vectors."""
    import pyterrier_dr

    from pyterrier_gdr._util import default_encoder_path
    from pyterrier_gdr.clusters import ClusterTreeConfig
    from pyterrier_gdr.index import GDRIndex
    from pyterrier_gdr.model import GDRModel

    folder = work / str(size)
    if (folder / "done").exists():
        return
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    rng = np.random.default_rng(size)

    def records():
        for start in range(0, size, 65536):
            block = rng.standard_normal((min(65536, size - start), 384)).astype(np.float32)
            block /= np.linalg.norm(block, axis=1, keepdims=True)
            for i, vector in enumerate(block):
                yield {"docno": str(start + i), "doc_vec": vector}

    flex = pyterrier_dr.FlexIndex(str(folder / "flat.flex"), verbose=False)
    flex.index(records())
    vectors = flex.payload(return_docnos=False)[0]
    started = time.perf_counter()
    index = GDRIndex.from_vectors(folder / "gdr", vectors, flex.index_path / "docnos.npids", encoder=default_encoder_path(),
                                  tree=ClusterTreeConfig(adaptive=True), verbose=False)
    codec = index.tree.codec()
    model = GDRModel.from_encoder(default_encoder_path(), vocab_size=codec.vocab_size, max_cid_length=index.tree.max_depth + 1, query_dim=384)
    index._install_model(model.eval(), {"note": "untrained; for cost measurements only"})
    (folder / "build.json").write_text(json.dumps({"gdr_build_seconds": time.perf_counter() - started, **index.tree.stats()}))
    (folder / "done").write_text("")


def worker(work: Path, size: int, method: str, num_queries: int) -> None:
    """Run one method in this (fresh) process and print its figures as JSON."""
    import pandas as pd
    import pyterrier as pt
    import pyterrier_dr

    import pyterrier_gdr  # noqa: F401
    from pyterrier_gdr.datasets import load_questions
    from pyterrier_gdr.index import GDRIndex

    folder = work / str(size)
    index = GDRIndex(folder / "gdr", verbose=False)
    flex = pyterrier_dr.FlexIndex(str(folder / "flat.flex"), verbose=False)
    topics = load_questions("irds:pyterrier-gdr/squad-dev/test").topics.head(num_queries)

    def add_query_vectors(frame):
        frame = frame.copy()
        frame["query_vec"] = list(index.encode_queries(frame["query"].tolist()).numpy())
        return frame

    encode = pt.apply.generic(add_query_vectors)
    ranker = index.intra_cluster_ranker(num_results=100, alpha=0.0)
    if method == "flat (pyterrier-dr)":
        pipeline = encode >> flex.np_retriever(num_results=100)
    elif method == "IVF (faiss via pyterrier-dr)":
        pipeline = encode >> flex.faiss_ivf_retriever(num_results=100, n_probe=16)
    elif method == "GDR generator":
        pipeline = index.cluster_generator(num_clusters=10, verbose=False) >> ranker
    else:
        pipeline = index.centroid_router(num_clusters=10, verbose=False) >> ranker

    pipeline(topics.head(4))  # warm-up (and, for IVF, the index build, which pyterrier-dr caches)
    ranker.work.reset()
    started = time.perf_counter()
    results = pipeline(topics)
    seconds = time.perf_counter() - started
    peak = peak_rss_mib()

    # Overlap with the exact top 100 of the same query vectors.
    exact = results if method == "flat (pyterrier-dr)" else (encode >> flex.np_retriever(num_results=100))(topics)
    found = results.groupby("qid")["docno"].apply(set).to_dict()
    overlap = [len(found.get(qid, set()) & set(group)) / max(1, len(group)) for qid, group in exact.groupby("qid")["docno"]]
    scored = ranker.work.documents_per_query() if method.startswith("GDR") else float(size)
    print(json.dumps({"queries/s": len(topics) / seconds, "overlap@100": float(np.mean(overlap)), "docs scored/q": scored, "peak RSS (MiB)": peak}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--queries", type=int, default=256)
    parser.add_argument("--work", default="/tmp/pyterrier-gdr-bench", help="folder for the benchmark's indexes (a few GB at 1M)")
    parser.add_argument("--worker", nargs=2, metavar=("SIZE", "METHOD"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    work = Path(args.work)

    if args.worker:
        worker(work, int(args.worker[0]), args.worker[1], args.queries)
        return

    rows = []
    for size in args.sizes:
        build(work, size)
        stats = json.loads((work / str(size) / "build.json").read_text())
        for method in METHODS:
            figures = json.loads(run_isolated([__file__, "--work", str(work), "--queries", str(args.queries), "--worker", str(size), method]).strip().splitlines()[-1])
            rows.append({"documents": size, "method": method, **figures, "leaves": stats["leaves"]})
            print(f"{size:>9,} {method:<30} {figures}", file=sys.stderr)

    print(f"# Retrieval cost\n\nMachine: {machine()}\n\nCommand: `{command()}`\n")
    print(f"{args.queries} SQuAD test questions; top 100 per query; GDR: 10 clusters (beam 10), tree 30/30 adaptive; IVF: pyterrier-dr's "
          "faiss_ivf_retriever, 16 probes. Overlap@100: share of the exact top 100 (flat inner product over the same query vectors) retrieved.\n")
    print(markdown_table(rows, ["documents", "method", "queries/s", "overlap@100", "docs scored/q", "peak RSS (MiB)"]))


if __name__ == "__main__":
    main()
