"""Preprocessing: prepare an AnnData for cellvi models."""

from ._setup import setup_registry

__all__ = ["setup_registry"]
