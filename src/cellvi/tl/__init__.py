"""Tools: train models and use them (scanpy-style ``cv.tl``)."""

from ._evaluate import scvi_evaluate
from ._scvi_apply import scvi_embed, scvi_normalize
from ._scvi_train import scvi_train
from ._tune import tune

__all__ = ["scvi_embed", "scvi_evaluate", "scvi_normalize", "scvi_train", "tune"]
