"""Hyperparameter search with optuna: search spaces, objective, pruning and metrics.

The user-facing call is :func:`cellvi.tl.tune`; :func:`cellvi.pl.tune` draws its results.
"""

from ._callback import PruningCallback
from ._integration import integration_score
from ._models import METRICS, MODELS, TunableModel
from ._space import SearchSpace

__all__ = [
    "METRICS",
    "MODELS",
    "PruningCallback",
    "SearchSpace",
    "TunableModel",
    "integration_score",
]
