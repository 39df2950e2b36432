"""Hyperparameter search with optuna: search spaces, objective, pruning and metrics.

The user-facing call is :func:`cellvi.tl.tune`; :func:`cellvi.pl.tune` draws its results.
"""

from ._callback import PruningCallback
from ._integration import integration_score
from ._models import METRICS, TunableModel, get_model
from ._space import SearchSpace

__all__ = [
    "METRICS",
    "PruningCallback",
    "SearchSpace",
    "TunableModel",
    "get_model",
    "integration_score",
]
