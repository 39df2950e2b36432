"""Models: pure torch modules, and how each is stored in ``.uns``."""

from .scvi import SCVIModule

__all__ = ["SCVIModule"]
