"""Rebuilding a :class:`TOTALVIModule` from the ``.uns`` payload (params + registry)."""

from __future__ import annotations

import inspect
from typing import Any

from ..data._mudata import protein_names_of
from ..lifecycle.payload import Codec, register_codec
from .scvi_codec import data_shape
from .totalvi import TOTALVIModule

#: Options of ``TOTALVIModule`` a user chooses; the rest come from the registry and names.
MODULE_OPTIONS = tuple(
    name
    for name, p in inspect.signature(TOTALVIModule.__init__).parameters.items()
    if p.kind is inspect.Parameter.KEYWORD_ONLY
    and name not in ("n_batch", "n_labels", "n_cats_per_cov", "n_cont")
)


def build_module(params: dict[str, Any], registry: dict[str, Any], n_genes: int) -> TOTALVIModule:
    """The untrained module described by ``params`` on data shaped by ``registry``."""
    options = {k: params[k] for k in MODULE_OPTIONS if k in params}
    shape = data_shape(registry, n_genes)
    n_input = shape.pop("n_input")
    return TOTALVIModule(n_input, len(protein_names_of(registry)), **shape, **options)


def _build(payload: dict[str, Any]) -> TOTALVIModule:
    return build_module(payload["params"], payload["registry"], len(payload["var_names"]))


register_codec(Codec("totalvi", _build))
