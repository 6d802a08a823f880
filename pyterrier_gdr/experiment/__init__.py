"""Declarative experiments: one TOML file names the data, the pipelines and the measures."""
from pyterrier_gdr.experiment.config import ExperimentConfig, ExperimentError, load_experiment, parse_experiment
from pyterrier_gdr.experiment.runner import ExperimentResult, run_experiment

__all__ = ["ExperimentConfig", "ExperimentError", "ExperimentResult", "load_experiment", "parse_experiment", "run_experiment"]
