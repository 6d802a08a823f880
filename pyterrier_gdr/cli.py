"""The ``pyterrier-gdr`` command."""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import warnings
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
    index.meta  # a missing or damaged index fails here, before the documents are read
    title_in_text = args.title_in_text
    recorded = _recorded_title_in_text(index)
    if title_in_text is None:
        title_in_text = bool(recorded)
        if recorded is not None:
            print(f"{args.index} was built by an experiment with title_in_text={recorded}; encoding the new documents the same way")
    elif recorded is not None and title_in_text != recorded:
        print(
            f"warning: {args.index} was built with title_in_text={recorded}, but the new documents are encoded with "
            f"title_in_text={title_in_text}, so their vectors are not comparable; leave --title-in-text out to follow the index",
            file=sys.stderr,
        )
    corpus = load_corpus(args.documents)
    docs = corpus
    if title_in_text:
        docs = ({**d, "text": f"{d['title']}. {d['text']}" if d["title"] else d["text"]} for d in corpus)
    with warnings.catch_warnings():
        # The oversized leaves are reported below, with the CLI's flag, so the library's warning is not repeated.
        warnings.filterwarnings("ignore", message=r".* leaves now hold more than ")
        warnings.filterwarnings("ignore", message=r"split \d+ leaves of ")
        result = index.add_documents(
            docs, max_leaf_size=args.max_leaf_size, split_oversized=args.split_oversized,
            centroids=args.centroids, count=corpus.count,
        )
    noun = "document" if result.added == 1 else "documents"
    print(f"added {result.added:,} {noun} in {result.seconds:.1f} s; {args.index} now holds {result.doc_count:,}")
    if result.oversized_leaves:
        largest = max(result.oversized_leaves.values())
        action = "split them; retrain the generator before using it" if result.split else "rerun with --split-oversized to split them (then retrain)"
        print(f"{len(result.oversized_leaves)} leaves exceed the size limit (largest: {largest}); {action}")
    return 0


def _recorded_title_in_text(index) -> Optional[bool]:
    """Return the ``title_in_text`` an experiment recorded for ``index``, or None where none is recorded."""
    settings_path = index.path / "experiment_settings.json"
    if not settings_path.exists():
        return None
    with open(settings_path, encoding="utf-8") as fin:
        value = json.load(fin).get("title_in_text")
    return None if value is None else bool(value)


