"""Plotting (scanpy-style ``cv.pl``): figures only; computations live elsewhere."""

from ._confusion import confusion
from ._criticism import criticism
from ._history import training_history
from ._tune import tune

__all__ = [
    "confusion",
    "criticism",
    "training_history",
    "tune",
]
