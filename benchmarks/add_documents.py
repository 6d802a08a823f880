"""Adding 10% new documents vs rebuilding, on a bundled set (the Wikipedia slice or SQuAD).

Some articles are held out (about 10% of the passages). Path "add": build and train on the
rest, then add the held-out passages with GDRIndex.add_documents (no retraining), in each
of its centroid modes (added, mean, keep). Path "rebuild": build and train on everything.
All are scored by R@100 and answer accuracy@20 on the real questions whose relevant passages
lie in the held-out articles. The routings: GDR's generator alone, the generator plus the
groups of added documents that centroid routing with as many clusters would choose (the
generator's default), and centroid routing (over leaves and groups), each at 10 and 20
clusters. A
sample of the other questions checks that the additions cost the old documents nothing.

The Wikipedia slice (4,857 passages, 130 questions, no training questions) leaves only a
handful of questions on the held-out articles, so one question moves R@100 by several
points. On the SQuAD set (2,067 passages, 9,570 questions) about a thousand questions fall
on the held-out articles: the add path trains on the training questions of the remaining
articles only, the rebuild on all of them, and both are scored on the test questions.

With ``--folds N`` the whole comparison runs N times. Each time it holds out the next
``share`` of the articles of one seeded order, so the held-out sets do not overlap. The
table pools the questions of all folds: on the Wikipedia slice, 3 folds score 30 questions
against 14 for one.

    python benchmarks/add_documents.py [--dataset wiki-slice|squad-dev] [--share 0.1] [--folds 1] [--epochs 1] [--work DIR]
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
    parser.add_argument("--dataset", choices=["wiki-slice", "squad-dev"], default="wiki-slice")
    parser.add_argument("--share", type=float, default=0.1, help="share of passages held out, taken as whole articles")
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--pseudo-queries", type=int, default=3, help="pseudo-queries per passage")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--folds", type=int, default=1, help="disjoint held-out sets compared in turn, their questions pooled")
    parser.add_argument("--other-questions", type=int, default=500, help="questions on the other articles scored too (a seeded sample)")
    parser.add_argument("--added-clusters", type=int, default=None,
                        help="the generator adds the groups that centroid routing with this many clusters chooses (default: as many as it decodes)")
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

    corpus = load_corpus(f"irds:pyterrier-gdr/{args.dataset}")
    docs = [{"docno": d["docno"], "title": d["title"], "text": f"{d['title']}. {d['text']}"} for d in corpus]
    articles = sorted({d["title"] for d in docs})
    passages_of = {article: 0 for article in articles}
    for d in docs:
        passages_of[d["title"]] += 1
    # Fold f holds out the f-th run of articles, in one seeded order, that reaches `share` of the passages.
    folds, current, held_passages = [], set(), 0
    for article in np.random.default_rng(args.seed).permutation(articles):
        current.add(article)
        held_passages += passages_of[article]
        if held_passages >= args.share * len(docs) * (len(folds) + 1):
            folds.append(current)
            current = set()
        if len(folds) == args.folds:
            break
    if len(folds) < args.folds:
        parser.error(f"--folds {args.folds} is too many: {args.share:.0%} of the passages per fold fits {len(folds)} times")

    if args.dataset == "squad-dev":
        evaluation = [load_questions("irds:pyterrier-gdr/squad-dev/test")]
        training_questions = load_questions("irds:pyterrier-gdr/squad-dev/train")
    else:
        evaluation = [load_questions("irds:pyterrier-gdr/wiki-slice/dev"), load_questions("irds:pyterrier-gdr/wiki-slice/test")]
        training_questions = None
    answers = {k: v for q in evaluation for k, v in q.answers.items()}
    measures = AnswerMeasures(answers, passage_text=corpus.texts)
    tree = ClusterTreeConfig(adaptive=True)
    training = TrainingConfig(epochs=args.epochs, pseudo_queries_per_doc=args.pseudo_queries, checkpoint_every=0, seed=args.seed)
    work = Path(args.work)

    def compare(held_articles):
        """Run the add paths and the rebuild with these articles held out; return the rows and a summary."""
        new = [d for d in docs if d["title"] in held_articles]
        old = [d for d in docs if d["title"] not in held_articles]
        new_docnos = {d["docno"] for d in new}

        def on_new_documents(question_set, keep):
            qrels = question_set.qrels
            chosen = set(qrels[qrels["docno"].isin(new_docnos)]["qid"])
            if not keep:
                chosen = set(qrels["qid"]) - chosen
            return (question_set.topics[question_set.topics["qid"].isin(chosen)].reset_index(drop=True),
                    qrels[qrels["qid"].isin(chosen)].reset_index(drop=True))

        empty = pd.DataFrame(columns=["qid", "query"]), pd.DataFrame(columns=["qid", "docno", "label"])
        if training_questions is not None:
            train_old = on_new_documents(training_questions, keep=False)
            train_all = (training_questions.topics, training_questions.qrels)
        else:
            train_old = train_all = empty
        pairs = [on_new_documents(q, keep=True) for q in evaluation]
        topics = pd.concat([t for t, _ in pairs], ignore_index=True)
        qrels = pd.concat([r for _, r in pairs], ignore_index=True)
        others = [on_new_documents(q, keep=False) for q in evaluation]
        other_topics = pd.concat([t for t, _ in others], ignore_index=True)
        other_topics = other_topics.sample(n=min(args.other_questions, len(other_topics)), random_state=args.seed).reset_index(drop=True)
        other_qrels = pd.concat([r for _, r in others], ignore_index=True)
        other_qrels = other_qrels[other_qrels["qid"].isin(other_topics["qid"])].reset_index(drop=True)

        shutil.rmtree(work, ignore_errors=True)

        def build_and_train(path, corpus_docs, train):
            started = time.perf_counter()
            index = GDRIndex.build(path, corpus_docs, encoder=default_encoder_path(), tree=tree, verbose=False)
            index.train(*train, corpus=corpus_docs, config=training)
            return time.perf_counter() - started

        def add(path, centroids):
            shutil.copytree(work / "old.gdr", path)
            started = time.perf_counter()
            GDRIndex(path, verbose=False).add_documents(new, centroids=centroids)
            return time.perf_counter() - started

        build_and_train(work / "old.gdr", old, train_old)
        paths = [(f"add, centroids={mode}", work / f"added-{mode}.gdr", add(work / f"added-{mode}.gdr", mode)) for mode in ("added", "mean", "keep")]
        rebuild_seconds = build_and_train(work / "rebuilt.gdr", docs, train_all)
        paths.append(("rebuild + retrain", work / "rebuilt.gdr", rebuild_seconds))
        # Ablation: the rebuild's clusters with the query encoder trained before the addition, scored by centroid
        # routing only (the generator's CIDs belong to the old tree). It separates gains from clusters and from training.
        shutil.copytree(work / "rebuilt.gdr", work / "ablation.gdr")
        shutil.rmtree(work / "ablation.gdr" / "model")
        shutil.copytree(work / "old.gdr" / "model", work / "ablation.gdr" / "model")
        paths.append(("rebuilt clusters, add path's query encoder", work / "ablation.gdr", float("nan")))

        rows = []
        for name, path, seconds in paths:
            index = GDRIndex(path, verbose=False)
            routers, names = [], []
            for clusters in (10, 20):
                if path.name != "ablation.gdr":
                    for added in (0, args.added_clusters):
                        routers.append(index.cluster_generator(num_clusters=clusters, added_clusters=added))
                        label = f"generator, {clusters} clusters"
                        if added is None:
                            label += " + groups"
                        elif added:
                            label += f" + groups of {added}"
                        names.append(label)
                routers.append(index.centroid_router(num_clusters=clusters))
                names.append(f"centroid, {clusters} clusters")
            rankers = [index.intra_cluster_ranker(num_results=100, alpha=0.0) for _ in routers]
            pipelines = [router >> ranker for router, ranker in zip(routers, rankers)]
            table = pt.Experiment(pipelines, topics, qrels, [ir_measures.R @ 100, measures.accuracy(20)], names=names)
            documents = {label: ranker.work.documents_per_query() for label, ranker in zip(names, rankers)}
            other = pt.Experiment(pipelines, other_topics, other_qrels, [ir_measures.R @ 100], names=names).set_index("name")["R@100"]
            for _, row in table.iterrows():
                rows.append({"path": name, "seconds": seconds, "share": seconds / rebuild_seconds, "routing": row["name"],
                             "recall": row["R@100"], "accuracy": row["AnswerAcc@20"], "documents": documents[row["name"]],
                             "other": other[row["name"]]})
        # Added documents make the old leaves larger, so the same number of clusters scores more documents.
        # The rebuild's recall at equal cost is interpolated from its curve over cluster counts.
        rebuilt = GDRIndex(work / "rebuilt.gdr", verbose=False)
        curves = {}
        for family in ("generator", "centroid"):
            points = []
            for clusters in range(4, 61, 4):
                router = rebuilt.cluster_generator(num_clusters=clusters) if family == "generator" else rebuilt.centroid_router(num_clusters=clusters)
                ranker = rebuilt.intra_cluster_ranker(num_results=100, alpha=0.0)
                recall = pt.Experiment([router >> ranker], topics, qrels, [ir_measures.R @ 100])["R@100"].iloc[0]
                points.append((ranker.work.documents_per_query(), recall))
            curves[family] = np.array(sorted(points))
        for row in rows:
            curve = curves[row["routing"].split(",")[0]]
            inside = curve[0, 0] <= row["documents"] <= curve[-1, 0]
            row["recall at equal cost"] = np.interp(row["documents"], curve[:, 0], curve[:, 1]) if inside else float("nan")
        summary = {"old": len(old), "new": len(new), "articles": len(held_articles), "questions": len(topics),
                   "other questions": len(other_topics), "training": len(train_old[0]), "training (rebuild)": len(train_all[0])}
        return rows, summary

    results = []
    for number, held_articles in enumerate(folds):
        rows, summary = compare(held_articles)
        for row in rows:
            row.update(fold=number, questions=summary["questions"], others=summary["other questions"])
        results.append((rows, summary))

    # Pool the folds: each question counts once, so folds are weighted by their questions.
    frame = pd.DataFrame([row for rows, _ in results for row in rows])
    pooled = []
    for (path, routing), group in frame.groupby(["path", "routing"], sort=False):
        weights = group["questions"].to_numpy(dtype=float)

        def mean(column, w=weights):
            values = group[column].to_numpy(dtype=float)
            keep = ~np.isnan(values)
            return float(np.average(values[keep], weights=w[keep])) if keep.any() and w[keep].sum() > 0 else float("nan")

        pooled.append({"path": path, "routing": routing, "seconds": group["seconds"].mean(), "share": group["share"].mean(),
                       "recall": mean("recall"), "accuracy": mean("accuracy"), "documents": mean("documents"),
                       "other": mean("other", group["others"].to_numpy(dtype=float)),
                       "gap at equal cost": mean("recall") - mean("recall at equal cost")
                       if not group["recall at equal cost"].isna().any() else float("nan")})
    rebuilt_recall = {row["routing"]: row["recall"] for row in pooled if row["path"] == "rebuild + retrain"}
    table_rows = []
    for row in pooled:
        timed = row["seconds"] == row["seconds"]  # NaN for the ablation, which is not a way to build an index
        gap = row["gap at equal cost"]
        table_rows.append({
            "path": row["path"], "seconds": f"{row['seconds']:,.2f}" if timed else "n/a",
            "share of rebuild": f"{row['share']:.3f}" if timed else "n/a", "routing": row["routing"],
            "R@100 (new-document questions)": f"{row['recall']:.3f}",
            # The gap in R@100 points to the full rebuild with the same routing (there, "+ groups" finds none).
            "R@100 vs rebuild (points)": f"{100 * (row['recall'] - rebuilt_recall[row['routing']]):+.1f}",
            "docs scored/q": f"{row['documents']:.1f}",
            "vs rebuild at equal cost (points)": f"{100 * gap:+.1f}" if gap == gap else "n/a",
            "AnswerAcc@20": f"{row['accuracy']:.3f}", "R@100 (other questions)": f"{row['other']:.3f}",
        })

    summaries = [summary for _, summary in results]
    questions = sum(s["questions"] for s in summaries)
    print(f"# Adding documents vs rebuilding\n\nMachine: {machine()}\n\nCommand: `{command()}`\n")
    for number, summary in enumerate(summaries):
        source = (f"{summary['training']:,} training questions on the first passages ({summary['training (rebuild)']:,} for the rebuild) and "
                  if summary["training (rebuild)"] else "")
        fold = f"Fold {number + 1} of {len(summaries)}: " if len(summaries) > 1 else ""
        print(f"{fold}{args.dataset}: {summary['old']:,} passages indexed first, {summary['new']:,} added ({summary['articles']} held-out articles, "
              f"{summary['new'] / len(docs):.1%}); {summary['questions']} real questions have relevant passages among the added ones. "
              f"Training: {args.epochs:g} epoch(s) of {source}{args.pseudo_queries} pseudo-queries per passage.\n")
    pooled_note = f"pooled over {len(summaries)} folds, " if len(summaries) > 1 else ""
    print(f"{questions} questions in all ({pooled_note}one question moves R@100 by up to {100 / max(questions, 1):.1f} points). "
          f"Other questions: a sample of up to {args.other_questions} per fold whose relevant passages were indexed first. Equal cost: the "
          "rebuild's R@100 with the same routing at the same documents scored per query, interpolated over 4-60 clusters. "
          "Seconds: mean over folds.\n")
    print(markdown_table(table_rows, [
        "path", "seconds", "share of rebuild", "routing", "R@100 (new-document questions)", "R@100 vs rebuild (points)",
        "docs scored/q", "vs rebuild at equal cost (points)", "AnswerAcc@20", "R@100 (other questions)",
    ]))

if __name__ == "__main__":
    main()
