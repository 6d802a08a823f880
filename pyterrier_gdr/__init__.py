"""pyterrier-gdr: Generative Dense Retrieval (Yuan et al., EACL 2024) for PyTerrier."""
__version__ = "0.1.0"

from pyterrier_gdr.datasets import register_bundled_datasets as _register_bundled_datasets

_register_bundled_datasets()
