"""Writing an experiment's tables, run files and plots."""
from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path
from typing import Dict, List

import numpy as np
import pandas as pd
import pyterrier as pt

from pyterrier_gdr._util import atomic_write_json
from pyterrier_gdr.measures import AnswerMeasures

__all__ = ["write_report", "answer_accuracy_curve"]

MAX_K = 100


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "pipeline"


def answer_accuracy_curve(run: pd.DataFrame, answers: AnswerMeasures, *, max_k: int = MAX_K) -> np.ndarray:
    """Return top-k answer accuracy for k = 1..max_k: the share of questions with an answer in their top k passages.

    Args:
        run: ``qid, docno, score`` (ranked by score within each query).
        answers: the gold answers and passage texts; every question with answers counts,
            also those the run returned nothing for.
    """
    first_hit = {}
    ranked = run.sort_values(["qid", "score"], ascending=[True, False]).groupby("qid", sort=False).head(max_k)
    for qid, group in ranked.groupby("qid", sort=False):
        hits = answers.contains_answer(str(qid), group["docno"].astype(str).tolist())
        if any(hits):
            first_hit[str(qid)] = hits.index(True)
    ranks = np.array([first_hit.get(qid, np.inf) for qid in answers.answers], dtype=float)
    if len(ranks) == 0:
        return np.zeros(max_k)
    return np.array([(ranks < k).mean() for k in range(1, max_k + 1)])


def _save(figure, path: Path) -> Path:
    """Write ``figure`` as a PNG at ``path``, close it, and return ``path``."""
    import matplotlib.pyplot as plt

    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def _plots(result, config, answers, test, resources, output: Path) -> List[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    caption = f"{config.name}: {len(test)} test questions, {resources.corpus.count:,} passages"
    curves = {}
    # One colour per pipeline, the same in both plots.
    colors = {name: f"C{i}" for i, name in enumerate(result.full_table["name"])}
    if any(test.answers.values()):
        for name, run in result.runs.items():
            if {"docno", "score"} <= set(run.columns):
                curves[name] = answer_accuracy_curve(run, answers)
    if curves:
        figure, axis = plt.subplots(figsize=(7, 4.5))
        for name, curve in curves.items():
            axis.plot(np.arange(1, MAX_K + 1), curve, label=name, color=colors[name])
        axis.set_xscale("log")
        axis.set_xlabel("k (passages read)")
        axis.set_ylabel("top-k answer accuracy")
        axis.set_title(caption, fontsize=9)
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize=8)
        files.append(_save(figure, output / "answer_accuracy.png"))

    # Reader pipelines: exact match and token F1 side by side.
    reader_columns = [c for c in ("EM", "F1") if c in result.full_table.columns]
    if reader_columns:
        figure, axis = plt.subplots(figsize=(7, 4.5))
        names = list(result.full_table["name"])
        width = 0.8 / len(reader_columns)
        for i, column in enumerate(reader_columns):
            values = result.full_table[column].astype(float)
            positions = np.arange(len(names)) + (i - (len(reader_columns) - 1) / 2) * width
            axis.bar(positions, values, width, label=column, color=f"C{i}")
        axis.set_xticks(np.arange(len(names)))
        axis.set_xticklabels(names, rotation=20, ha="right", fontsize=8)
        axis.set_ylabel("score")
        axis.set_title(caption, fontsize=9)
        axis.grid(True, axis="y", alpha=0.3)
        axis.legend(fontsize=8)
        files.append(_save(figure, output / "answers.png"))

    # Accuracy per unit of work: the tuning measure against documents scored.
    measure = config.tune_measure
    column = next((c for c in result.full_table.columns if str(c) == measure), None)
    costs = result.full_table["docs scored/q"].astype(float)
    if column is not None and costs.notna().any():
        figure, axis = plt.subplots(figsize=(7, 4.5))
        shown = 0
        for name, cost, value in zip(result.full_table["name"], costs, result.full_table[column].astype(float)):
            if np.isnan(cost):
                continue
            axis.scatter([cost], [value], s=40, color=colors[name], label=name)
            # Alternate the label offsets, so pipelines at nearly the same point stay readable.
            axis.annotate(name, (cost, value), textcoords="offset points", xytext=(6, 6 if shown % 2 == 0 else -12), fontsize=8)
            shown += 1
        skipped = [n for n, c in zip(result.full_table["name"], costs) if np.isnan(c)]
        axis.set_xscale("log")
        axis.set_xlabel("documents scored per query (log scale)")
        axis.set_ylabel(measure)
        note = f"; not shown (cost not reported): {', '.join(skipped)}" if skipped else ""
        axis.set_title(textwrap.fill(caption + note, 110), fontsize=8)
        axis.grid(True, which="both", alpha=0.3)
        files.append(_save(figure, output / "cost.png"))
    return files


def write_report(result, config, scans: Dict[str, pd.DataFrame], answers, test, resources) -> List[Path]:
    """Write the result files into ``config.output``; return their paths."""
    output = Path(config.output)
    (output / "runs").mkdir(parents=True, exist_ok=True)
    files = []

    path = output / "results.csv"
    result.full_table.to_csv(path, index=False)
    files.append(path)

    bm25_note = " (n/a for BM25, whose work PISA does not report)" if any(p.components[0] == "bm25" for p in config.pipelines) else ""
    header = (
        f"# {config.name}\n\n"
        f"Corpus `{config.corpus}` ({resources.corpus.count:,} passages); test questions `{config.test}` ({len(test):,}). "
        f"`*`: significantly different from the baseline ({config.baseline}), paired t-test, {config.correction} correction, "
        "p < 0.05. `mrt (ms)`: mean response time per query on this machine; `docs scored/q`: documents whose "
        f"score was computed per query{bm25_note}.\n\n"
    )
    path = output / "results.md"
    path.write_text(header + result.table.to_markdown(index=False) + "\n", encoding="utf-8")
    files.append(path)

    atomic_write_json(output / "tuning.json", result.tuned)
    files.append(output / "tuning.json")
    for name, scan in scans.items():
        path = output / f"tuning-{_slug(name)}.csv"
        scan.to_csv(path, index=False)
        files.append(path)

    for name, run in result.runs.items():
        if {"qid", "docno", "score"} <= set(run.columns):
            path = output / "runs" / f"{_slug(name)}.res.gz"
            pt.io.write_results(run, str(path))
            files.append(path)
        elif {"qid", "qanswer"} <= set(run.columns):
            # Reader pipelines: one generated answer per question, as JSON lines.
            path = output / "runs" / f"{_slug(name)}.answers.jsonl"
            columns = [c for c in ("qid", "query", "qanswer") if c in run.columns]
            run[columns].to_json(path, orient="records", lines=True, force_ascii=False)
            files.append(path)

    files.extend(_plots(result, config, answers, test, resources, output))
    with open(output / "settings.json", "w", encoding="utf-8") as fout:
        json.dump({"source": str(config.source), "gdr": resources.gdr_settings()}, fout, indent=2, default=str)
    files.append(output / "settings.json")
    return files
