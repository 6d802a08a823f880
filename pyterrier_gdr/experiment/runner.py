"""Running an experiment file: build, tune on dev, evaluate on test, report."""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

import ir_measures
import numpy as np
import pandas as pd
import pyterrier as pt

from pyterrier_gdr.experiment.components import ExperimentResources
from pyterrier_gdr.experiment.config import ExperimentConfig, ExperimentError, PipelineSpec
from pyterrier_gdr.measures import AnswerMeasures

__all__ = ["ExperimentResult", "run_experiment"]

logger = logging.getLogger(__name__)

MRT_COLUMN = "mrt (ms)"
COST_COLUMN = "docs scored/q"


@dataclass
class ExperimentResult:
    """What :func:`run_experiment` produced; the same tables are written to ``output``."""

    table: pd.DataFrame
    full_table: pd.DataFrame
    tuned: Dict[str, Dict[str, dict]]
    runs: Dict[str, pd.DataFrame]
    output: Path
    files: List[Path] = field(default_factory=list)


def _measure_objects(names: List[str], answers: AnswerMeasures) -> List[ir_measures.Measure]:
    measures = []
    for name in names:
        if name.startswith("AnswerAcc") or name in ("EM", "F1"):
            measures.append(answers.parse(name))
        else:
            measures.append(ir_measures.parse_measure(name))
    return measures


def _merge_params(spec: PipelineSpec, tuned: Optional[Dict[str, dict]]) -> Dict[str, dict]:
    params = {component: dict(values) for component, values in spec.params.items()}
    for component, values in (tuned or {}).items():
        params.setdefault(component, {}).update(values)
    return params


def _tune(resources: ExperimentResources, spec: PipelineSpec, dev, measure: ir_measures.Measure, config: ExperimentConfig) -> tuple:
    """Grid-scan ``spec.tune`` on the dev questions; return ``(best params, scan table)``."""
    pipeline, parts = resources.pipeline(spec, cache=True)
    grid = {parts[component]: dict(values) for component, values in spec.tune.items()}
    scan = pt.GridScan(pipeline, grid, dev.topics, dev.qrels, [measure], verbose=resources.verbose, dataframe=True)
    value_column = [c for c in scan.columns if not str(c).startswith("tran_")][0]
    best_row = scan.loc[scan[value_column].astype(float).idxmax()]
    best: Dict[str, dict] = {}
    readable = pd.DataFrame()
    position = {id(t): name for name, t in parts.items()}
    for column in scan.columns:
        if str(column).startswith("tran_") and column.count("_") >= 2:
            index, parameter = column[len("tran_"):].split("_", 1)
            component = position[id(scan[f"tran_{index}"].iloc[0])]
            value = best_row[column]
            best.setdefault(component, {})[parameter] = value.item() if hasattr(value, "item") else value
            readable[f"{component}.{parameter}"] = scan[column]
    readable[str(measure)] = scan[value_column].astype(float)
    for transformer in parts.values():
        if hasattr(transformer, "clear_cache"):
            transformer.clear_cache()
    logger.info("tuned %s on %d dev questions: %s (%s = %.4f)", spec.name, len(dev), best, measure, float(best_row[value_column]))
    return best, readable


def _timed_run(pipeline: pt.Transformer, parts: Dict[str, pt.Transformer], topics: pd.DataFrame) -> tuple:
    """Run ``pipeline`` on ``topics`` after a two-query warm-up; return ``(results, ms per query)``.

    Work counters are reset after the warm-up, so they count the timed run alone.
    """
    pipeline(topics.head(2))
    for part in parts.values():
        if hasattr(part, "work"):
            part.work.reset()
    started = time.perf_counter()
    results = pipeline(topics)
    return results, 1000 * (time.perf_counter() - started) / max(1, len(topics))


