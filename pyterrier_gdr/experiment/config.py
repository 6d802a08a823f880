"""The experiment file: a TOML document naming the data, the pipelines and the measures.

Every setting is checked when the file is read, before anything is built, and an error
names the setting, the value and the valid choices. See ``examples/squad.toml`` for a
commented file; the sections are:

- top level: ``name``, ``output`` (results folder), ``cache`` (indexes and models);
- ``[dataset]``: ``corpus``, ``test`` and optional ``train`` and ``dev`` sources;
- ``[encoder]``: the bi-encoder of the dense baseline and of GDR's document vectors;
- ``[gdr.tree]`` and ``[gdr.training]``: cluster tree and training settings;
- ``[evaluation]``: measures, baseline, tuning measure, plot settings;
- ``[[pipeline]]`` (one table each): ``name``, ``run`` (components joined by ``>>``),
  ``params`` and ``tune`` (lists of values tried on the dev split).
"""
from __future__ import annotations

import difflib
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

from pyterrier_gdr.clusters import ClusterTreeConfig
from pyterrier_gdr.training import TrainingConfig

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["ExperimentError", "ExperimentConfig", "PipelineSpec", "COMPONENTS", "load_experiment", "parse_experiment"]


class ExperimentError(ValueError):
    """An experiment file is invalid; the message names the setting and the fix."""


# Component name -> the parameters it accepts and their defaults.
COMPONENTS: Dict[str, Dict[str, Any]] = {
    "bm25": {"num_results": 1000, "k1": 0.9, "b": 0.4},
    "dense": {"num_results": 1000},
    "generator": {"num_clusters": 10, "beam_size": None, "added_clusters": None, "precision": "float32"},
    "centroid": {"num_clusters": 10},
    "ranker": {"alpha": 1.0, "num_results": 100, "fusion": "log_prob", "temperature": 0.05},
    "reader": {"num_passages": 3, "max_new_tokens": 16, "max_prompt_tokens": 384, "batch_size": 8},
    "base_reader": {"num_passages": 3, "max_new_tokens": 16, "max_prompt_tokens": 384, "batch_size": 8},
}

# Parameters that take one of a few words, checked when the file is read rather than after the indexes are built.
CHOICES: Dict[Tuple[str, str], Tuple[str, ...]] = {
    ("generator", "precision"): ("float32", "bfloat16", "float16"),
    ("ranker", "fusion"): ("log_prob", "paper"),
}
CHOICE_NOTES: Dict[Tuple[str, str], str] = {("generator", "precision"): " (float32 is exact; float16 is faster only on GPUs)"}

# Components that answer questions (output ``qanswer``) rather than rank documents.
READERS = ("reader", "base_reader")

# Components whose transformer needs an index built by the experiment.
NEEDS_INDEX = {"bm25": "bm25", "dense": "flex", "generator": "gdr", "centroid": "gdr", "ranker": "gdr"}


def _suggest(value: str, options) -> str:
    by_lower = {str(option).lower(): option for option in options}
    close = difflib.get_close_matches(value.lower(), list(by_lower), n=1)
    return f" (did you mean {by_lower[close[0]]!r}?)" if close else ""


@dataclass
class PipelineSpec:
    """One ``[[pipeline]]`` entry, resolved: components in order, parameters per component."""

    name: str
    components: List[str]
    params: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    tune: Dict[str, Dict[str, List[Any]]] = field(default_factory=dict)

    @property
    def run(self) -> str:
        return " >> ".join(self.components)


@dataclass
class ReaderSpec:
    """The ``[reader]`` section: the base LLM and how its QST side network is trained."""

    base: str = "gemma3-270m"
    quantize: bool = True
    train_corpus: Optional[str] = None
    train_questions: Optional[Union[str, Mapping[str, Any]]] = None
    train_retriever_results: int = 10
    qst: Dict[str, Any] = field(default_factory=dict)
    training: Dict[str, Any] = field(default_factory=dict)


