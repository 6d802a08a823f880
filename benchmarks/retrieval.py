"""Retrieval cost at 100k and 1M documents: GDR vs pyterrier-dr flat search vs a faiss IVF retriever.

Only 6,924 real passages are offline (the bundled SQuAD paragraphs and Wikipedia slice), so
the document vectors are those passages' all-MiniLM-L6-v2 vectors, each repeated with
Gaussian noise (then normalised) up to the corpus size: real neighbourhoods, synthetic
scale. Queries are real SQuAD questions, encoded by the GDR model (all-MiniLM-L6-v2
encoder, fresh CID decoder) in every method, and the encoding is timed in every method.
The generator is untrained, so its overlap with exact search says nothing about quality
(it is reported for completeness); the point is its cost. Each method runs in a fresh
process, so its peak resident memory (model, index pages read, working memory) is its own.

    python benchmarks/retrieval.py [--sizes 100000 1000000] [--queries 256] [--work /tmp/gdr-bench]
"""
from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from _common import command, machine, markdown_table, peak_rss_mib, reset_peak_rss, run_isolated

IVF_PROBES = 16
METHODS = ("flat (pyterrier-dr)", "IVF (faiss via pyterrier-dr)", "GDR generator", "GDR centroid routing")


NOISE = 0.5  # norm of the Gaussian noise added to each repeated passage vector (before normalising)


def base_vectors(work: Path) -> np.ndarray:
    """Return the all-MiniLM-L6-v2 vectors of the bundled passages (encoded once, cached in ``work``)."""
    path = work / "passages.f4.npy"
    if not path.exists():
        import pyterrier_gdr  # noqa: F401
        from pyterrier_gdr.datasets import load_corpus
        from pyterrier_gdr.encoding import DocumentEncoder

        texts = [f"{d['title']}. {d['text']}" for source in ("irds:pyterrier-gdr/squad-dev", "irds:pyterrier-gdr/wiki-slice") for d in load_corpus(source)]
        work.mkdir(parents=True, exist_ok=True)
        np.save(path, DocumentEncoder().encode(texts))
    return np.load(path)


def build(work: Path, size: int) -> None:
    """Write the FlexIndex and the GDR index (with an untrained model) of ``size`` vectors."""
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
    base = base_vectors(work)

    def records():
        for start in range(0, size, 65536):
            rows = np.arange(start, min(size, start + 65536))
            noise = rng.standard_normal((len(rows), base.shape[1])).astype(np.float32) * (NOISE / np.sqrt(base.shape[1]))
            block = base[rows % len(base)] + noise
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
    reset_peak_rss()
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
        pipeline = encode >> flex.faiss_ivf_retriever(num_results=100, n_probe=IVF_PROBES)
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
    if method.startswith("GDR"):
        scored = ranker.work.documents_per_query()
    elif method.startswith("IVF"):
        scored = IVF_PROBES * size / math.ceil(math.sqrt(size))  # pyterrier-dr's default: sqrt(n) lists, about n / lists documents each
    else:
        scored = float(size)
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
          f"faiss_ivf_retriever, {IVF_PROBES} probes of sqrt(n) lists. Overlap@100: share of the exact top 100 (flat inner product over "
          f"the same query vectors) retrieved. Documents: 6,924 real passage vectors repeated with noise of norm {NOISE}.\n")
    print(markdown_table(rows, ["documents", "method", "queries/s", "overlap@100", "docs scored/q", "peak RSS (MiB)"]))


if __name__ == "__main__":
    main()
