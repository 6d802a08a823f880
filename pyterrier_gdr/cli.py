"""The ``pyterrier-gdr`` command."""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import List, Optional

__all__ = ["main"]

logger = logging.getLogger("pyterrier_gdr.cli")


def _experiment(args: argparse.Namespace) -> int:
    from pyterrier_gdr.experiment import load_experiment, run_experiment

    config = load_experiment(args.file)
    if args.output:
        config.output = Path(args.output).resolve()
    if args.cache:
        config.cache = Path(args.cache).resolve()
    started = time.perf_counter()
    result = run_experiment(config, verbose=not args.quiet)
    print()
    print((config.output / "results.md").read_text(encoding="utf-8"))
    if result.tuned:
        print("Tuned on dev:", ", ".join(f"{name}: {params}" for name, params in result.tuned.items()))
    print(f"Wrote {len(result.files)} files to {config.output} in {time.perf_counter() - started:.0f} s")
    return 0


def _tree_stats(args: argparse.Namespace) -> int:
    from pyterrier_gdr.index import GDRIndex

    index = GDRIndex(args.index)
    stats = index.tree.stats()
    sizes = index.tree.leaf_sizes()
    print(f"{args.index}: {stats['documents']:,} documents in {stats['leaves']:,} leaves, depth {stats['depth_min']}-{stats['depth_max']}")
    print()
    print("| leaf size | leaves | share |")
    print("| ---: | ---: | ---: |")
    edges = [1, 2, 3, 5, 10, 20, 30, 50, 100]
    for low, high in zip(edges, edges[1:] + [None]):
        count = int(((sizes >= low) & ((sizes < high) if high else True)).sum())
        label = f"{low}" if high == low + 1 else (f"{low}-{high - 1}" if high else f">= {low}")
        print(f"| {label} | {count:,} | {count / len(sizes):.1%} |")
    return 0


def _add_documents(args: argparse.Namespace) -> int:
    from pyterrier_gdr.datasets import load_corpus
    from pyterrier_gdr.index import GDRIndex

    index = GDRIndex(args.index, verbose=not args.quiet)
    corpus = load_corpus(args.documents)
    docs = corpus
    if args.title_in_text:
        docs = ({**d, "text": f"{d['title']}. {d['text']}" if d["title"] else d["text"]} for d in corpus)
    result = index.add_documents(docs, max_leaf_size=args.max_leaf_size, split_oversized=args.split_oversized, count=corpus.count)
    print(f"added {result.added:,} documents in {result.seconds:.1f} s; {args.index} now holds {result.doc_count:,}")
    if result.oversized_leaves:
        largest = max(result.oversized_leaves.values())
        action = "split them; retrain the generator before using it" if result.split else "rerun with --split-oversized to split them (then retrain)"
        print(f"{len(result.oversized_leaves)} leaves exceed the size limit (largest: {largest}); {action}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pyterrier-gdr", description="Generative Dense Retrieval for PyTerrier")
    commands = parser.add_subparsers(dest="command", required=True)

    experiment = commands.add_parser("experiment", help="run a declarative experiment file (TOML)")
    experiment.add_argument("file", help="the experiment file, e.g. examples/squad.toml")
    experiment.add_argument("--output", help="results folder (overrides the file's 'output')")
    experiment.add_argument("--cache", help="index and model cache folder (overrides the file's 'cache')")
    experiment.add_argument("--quiet", action="store_true", help="hide progress bars")
    experiment.set_defaults(handler=_experiment)

    add = commands.add_parser("add-documents", help="add documents to a GDR index without retraining")
    add.add_argument("index", help="the GDR index directory")
    add.add_argument("documents", help="the new documents: a JSONL file (docno, text, optional title) or an irds: id")
    add.add_argument("--title-in-text", action="store_true", help="prefix each text with its title, as the experiment does with title_in_text")
    add.add_argument("--max-leaf-size", type=int, help="report leaves larger than this (default: twice the tree's leaf size)")
    add.add_argument("--split-oversized", action="store_true", help="re-cluster oversized leaves (changes CIDs: retrain the generator)")
    add.add_argument("--quiet", action="store_true", help="hide progress bars")
    add.set_defaults(handler=_add_documents)

    tree = commands.add_parser("tree-stats", help="print the leaf-size distribution of a GDR index")
    tree.add_argument("index", help="the GDR index directory")
    tree.set_defaults(handler=_tree_stats)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("faiss.loader", "sentence_transformers", "httpx", "pyterrier_pisa", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # bitsandbytes (installed for the reader) warns on import that its optional CPU kernels are not cached.
    for noisy in ("kernels", "bitsandbytes"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    from pyterrier_gdr.experiment import ExperimentError
    from pyterrier_gdr.index import IndexFormatError

    try:
        return args.handler(args)
    except (ExperimentError, IndexFormatError, FileNotFoundError, FileExistsError) as e:
        print(f"pyterrier-gdr: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
