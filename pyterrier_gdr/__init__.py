"""pyterrier-gdr: Generative Dense Retrieval (Yuan et al., EACL 2024) for PyTerrier.

Importing the package registers the bundled data sets with ir_datasets
(``irds:pyterrier-gdr/squad-dev/...`` and ``irds:pyterrier-gdr/wiki-slice/...``).
The public classes load on first use, so ``import pyterrier_gdr`` stays cheap.
"""
import importlib

from pyterrier_gdr.datasets import register_bundled_datasets as _register_bundled_datasets

__version__ = "0.1.0"

_EXPORTS = {
    "GDRIndex": "pyterrier_gdr.index",
    "IndexFormatError": "pyterrier_gdr.index",
    "ClusterTreeConfig": "pyterrier_gdr.clusters",
    "ClusterTree": "pyterrier_gdr.clusters",
    "TrainingConfig": "pyterrier_gdr.training",
    "GDRModel": "pyterrier_gdr.model",
    "ClusterGenerator": "pyterrier_gdr.generator",
    "CentroidRouter": "pyterrier_gdr.router",
    "IntraClusterRanker": "pyterrier_gdr.ranker",
    "DocumentEncoder": "pyterrier_gdr.encoding",
    "AnswerMeasures": "pyterrier_gdr.measures",
    "load_experiment": "pyterrier_gdr.experiment",
    "run_experiment": "pyterrier_gdr.experiment",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'pyterrier_gdr' has no attribute {name!r}")


_register_bundled_datasets()
