"""Plotting (scanpy-style ``cv.pl``): figures only; computations live elsewhere."""

from ._history import training_history
from ._tune import tune

__all__ = ["training_history", "tune"]
