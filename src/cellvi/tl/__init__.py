"""Tools: train models and use them (scanpy-style ``cv.tl``)."""

from ._criticism import criticism
from ._evaluate import scvi_evaluate
from ._posterior import likelihood_parameters, posterior_predictive
from ._scvi_apply import scvi_embed, scvi_normalize
from ._scvi_train import scvi_train
from ._tune import tune

__all__ = [
    "criticism",
    "likelihood_parameters",
    "posterior_predictive",
    "scvi_embed",
    "scvi_evaluate",
    "scvi_normalize",
    "scvi_train",
    "tune",
]