@dataclass
class ExperimentConfig:
    """A parsed, validated experiment file."""

    name: str
    source: Optional[Path]
    output: Path
    cache: Path
    corpus: str
    test: Union[str, Mapping[str, Any]]
    train: Optional[Union[str, Mapping[str, Any]]]
    dev: Optional[Union[str, Mapping[str, Any]]]
    title_in_text: bool
    encoder: str
    encoder_batch_size: int
    tree: ClusterTreeConfig
    training: TrainingConfig
    measures: List[str]
    baseline: Optional[str]
    correction: Optional[str]
    tune_measure: str
    dev_queries: Optional[int]
    pipelines: List[PipelineSpec]
    reader: Optional[ReaderSpec] = None

    def needed_indexes(self) -> set:
        return {NEEDS_INDEX[c] for p in self.pipelines for c in p.components if c in NEEDS_INDEX}


def _parse_pipeline(position: int, entry: Mapping[str, Any]) -> PipelineSpec:
    where = f"[[pipeline]] #{position + 1}"
    unknown = set(entry) - {"name", "run", "params", "tune"}
    if unknown:
        raise ExperimentError(f"{where} has unknown keys {sorted(unknown)}; valid: name, run, params, tune")
    if "run" not in entry:
        raise ExperimentError(f"{where} has no 'run'; write e.g. run = \"generator >> ranker\"")
    name = str(entry.get("name") or entry["run"])
    where = f"pipeline {name!r}"
    components = [part.strip() for part in str(entry["run"]).split(">>")]
    for component in components:
        if component not in COMPONENTS:
            raise ExperimentError(
                f"{where}: unknown component {component!r}{_suggest(component, COMPONENTS)}; valid: {', '.join(COMPONENTS)}"
            )
    if len(set(components)) != len(components):
        raise ExperimentError(f"{where}: a component appears twice in {entry['run']!r}")

    def assign(key: str, value: Any, section: str) -> tuple:
        # "ranker.alpha" names its component; a bare "alpha" goes to the one component that accepts it.
        if "." in key:
            component, parameter = key.split(".", 1)
            if component not in components:
                raise ExperimentError(f"{where}: {section} key {key!r} names {component!r}, which is not in {entry['run']!r}")
            if parameter not in COMPONENTS[component]:
                raise ExperimentError(
                    f"{where}: {component} has no parameter {parameter!r}{_suggest(parameter, COMPONENTS[component])}; "
                    f"valid: {', '.join(COMPONENTS[component])}"
                )
            return component, parameter
        owners = [c for c in components if key in COMPONENTS[c]]
        if not owners:
            valid = sorted({p for c in components for p in COMPONENTS[c]})
            raise ExperimentError(f"{where}: no component of {entry['run']!r} takes {section} key {key!r}{_suggest(key, valid)}; valid: {', '.join(valid)}")
        if len(owners) > 1:
            raise ExperimentError(f"{where}: {section} key {key!r} fits {', '.join(owners)}; write e.g. {owners[-1]}.{key}")
        return owners[0], key

    def check_choice(component: str, parameter: str, value: Any) -> None:
        choices = CHOICES.get((component, parameter))
        if choices is not None and value not in choices:
            note = CHOICE_NOTES.get((component, parameter), "")
            raise ExperimentError(
                f"{where}: {component}.{parameter} = {value!r} is invalid{_suggest(str(value), choices)}; "
                f"valid: {', '.join(choices)}{note}"
            )

    def flatten(section: str) -> Dict[str, Any]:
        # TOML reads an unquoted dotted key (generator.precision = ...) as a table named after the component.
        flat = {}
        for key, value in dict(entry.get(section, {})).items():
            if isinstance(value, Mapping) and key in COMPONENTS:
                flat.update({f"{key}.{parameter}": inner for parameter, inner in value.items()})
            else:
                flat[key] = value
        return flat

    params: Dict[str, Dict[str, Any]] = {c: {} for c in components}
    for key, value in flatten("params").items():
        component, parameter = assign(key, value, "params")
        check_choice(component, parameter, value)
        params[component][parameter] = value
    tune: Dict[str, Dict[str, List[Any]]] = {}
    for key, values in flatten("tune").items():
        component, parameter = assign(key, values, "tune")
        if not isinstance(values, list) or not values:
            raise ExperimentError(f"{where}: tune.{key} must be a non-empty list of values; found {values!r}")
        for value in values:
            check_choice(component, parameter, value)
        tune.setdefault(component, {})[parameter] = values
    return PipelineSpec(name, components, params, tune)


