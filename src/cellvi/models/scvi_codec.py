"""Rebuilding an :class:`SCVIModule` from the ``.uns`` payload (params + registry)."""

from __future__ import annotations

import inspect
from typing import Any

from ..lifecycle.payload import Codec, register_codec
from .scvi import SCVIModule

#: Options of ``SCVIModule`` a user chooses; the rest come from the registry and var names.
MODULE_OPTIONS = tuple(
    name
    for name, p in inspect.signature(SCVIModule.__init__).parameters.items()
    if p.kind is inspect.Parameter.KEYWORD_ONLY
    and name not in ("n_batch", "n_labels", "n_cats_per_cov", "n_cont")
)


def data_shape(registry: dict[str, Any], n_vars: int) -> dict[str, Any]:
    """The module arguments fixed by the registered data."""
    cat_keys = list(registry["categorical_covariate_keys"])
    cats = registry.get("categorical_covariate_categories", {})
    return {
        "n_input": int(n_vars),
        "n_batch": int(registry["n_batch"]),
        "n_labels": int(registry["n_labels"]),
        "n_cats_per_cov": [len(cats[k]) for k in cat_keys],
        "n_cont": len(registry["continuous_covariate_keys"]),
    }


def build_module(params: dict[str, Any], registry: dict[str, Any], n_vars: int) -> SCVIModule:
    """The untrained module described by ``params`` on data shaped by ``registry``."""
    options = {k: params[k] for k in MODULE_OPTIONS if k in params}
    shape = data_shape(registry, n_vars)
    return SCVIModule(shape.pop("n_input"), **shape, **options)


def _build(payload: dict[str, Any]) -> SCVIModule:
    return build_module(payload["params"], payload["registry"], len(payload["var_names"]))


register_codec(Codec("scvi", _build))
