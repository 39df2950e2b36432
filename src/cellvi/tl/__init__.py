"""Tools: train models and use them (scanpy-style ``cv.tl``)."""

import importlib
from typing import Any

from ..lifecycle.criticism_run import criticism
from ._de import differential_expression
from ._de_results import differential_expression_df
from ._evaluate import scvi_evaluate
from ._generic import embed, evaluate, normalize
from ._latent import latent_posterior
from ._map_query import map_query
from ._marginal_ll import marginal_ll
from ._posterior import likelihood_parameters, posterior_predictive
from ._scanvi_train import scanvi_train
from ._scvi_apply import scvi_embed, scvi_normalize
from ._scvi_train import scvi_train
from ._totalvi_apply import totalvi_denoise, totalvi_embed, totalvi_evaluate
from ._totalvi_train import totalvi_train
from ._train import train

__all__ = [
    "criticism",
    "differential_expression",
    "differential_expression_df",
    "embed",
    "evaluate",
    "latent_posterior",
    "likelihood_parameters",
    "map_query",
    "marginal_ll",
    "normalize",
    "posterior_predictive",
    "scanvi_train",
    "scvi_embed",
    "scvi_evaluate",
    "scvi_normalize",
    "scvi_train",
    "totalvi_denoise",
    "totalvi_embed",
    "totalvi_evaluate",
    "totalvi_train",
    "train",
    "tune",
]


def __getattr__(name: str) -> Any:
    # ``tune`` brings optuna and scikit-learn (about 20 MB and a second of start-up): imported
    # on first use, so that ``import cellvi`` and training do not pay for them
    if name == "tune":
        return importlib.import_module("._tune", __name__).tune
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})  # tab completion lists ``tune`` before its import