def _question_source(dataset: Mapping[str, Any], key: str, required: bool):
    value = dataset.get(key)
    if value is None:
        if required:
            raise ExperimentError(f"[dataset] needs '{key}' (an irds: id, a questions JSONL path, or a table with id/questions/qrels)")
        return None
    if isinstance(value, str) or isinstance(value, Mapping):
        return value
    raise ExperimentError(f"[dataset].{key} = {value!r} is invalid; give an irds: id, a JSONL path, or a table")


def _check_sources(corpus: str, splits: Mapping[str, Any], *, section: str = "dataset") -> None:
    """Check that every ir_datasets id is known and every local file exists, before anything runs."""
    from pyterrier_gdr.datasets import _irds_dataset

    def check(where: str, value: str) -> None:
        if value.startswith("irds:"):
            try:
                _irds_dataset(value)
            except ValueError as e:
                raise ExperimentError(f"[{section}].{where}: {e}") from e
        elif not Path(value).exists():
            raise ExperimentError(f"[{section}].{where}: file {value!r} not found; give an existing JSONL file or an irds: id")

    check("corpus" if section == "dataset" else "train_corpus", corpus)
    for key, value in splits.items():
        if isinstance(value, str):
            check(key, value)
        elif isinstance(value, Mapping):
            if "id" in value:
                check(f"{key}.id", str(value["id"]))
            for file_key in ("questions", "qrels"):
                if value.get(file_key):
                    check(f"{key}.{file_key}", str(value[file_key]))