def run_experiment(config: ExperimentConfig, *, verbose: bool = True) -> ExperimentResult:
    """Build or reuse every index and model, tune on dev, evaluate on test, and write the report.

    Writes to ``config.output``: ``results.csv`` (all columns, significance tests included),
    ``results.md`` (the printed table), ``tuning.json`` and ``tuning-<pipeline>.csv``,
    ``runs/<pipeline>.res.gz`` (TREC run files), ``answer_accuracy.png`` and ``cost.png``.
    """
    from pyterrier_gdr.experiment.report import write_report

    resources = ExperimentResources(config, verbose=verbose)
    test = resources.split("test")
    if len(test) == 0:
        raise ExperimentError(f"the test split {config.test!r} has no questions")
    answers = AnswerMeasures(test.answers, passage_text=resources.passage_texts)
    measures = _measure_objects(config.measures, answers)
    if any(name.startswith("AnswerAcc") for name in config.measures) and not any(test.answers.values()):
        raise ExperimentError(f"AnswerAcc needs gold answers, but the test split {config.test!r} carries none")

    # Build every index first, so failures surface before any long tuning.
    for needed in sorted(resources.config.needed_indexes()):
        {"bm25": resources.bm25_index, "flex": resources.flex_index, "gdr": resources.gdr_index}[needed]()

    # Tune on dev.
    tuned: Dict[str, Dict[str, dict]] = {}
    scans: Dict[str, pd.DataFrame] = {}
    if any(spec.tune for spec in config.pipelines):
        dev = resources.split("dev")
        if config.dev_queries is not None:
            dev = dev.subset(0, config.dev_queries)
        dev_answers = AnswerMeasures(dev.answers, passage_text=resources.passage_texts)
        tune_measure = _measure_objects([config.tune_measure], dev_answers)[0]
        for spec in config.pipelines:
            if spec.tune:
                tuned[spec.name], scans[spec.name] = _tune(resources, spec, dev, tune_measure, config)

    # Run every pipeline on test, timing it and counting the documents it scores.
    runs: Dict[str, pd.DataFrame] = {}
    response_ms: Dict[str, float] = {}
    scored: Dict[str, float] = {}
    for spec in config.pipelines:
        pipeline, parts = resources.pipeline(spec, params=_merge_params(spec, tuned.get(spec.name)))
        logger.info("running %s (%s) on %d test questions", spec.name, spec.run, len(test))
        results, ms = _timed_run(pipeline, parts, test.topics)
        runs[spec.name] = results.drop(columns=[c for c in ("query_vec",) if c in results.columns])
        response_ms[spec.name] = ms
        scored[spec.name] = resources.documents_scored(spec, parts)

    # Evaluate, with significance tests against the baseline. PyTerrier scores the questions
    # that have qrels; when every measure is answer-based, every question counts.
    qrels = test.qrels
    if all(name.startswith("AnswerAcc") or name in ("EM", "F1") for name in config.measures):
        unjudged = sorted(set(test.topics["qid"]) - set(qrels["qid"]))
        placeholders = pd.DataFrame({"qid": unjudged, "docno": "", "label": 0})
        qrels = pd.concat([qrels, placeholders], ignore_index=True) if unjudged else qrels
    names = [spec.name for spec in config.pipelines]
    baseline = names.index(config.baseline) if config.baseline else None
    full = pt.Experiment(
        [runs[n] for n in names], test.topics, qrels, measures, names=names,
        baseline=baseline, correction=config.correction if baseline is not None else None,
    )
    full[MRT_COLUMN] = [response_ms[n] for n in names]
    full[COST_COLUMN] = [scored[n] for n in names]
    table = _compact_table(full, config.measures, baseline)

    result = ExperimentResult(table=table, full_table=full, tuned=tuned, runs=runs, output=config.output)
    result.files = write_report(result, config, scans, answers, test, resources)
    return result


def _compact_table(full: pd.DataFrame, measure_names: List[str], baseline: Optional[int]) -> pd.DataFrame:
    """Keep the measures (in file order), response time and cost; mark significant differences."""
    table = pd.DataFrame({"name": full["name"]})
    for name in measure_names:
        column = next((c for c in full.columns if str(c) == name), None)
        if column is None:
            continue
        values = full[column].astype(float).map(lambda v: f"{v:.4f}")
        rejected = f"{name} reject"
        if baseline is not None and rejected in full.columns:
            values = [v + ("*" if bool(r) and i != baseline else "") for i, (v, r) in enumerate(zip(values, full[rejected]))]
        table[name] = list(values)
    table[MRT_COLUMN] = full[MRT_COLUMN].map(lambda v: f"{v:.2f}")
    table[COST_COLUMN] = full[COST_COLUMN].map(lambda v: "n/a" if np.isnan(v) else f"{v:,.0f}")
    return table
