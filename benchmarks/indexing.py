"""Indexing throughput: GDRIndex.build vs pyterrier-dr's FlexIndex with the same encoder, and k-means time.

Both encode the bundled passages (SQuAD paragraphs and the Wikipedia slice) with the
offline all-MiniLM-L6-v2 at the same batch size, alternating over rounds so that load on
the machine hits both alike. GDR's build also clusters the vectors; its k-means time is
shown apart, and k-means alone is timed on random unit vectors at larger sizes.

    python benchmarks/indexing.py [--rounds 2] [--batch-size 32] [--kmeans-sizes 100000 1000000]
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from _common import command, machine, markdown_table


def corpus():
    import pyterrier_gdr  # noqa: F401
    from pyterrier_gdr.datasets import load_corpus

    docs = []
    for source in ("irds:pyterrier-gdr/squad-dev", "irds:pyterrier-gdr/wiki-slice"):
        for doc in load_corpus(source):
            docs.append({"docno": doc["docno"], "text": f"{doc['title']}. {doc['text']}"})
    return docs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--docs", type=int, default=None, help="index only the first N passages")
    parser.add_argument("--kmeans-sizes", type=int, nargs="*", default=[100_000, 1_000_000])
    args = parser.parse_args()

    import pyterrier_dr

    from pyterrier_gdr._util import default_encoder_path
    from pyterrier_gdr.clusters import ClusterTreeConfig, build_cluster_tree
    from pyterrier_gdr.encoding import DocumentEncoder
    from pyterrier_gdr.index import GDRIndex

    docs = corpus()[: args.docs]
    encoder = DocumentEncoder(default_encoder_path(), batch_size=args.batch_size)
    bi_encoder = pyterrier_dr.SBertBiEncoder(default_encoder_path(), batch_size=args.batch_size)
    encoder.encode(["warm-up"])
    bi_encoder.encode_docs(["warm-up"])
    work = Path(tempfile.mkdtemp(prefix="gdr-indexing-"))
    seconds = {"GDRIndex.build (pyterrier-gdr)": [], "FlexIndex (pyterrier-dr)": []}
    kmeans = []
    try:
        for round_number in range(args.rounds):
            started = time.perf_counter()
            index = GDRIndex.build(work / f"gdr{round_number}", docs, encoder=encoder, tree=ClusterTreeConfig(adaptive=True), verbose=False)
            seconds["GDRIndex.build (pyterrier-gdr)"].append(time.perf_counter() - started)
            kmeans.append(index.config["build"]["kmeans_seconds"])

            started = time.perf_counter()
            flex = pyterrier_dr.FlexIndex(str(work / f"flex{round_number}"), verbose=False)
            (bi_encoder.doc_encoder() >> flex).index(docs)
            seconds["FlexIndex (pyterrier-dr)"].append(time.perf_counter() - started)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    reference = statistics.median(seconds["FlexIndex (pyterrier-dr)"])
    rows = []
    for name, values in seconds.items():
        median = statistics.median(values)
        rows.append({"indexer": name, "documents": len(docs), "median seconds": median, "documents/s": len(docs) / median,
                     "vs pyterrier-dr": reference / median, "of which k-means (s)": statistics.median(kmeans) if name.startswith("GDR") else ""})

    kmeans_rows = []
    for size in args.kmeans_sizes:
        vectors = np.random.default_rng(size).standard_normal((size, 384)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        for adaptive in (False, True):
            started = time.perf_counter()
            tree = build_cluster_tree(vectors, ClusterTreeConfig(adaptive=adaptive))
            kmeans_rows.append({"documents": size, "tree": "30/30 adaptive" if adaptive else "30/30 (paper)", "seconds": time.perf_counter() - started,
                                "leaves": tree.num_leaves, "median leaf size": tree.stats()["leaf_size_median"]})
        del vectors

    print(f"# Indexing\n\nMachine: {machine()}\n\nCommand: `{command()}`\n")
    print(f"Encoder: all-MiniLM-L6-v2 (offline), batch size {args.batch_size}, {args.rounds} alternating rounds (median shown).\n")
    print(markdown_table(rows, ["indexer", "documents", "median seconds", "documents/s", "vs pyterrier-dr", "of which k-means (s)"]))
    if kmeans_rows:
        print("\nHierarchical k-means alone on random unit vectors (384-d):\n")
        print(markdown_table(kmeans_rows, ["documents", "tree", "seconds", "leaves", "median leaf size"]))
    print("\n" + json.dumps({k: v for k, v in seconds.items()}), file=__import__("sys").stderr)


if __name__ == "__main__":
    main()
