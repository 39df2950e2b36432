"""Tools: train models and use them (scanpy-style ``cv.tl``)."""

from ._de import differential_expression
from ._de_results import differential_expression_df
from ._evaluate import scvi_evaluate
from ._latent import latent_posterior
from ._map_query import map_query
from ._marginal_ll import marginal_ll
from ._scvi_apply import scvi_embed, scvi_normalize
from ._scvi_train import scvi_train

__all__ = [
    "differential_expression",
    "differential_expression_df",
    "latent_posterior",
    "map_query",
    "marginal_ll",
    "scvi_embed",
    "scvi_evaluate",
    "scvi_normalize",
    "scvi_train",
]