def parse_experiment(document: Mapping[str, Any], *, source: Optional[Path] = None) -> ExperimentConfig:
    """Validate a parsed TOML document and return its :class:`ExperimentConfig`.

    Local data files resolve against the folder of ``source`` (when given); ``output`` and
    ``cache`` resolve against the working directory, where the command runs.

    Raises:
        ExperimentError: on any invalid or missing setting.
    """
    import ir_measures

    from pyterrier_gdr.measures import AnswerMeasures

    base = source.parent if source is not None else Path.cwd()
    known = {"name", "output", "cache", "dataset", "encoder", "gdr", "evaluation", "pipeline", "reader"}
    unknown = set(document) - known
    if unknown:
        raise ExperimentError(f"unknown top-level keys {sorted(unknown)}; valid: {', '.join(sorted(known))}")

    def resolve(path_value: str) -> str:
        if path_value.startswith("irds:"):
            return path_value
        path = Path(path_value).expanduser()
        return str(path if path.is_absolute() else base / path)

    # Data.
    dataset = dict(document.get("dataset", {}))
    unknown = set(dataset) - {"corpus", "train", "dev", "test", "title_in_text"}
    if unknown:
        raise ExperimentError(f"[dataset] has unknown keys {sorted(unknown)}; valid: corpus, train, dev, test, title_in_text")
    if "corpus" not in dataset:
        raise ExperimentError("[dataset] needs 'corpus': an irds: id such as \"irds:pyterrier-gdr/squad-dev\" or a JSONL path")
    splits = {}
    for key, required in (("test", True), ("train", False), ("dev", False)):
        splits[key] = _resolve_source(_question_source(dataset, key, required), resolve)

    _check_sources(resolve(str(dataset["corpus"])), splits)

    # Models.
    encoder = dict(document.get("encoder", {}))
    unknown = set(encoder) - {"model", "batch_size"}
    if unknown:
        raise ExperimentError(f"[encoder] has unknown keys {sorted(unknown)}; valid: model, batch_size")
    gdr = dict(document.get("gdr", {}))
    unknown = set(gdr) - {"tree", "training"}
    if unknown:
        raise ExperimentError(f"[gdr] has unknown sections {sorted(unknown)}; valid: tree, training")
    try:
        tree = ClusterTreeConfig.from_dict(dict(gdr.get("tree", {})))
        training = TrainingConfig.from_dict(dict(gdr.get("training", {})))
    except (TypeError, ValueError) as e:
        raise ExperimentError(f"[gdr]: {e}") from e

    # Pipelines.
    entries = document.get("pipeline", [])
    if not entries:
        raise ExperimentError("the file defines no [[pipeline]]; add e.g. [[pipeline]] name = \"BM25\" run = \"bm25\"")
    pipelines = [_parse_pipeline(i, entry) for i, entry in enumerate(entries)]
    names = [p.name for p in pipelines]
    duplicates = {n for n in names if names.count(n) > 1}
    if duplicates:
        raise ExperimentError(f"pipeline names must be unique; repeated: {sorted(duplicates)}")

    # Measures.
    evaluation = dict(document.get("evaluation", {}))
    unknown = set(evaluation) - {"measures", "baseline", "correction", "tune_measure", "dev_queries"}
    if unknown:
        raise ExperimentError(f"[evaluation] has unknown keys {sorted(unknown)}; valid: measures, baseline, correction, tune_measure, dev_queries")
    measures = list(evaluation.get("measures", ["R@1", "R@10", "R@100", "RR@10"]))
    probe = AnswerMeasures({}, passage_text=lambda docnos: [])
    for name in measures:
        if name.startswith("AnswerAcc") or name in ("EM", "F1"):
            try:
                probe.parse(name)
            except ValueError as e:
                raise ExperimentError(f"[evaluation].measures: {e}") from e
            continue
        try:
            ir_measures.parse_measure(name)
        except (ValueError, NameError, SyntaxError) as e:
            raise ExperimentError(
                f"[evaluation].measures: unknown measure {name!r}; use ir_measures names (R@100, RR@10, nDCG@10, ...) "
                "or AnswerAcc@k, EM, F1"
            ) from e
    baseline = evaluation.get("baseline")
    if baseline is not None and baseline not in names:
        raise ExperimentError(f"[evaluation].baseline = {baseline!r} is not a pipeline name{_suggest(baseline, names)}; valid: {', '.join(names)}")
    tune_measure = str(evaluation.get("tune_measure", measures[0]))
    if tune_measure not in measures:
        raise ExperimentError(f"[evaluation].tune_measure = {tune_measure!r} must be one of the measures: {', '.join(measures)}")
    correction = evaluation.get("correction", "holm")
    dev_queries = evaluation.get("dev_queries")
    if any(p.tune for p in pipelines) and splits["dev"] is None:
        raise ExperimentError("some pipelines have 'tune' settings but [dataset] names no 'dev' split to tune them on")
    if any("generator" in p.components or "ranker" in p.components or "centroid" in p.components for p in pipelines):
        if splits["train"] is None and training.pseudo_queries_per_doc == 0:
            raise ExperimentError("GDR needs training queries: name a [dataset] 'train' split, or set [gdr.training] pseudo_queries_per_doc > 0")

    reader = _parse_reader(document.get("reader"), pipelines, measures, resolve)

    return ExperimentConfig(
        name=str(document.get("name", source.stem if source else "experiment")),
        source=source,
        output=Path(str(document.get("output", "runs/" + str(document.get("name", "experiment"))))).expanduser().resolve(),
        cache=Path(str(document.get("cache", ".cache/pyterrier-gdr"))).expanduser().resolve(),
        corpus=resolve(str(dataset["corpus"])),
        test=splits["test"],
        train=splits["train"],
        dev=splits["dev"],
        title_in_text=bool(dataset.get("title_in_text", True)),
        encoder=str(encoder.get("model", "all-MiniLM-L6-v2")),
        encoder_batch_size=int(encoder.get("batch_size", 32)),
        tree=tree,
        training=training,
        measures=measures,
        baseline=baseline,
        correction=correction,
        tune_measure=tune_measure,
        dev_queries=int(dev_queries) if dev_queries is not None else None,
        pipelines=pipelines,
        reader=reader,
    )


