"""cellvi: deep probabilistic models for single-cell omics with a scanpy-style API.

>>> import cellvi as cv
>>> cv.pp.setup_registry(adata, layer="counts", batch_key="batch")
>>> cv.tl.scvi_train(adata)  # -> adata.obsm["X_scvi"], model in adata.uns["scvi"]
"""

from importlib.metadata import PackageNotFoundError, version

from . import datasets, hub, pl, pp, tl
from ._settings import settings
from .models import (
    scvi_codec,  # noqa: F401  (makes scVI models storable in .uns)
    totalvi_codec,  # noqa: F401  (makes totalVI models storable in .uns)
)

try:
    __version__ = version("cellvi")
except PackageNotFoundError:  # running from a source tree
    __version__ = "0.1.0"

__all__ = ["datasets", "hub", "pl", "pp", "settings", "tl"]
