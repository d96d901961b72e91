"""Miipher-2: universal speech restoration (arXiv 2505.04457), trained through an MLOps workflow."""

__version__ = "0.1.0"
