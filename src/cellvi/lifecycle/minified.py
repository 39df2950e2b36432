"""Minified data: a model's latent posterior and library sizes stand in for the counts.

A minified AnnData (written by ``cv.hub.save(..., include_data="minified")``) keeps, for the
model in ``.uns[key]``, per cell

``obsm[key + "_qz_m"]``, ``obsm[key + "_qz_v"]``
    Mean and variance of the Gaussian posterior ``q(z | x)`` (float32, cells x n_latent).
``obs[key + "_log_library_m"]``, ``obs[key + "_log_library_v"]``
    Mean and variance of the log library size (the observed one: variance 0).

and lists ``key`` in ``uns["cellvi_minified"]["keys"]``. Its counts are an all-zero sparse
matrix of the right shape in the registered layer, so the registry still reads it. Tools that
only decode the latent (``embed``, ``normalize`` with its denoised proteins, the families'
own embedding and normalising verbs, posterior sampling, ``latent_posterior``, differential
expression) use the stored posterior instead of running the encoder; tools that need the counts
refuse minified data. For an RNA + protein model the posterior is that of ``q(z | x, y)``, the
library the observed RNA one, and the protein counts are all zero too; the protein background's
posterior depends on ``z`` only and is decoded again.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from anndata import AnnData

from .payload import to_builtin

MINIFIED_KEY = "cellvi_minified"
POSTERIOR_FIELDS = ("qz_m", "qz_v", "log_library_m", "log_library_v")


def field_names(key: str) -> dict[str, tuple[str, str]]:
    """Where each posterior field of model ``key`` lives: ``(attribute, name)``."""
    return {
        "qz_m": ("obsm", f"{key}_qz_m"),
        "qz_v": ("obsm", f"{key}_qz_v"),
        "log_library_m": ("obs", f"{key}_log_library_m"),
        "log_library_v": ("obs", f"{key}_log_library_v"),
    }


def minified_keys(adata: AnnData) -> list[str]:
    """The model keys whose posterior ``adata`` stores instead of counts."""
    marker = adata.uns.get(MINIFIED_KEY)
    if not isinstance(marker, dict):
        return []
    return [str(k) for k in to_builtin(marker.get("keys", []))]


def stored_posterior(adata: AnnData, key: str) -> dict[str, np.ndarray] | None:
    """The stored posterior of model ``key`` as float32 arrays, or ``None`` if not minified."""
    if key not in minified_keys(adata):
        return None
    out = {}
    for field, (where, name) in field_names(key).items():
        table = getattr(adata, where)
        if name not in table:
            raise KeyError(
                f"adata is minified for model {key!r} but has no adata.{where}[{name!r}]; the "
                "file is incomplete: save it again with cv.hub.save(..., include_data='minified')."
            )
        out[field] = np.ascontiguousarray(np.asarray(table[name]), dtype=np.float32)
    return out


def write_posterior(adata: AnnData, key: str, posterior: dict[str, np.ndarray]) -> None:
    """Store ``posterior`` (fields :data:`POSTERIOR_FIELDS`) for model ``key`` in ``adata``."""
    for field, (where, name) in field_names(key).items():
        getattr(adata, where)[name] = posterior[field]
    keys = [*dict.fromkeys([*minified_keys(adata), key])]
    adata.uns[MINIFIED_KEY] = {"keys": np.asarray(keys, dtype=str)}


def require_counts(adata: AnnData, key: str, what: str) -> None:
    """Refuse minified data (it has no counts) for a computation that needs them."""
    if key in minified_keys(adata):
        raise ValueError(
            f"adata is minified for model {key!r}: it stores the latent posterior, not the "
            f"counts, and {what} needs the counts. Use the full data (e.g. shared with "
            "cv.hub.save(..., include_data=True))."
        )


def stored_inference(module, mb: dict[str, torch.Tensor], *, deterministic: bool) -> dict:
    """What ``module.inference`` returns, from the stored posterior of each cell.

    Draws the same random numbers, in the same order, as the encoder path.
    """
    qz_m, qz_v = mb["qz_m"], mb["qz_v"]
    z = qz_m if deterministic else qz_m + qz_v.sqrt() * torch.randn_like(qz_m)
    if module.latent_distribution == "ln":
        z = F.softmax(z, dim=-1)
    out = {"qz_m": qz_m, "qz_v": qz_v, "z": z}
    ql_m, ql_v = mb["log_library_m"], mb["log_library_v"]
    if getattr(module, "l_encoder", None) is None:  # observed library (always with proteins)
        out["log_library"] = ql_m
    else:
        log_l = ql_m if deterministic else ql_m + ql_v.sqrt() * torch.randn_like(ql_m)
        out.update(ql_m=ql_m, ql_v=ql_v, log_library=log_l)
    return out
