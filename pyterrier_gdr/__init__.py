"""pyterrier-gdr: Generative Dense Retrieval (Yuan et al., EACL 2024) for PyTerrier."""
__version__ = "0.1.0"