def _resolve_source(value, resolve):
    """Resolve the local paths of a question source (a string or a table) against the experiment file."""
    if isinstance(value, str):
        return resolve(value)
    if isinstance(value, Mapping):
        return {k: (resolve(str(v)) if k in ("questions", "qrels") else v) for k, v in value.items()}
    return value


def _parse_reader(section: Optional[Mapping[str, Any]], pipelines: List[PipelineSpec], measures: List[str], resolve) -> Optional[ReaderSpec]:
    """Validate the ``[reader]`` section against the pipelines and measures that use it."""
    answer_level = [m for m in measures if m in ("EM", "F1")]
    reading = [p.name for p in pipelines if p.components[-1] in READERS]
    retrieving = [p.name for p in pipelines if p.components[-1] not in READERS]
    for pipeline in pipelines:
        if any(c in READERS for c in pipeline.components[:-1]):
            raise ExperimentError(f"pipeline {pipeline.name!r}: a reader must be the last component of {pipeline.run!r}")
    if reading and retrieving:
        raise ExperimentError(
            f"pipelines {reading} end with a reader and {retrieving} do not; put reader pipelines (scored by EM, F1) "
            "and retrieval pipelines (scored by R@k, AnswerAcc@k, ...) in separate experiment files"
        )
    if reading and set(measures) - {"EM", "F1"}:
        raise ExperimentError(f"reader pipelines are scored by EM and F1 only; remove {sorted(set(measures) - {'EM', 'F1'})} from [evaluation].measures")
    if answer_level and not reading:
        raise ExperimentError("EM and F1 score generated answers; end the pipelines with 'reader' or 'base_reader'")
    if not reading:
        if section:
            raise ExperimentError("the file has a [reader] section but no pipeline uses 'reader' or 'base_reader'")
        return None

    section = dict(section or {})
    known = {"base", "quantize", "train_corpus", "train_questions", "train_retriever_results", "qst", "training"}
    unknown = set(section) - known
    if unknown:
        raise ExperimentError(f"[reader] has unknown keys {sorted(unknown)}; valid: {', '.join(sorted(known))}")
    from pyterrier_gdr.reader.config import QSTConfig, ReaderTrainingConfig

    try:
        QSTConfig(**dict(section.get("qst", {})))
        ReaderTrainingConfig(**dict(section.get("training", {})))
    except (TypeError, ValueError) as e:
        raise ExperimentError(f"[reader]: {e}") from e
    spec = ReaderSpec(
        base=str(section.get("base", "gemma3-270m")),
        quantize=bool(section.get("quantize", True)),
        train_corpus=resolve(str(section["train_corpus"])) if section.get("train_corpus") else None,
        train_questions=_resolve_source(section.get("train_questions"), resolve),
        train_retriever_results=int(section.get("train_retriever_results", 10)),
        qst=dict(section.get("qst", {})),
        training=dict(section.get("training", {})),
    )
    if any(p.components[-1] == "reader" for p in pipelines):
        if spec.train_corpus is None or spec.train_questions is None:
            raise ExperimentError("'reader' (QST-tuned) needs [reader] train_corpus and train_questions to train on; 'base_reader' needs neither")
        _check_sources(spec.train_corpus, {"train_questions": spec.train_questions}, section="reader")
    return spec


def load_experiment(path: Union[str, Path]) -> ExperimentConfig:
    """Read and validate the experiment file at ``path``.

    Raises:
        FileNotFoundError: if the file does not exist.
        ExperimentError: if it is not valid TOML or a setting is invalid.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"experiment file {str(path)!r} not found")
    try:
        with open(path, "rb") as fin:
            document = tomllib.load(fin)
    except tomllib.TOMLDecodeError as e:
        raise ExperimentError(f"{path} is not valid TOML: {e}") from e
    return parse_experiment(document, source=path.resolve())
