"""Tools: train models and use them (scanpy-style ``cv.tl``)."""

from ._evaluate import scvi_evaluate
from ._scvi_apply import scvi_embed, scvi_normalize
from ._scvi_train import scvi_train
from ._totalvi_apply import totalvi_denoise, totalvi_embed, totalvi_evaluate
from ._totalvi_train import totalvi_train

__all__ = [
    "scvi_embed",
    "scvi_evaluate",
    "scvi_normalize",
    "scvi_train",
    "totalvi_denoise",
    "totalvi_embed",
    "totalvi_evaluate",
    "totalvi_train",
]
