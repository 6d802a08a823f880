"""Adding 10% new documents vs rebuilding, on the bundled Wikipedia slice.

Some articles are held out (about 10% of the passages). Path "add": build and train on the
rest, then add the held-out passages with GDRIndex.add_documents (no retraining). Path
"rebuild": build and train on everything. Both are scored on the real questions whose
relevant passages lie in the held-out articles, by R@100 and answer accuracy@20, for
GDR's generator and for centroid routing. The slice is small (4,857 passages, 130
questions), so only a handful of questions fall on the held-out articles: read the
recall figures as a sanity check, not a measurement.

    python benchmarks/add_documents.py [--share 0.1] [--epochs 1] [--work /tmp/gdr-add]
"""
from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd

from _common import command, machine, markdown_table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--share", type=float, default=0.1, help="share of passages held out, taken as whole articles")
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--pseudo-queries", type=int, default=3, help="pseudo-queries per passage")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", default="/tmp/pyterrier-gdr-add")
    args = parser.parse_args()

    import ir_measures
    import pyterrier as pt

    import pyterrier_gdr  # noqa: F401
    from pyterrier_gdr._util import default_encoder_path
    from pyterrier_gdr.clusters import ClusterTreeConfig
    from pyterrier_gdr.datasets import load_corpus, load_questions
    from pyterrier_gdr.index import GDRIndex
    from pyterrier_gdr.measures import AnswerMeasures
    from pyterrier_gdr.training import TrainingConfig

    corpus = load_corpus("irds:pyterrier-gdr/wiki-slice")
    docs = [{"docno": d["docno"], "title": d["title"], "text": f"{d['title']}. {d['text']}"} for d in corpus]
    articles = sorted({d["docno"].split("-")[0] for d in docs})
    rng = np.random.default_rng(args.seed)
    held_articles, held = set(), 0
    for article in rng.permutation(articles):
        if held >= args.share * len(docs):
            break
        held_articles.add(article)
        held += sum(d["docno"].split("-")[0] == article for d in docs)
    new = [d for d in docs if d["docno"].split("-")[0] in held_articles]
    old = [d for d in docs if d["docno"].split("-")[0] not in held_articles]

    questions = [load_questions("irds:pyterrier-gdr/wiki-slice/dev"), load_questions("irds:pyterrier-gdr/wiki-slice/test")]
    topics = pd.concat([q.topics for q in questions], ignore_index=True)
    qrels = pd.concat([q.qrels for q in questions], ignore_index=True)
    answers = {k: v for q in questions for k, v in q.answers.items()}
    new_docnos = {d["docno"] for d in new}
    on_new = set(qrels[qrels["docno"].isin(new_docnos)]["qid"])
    topics = topics[topics["qid"].isin(on_new)].reset_index(drop=True)
    qrels = qrels[qrels["qid"].isin(on_new)].reset_index(drop=True)
    empty = pd.DataFrame(columns=["qid", "query"]), pd.DataFrame(columns=["qid", "docno", "label"])

    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    tree = ClusterTreeConfig(adaptive=True)
    training = TrainingConfig(epochs=args.epochs, pseudo_queries_per_doc=args.pseudo_queries, checkpoint_every=0, seed=args.seed)

    def build_and_train(path, corpus_docs):
        started = time.perf_counter()
        index = GDRIndex.build(path, corpus_docs, encoder=default_encoder_path(), tree=tree, verbose=False)
        index.train(*empty, corpus=corpus_docs, config=training)
        return GDRIndex(path, verbose=False), time.perf_counter() - started

    added, _ = build_and_train(work / "added.gdr", old)
    started = time.perf_counter()
    added.add_documents(new)
    add_seconds = time.perf_counter() - started
    rebuilt, rebuild_seconds = build_and_train(work / "rebuilt.gdr", docs)

    measures = AnswerMeasures(answers, passage_text=corpus.texts)
    rows = []
    for name, index, seconds in (("add (no retraining)", GDRIndex(work / "added.gdr", verbose=False), add_seconds), ("rebuild + retrain", rebuilt, rebuild_seconds)):
        pipelines = [
            index.cluster_generator(num_clusters=10) >> index.intra_cluster_ranker(num_results=100, alpha=0.0),
            index.centroid_router(num_clusters=10) >> index.intra_cluster_ranker(num_results=100, alpha=0.0),
        ]
        table = pt.Experiment(pipelines, topics, qrels, [ir_measures.R @ 100, measures.accuracy(20)], names=["generator", "centroid"])
        for _, row in table.iterrows():
            rows.append({"path": name, "seconds": seconds, "share of rebuild": seconds / rebuild_seconds, "routing": row["name"],
                         "R@100 (new-document questions)": row["R@100"], "AnswerAcc@20": row["AnswerAcc@20"]})

    print(f"# Adding documents vs rebuilding\n\nMachine: {machine()}\n\nCommand: `{command()}`\n")
    print(f"Wikipedia slice: {len(old):,} passages indexed first, {len(new):,} added ({len(held_articles)} held-out articles, "
          f"{len(new) / len(docs):.1%}); {len(topics)} real questions have relevant passages among the added ones. "
          f"Training: {args.epochs:g} epoch(s) of {args.pseudo_queries} pseudo-queries per passage (no training questions in the slice).\n")
    print(markdown_table(rows, ["path", "seconds", "share of rebuild", "routing", "R@100 (new-document questions)", "AnswerAcc@20"]))


if __name__ == "__main__":
    main()