def _parse_settings(pairs: List[str], where: str) -> dict:
    """Parse ``key=value`` pairs; values are read as TOML (numbers, booleans, quoted strings), else as text."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib

    settings = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise ValueError(f"{where} setting {pair!r} is not key=value")
        key, value = pair.split("=", 1)
        try:
            settings[key.strip()] = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            settings[key.strip()] = value
    return settings


def _documents(source: str, title_in_text: bool):
    from pyterrier_gdr.datasets import load_corpus

    corpus = load_corpus(source)
    if not title_in_text:
        return corpus, corpus.count
    return ({**d, "text": f"{d['title']}. {d['text']}" if d["title"] else d["text"]} for d in corpus), corpus.count


def _build(args: argparse.Namespace) -> int:
    from pyterrier_gdr._util import resolve_encoder
    from pyterrier_gdr.clusters import ClusterTreeConfig
    from pyterrier_gdr.encoding import DocumentEncoder
    from pyterrier_gdr.index import GDRIndex

    tree = ClusterTreeConfig.from_dict(_parse_settings(args.tree, "--tree"))
    docs, count = _documents(args.corpus, args.title_in_text)
    encoder = DocumentEncoder(resolve_encoder(args.encoder), batch_size=args.batch_size, verbose=not args.quiet)
    index = GDRIndex.build(args.index, docs, encoder=encoder, tree=tree, count=count, overwrite=args.overwrite, verbose=not args.quiet)
    if index.built():
        stats = index.tree.stats()
        print(f"built {args.index}: {stats['documents']:,} documents in {stats['leaves']:,} leaves (median size {stats['leaf_size_median']:.0f})")
    return 0


def _train(args: argparse.Namespace) -> int:
    from pyterrier_gdr.datasets import load_questions
    from pyterrier_gdr.index import GDRIndex
    from pyterrier_gdr.training import TrainingConfig

    import pandas as pd

    config = TrainingConfig.from_dict(_parse_settings(args.setting, "--setting"))
    index = GDRIndex(args.index, verbose=not args.quiet)
    if args.train:
        questions = load_questions(args.train)
        topics, qrels = questions.topics, questions.qrels
    else:
        topics, qrels = pd.DataFrame(columns=["qid", "query"]), pd.DataFrame(columns=["qid", "docno", "label"])
    corpus = _documents(args.corpus, args.title_in_text)[0] if args.corpus else None
    index.train(topics, qrels, corpus=corpus, config=config, overwrite=args.overwrite)
    record = index.config.get("training", {})
    if record:
        print(f"trained {args.index}: {record['steps']} steps on {record['processes']} process(es) in {record['seconds']:.0f} s")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from pyterrier_gdr.updates import CENTROID_MODES

    parser = argparse.ArgumentParser(prog="pyterrier-gdr", description="Generative Dense Retrieval for PyTerrier")
    commands = parser.add_subparsers(dest="command", required=True)

    experiment = commands.add_parser(
        "experiment", help="run a declarative experiment file (TOML)",
        description="Run a declarative experiment file (TOML).",
    )
    experiment.add_argument("file", help="the experiment file, e.g. examples/squad.toml")
    experiment.add_argument("--output", help="results folder (overrides the file's 'output')")
    experiment.add_argument("--cache", help="index and model cache folder (overrides the file's 'cache')")
    experiment.add_argument("--quiet", action="store_true", help="hide progress bars")
    experiment.set_defaults(handler=_experiment)

    build = commands.add_parser(
        "build", help="encode a corpus and cluster it into a new GDR index (runs under accelerate launch too)",
        description="Encode a corpus and cluster it into a new GDR index (runs under accelerate launch too).",
    )
    build.add_argument("index", help="the index directory to create")
    build.add_argument("corpus", help="a JSONL file (docno, text, optional title) or an irds: id")
    build.add_argument("--encoder", default="all-MiniLM-L6-v2", help="sentence-transformers model path or name (default: the offline all-MiniLM-L6-v2)")
    build.add_argument("--batch-size", type=int, default=32, help="texts per encoder forward pass")
    build.add_argument("--tree", nargs="*", metavar="KEY=VALUE", help="cluster tree settings, e.g. leaf_size=30 adaptive=true")
    build.add_argument("--title-in-text", action="store_true", help="encode 'title. text' instead of the text alone")
    build.add_argument("--overwrite", action="store_true", help="replace an existing index")
    build.add_argument("--quiet", action="store_true", help="hide progress bars")
    build.set_defaults(handler=_build)

    train = commands.add_parser(
        "train", help="train the GDR model of an index (runs under accelerate launch too)",
        description="Train the GDR model of an index (runs under accelerate launch too).",
    )
    train.add_argument("index", help="the GDR index directory")
    train.add_argument("--train", help="training questions: an irds: id or a questions JSONL file (qid, question, relevant)")
    train.add_argument("--corpus", help="the corpus, for pseudo-queries: a JSONL file or an irds: id")
    train.add_argument("--setting", nargs="*", metavar="KEY=VALUE", help="training settings, e.g. epochs=2 batch_size=64")
    train.add_argument("--title-in-text", action="store_true", help="prefix corpus texts with titles, as the index was built")
    train.add_argument("--overwrite", action="store_true", help="replace a trained model")
    train.add_argument("--quiet", action="store_true", help="hide progress bars")
    train.set_defaults(handler=_train)

    add = commands.add_parser(
        "add-documents", help="add documents to a GDR index without retraining",
        description="Add documents to a GDR index without retraining.",
    )
    add.add_argument("index", help="the GDR index directory")
    add.add_argument("documents", help="the new documents: a JSONL file (docno, text, optional title) or an irds: id")
    add.add_argument(
        "--title-in-text", action=argparse.BooleanOptionalAction, default=None,
        help="prefix each text with its title (default: as recorded by the experiment that built the index, else off)",
    )
    add.add_argument("--max-leaf-size", type=int, help="report leaves larger than this (default: twice the tree's leaf size)")
    add.add_argument("--split-oversized", action="store_true", help="re-cluster oversized leaves (changes CIDs: retrain the generator)")
    add.add_argument(
        "--centroids", choices=CENTROID_MODES, default="added",
        help="added: also cluster the documents added since the build into groups that routing finds on their own "
        "(default); mean: recompute the centroids of the leaves that grew; keep: leave the centroids as built",
    )
    add.add_argument("--quiet", action="store_true", help="hide progress bars")
    add.set_defaults(handler=_add_documents)

    from pyterrier_gdr.reader.cli import register as register_reader

    register_reader(commands)

    tree = commands.add_parser(
        "tree-stats", help="print the leaf-size distribution of a GDR index",
        description="Print the leaf-size distribution of a GDR index.",
    )
    tree.add_argument("index", help="the GDR index directory")
    tree.set_defaults(handler=_tree_stats)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "quiet", False):
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()  # e.g. "Loading weights" when a model loads
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("faiss.loader", "sentence_transformers", "httpx", "pyterrier_pisa", "matplotlib", "accelerate"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # bitsandbytes (installed for the reader) warns on import that its optional CPU kernels are not cached.
    for noisy in ("kernels", "bitsandbytes"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    from pyterrier_gdr.experiment import ExperimentError
    from pyterrier_gdr.index import IndexFormatError

    handler = getattr(args, "handler", None) or args.func  # the reader commands set `func`
    try:
        return handler(args)
    except (ExperimentError, IndexFormatError, FileNotFoundError, FileExistsError) as e:
        print(f"pyterrier-gdr: error: {e}", file=sys.stderr)
        return 2
    except ValueError as e:
        # Invalid settings and inputs raise ValueError with a message naming the value and the fix.
        logger.debug("failed", exc_info=True)
        print(f"pyterrier-gdr: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
