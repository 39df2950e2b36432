"""cellvi: deep probabilistic models for single-cell omics with a scanpy-style API.

>>> import cellvi as cv
>>> cv.pp.setup_registry(adata, layer="counts", batch_key="batch")
>>> cv.tl.scvi_train(adata)  # -> adata.obsm["X_scvi"], model in adata.uns["scvi"]
"""

from . import datasets, families, hub, pl, pp, tl
from ._settings import settings
from ._version import __version__ as __version__

__all__ = ["datasets", "families", "hub", "pl", "pp", "settings", "tl"]
