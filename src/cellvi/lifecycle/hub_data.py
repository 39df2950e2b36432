"""The data shared next to a model folder (``adata.h5ad``): the registered counts, or minified.

``include_data=True`` shares what the model reads: the registered counts (in the registered
layer), the registered ``obs`` columns, the genes and the latent ``obsm["X_" + key]``.
``include_data="minified"`` shares the same without counts (and without the latent, which
``load_data`` recomputes): the latent posterior and library sizes of every cell (see :mod:`cellvi.lifecycle.minified`), enough to embed, normalise and
decode the reference again, at a fraction of the size.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from anndata import AnnData

from ..data._format import str_list
from ..data.registry import extract_registered_data
from ..tl._common import (
    LoadedModel,
    compute_latent,
    inference_device,
    load_model,
    minibatches,
    model_data,
    run_inference,
)
from .minified import MINIFIED_KEY, field_names, require_counts, write_posterior

DATA_FILE = "adata.h5ad"
#: ``uns`` entry of the shared AnnData: the model key it was saved under and what it holds.
SHARED_DATA_KEY = "cellvi_shared_data"
IncludeData = bool | Literal["minified"]


def check_include_data(include_data: IncludeData) -> None:
    """``False``, ``True`` or ``"minified"``."""
    if not (isinstance(include_data, bool) or include_data == "minified"):
        raise ValueError(f"include_data must be False, True or 'minified', got {include_data!r}.")


def _registered_columns(registry: dict) -> list[str]:
    keys = [str(registry[k]) for k in ("batch_key", "labels_key", "size_factor_key")]
    keys += str_list(registry["categorical_covariate_keys"])
    keys += str_list(registry["continuous_covariate_keys"])
    return [k for k in keys if k]


@torch.inference_mode()
def compute_posterior(model: LoadedModel, adata: AnnData) -> dict[str, np.ndarray]:
    """Mean and variance of the latent and of the log library size of every cell."""
    module = model.module.to(inference_device(model.module)).eval()
    parts: dict[str, list[torch.Tensor]] = {}
    for mb in minibatches(model_data(adata, model), inference_device(module)):
        inf = run_inference(module, mb, deterministic=True)
        log_l = inf.get("ql_m", inf["log_library"])
        fields = {
            "qz_m": inf["qz_m"],
            "qz_v": inf["qz_v"],
            "log_library_m": log_l,
            "log_library_v": inf.get("ql_v", torch.zeros_like(log_l)),
        }
        for name, value in fields.items():
            parts.setdefault(name, []).append(value.float().cpu())
    return {name: torch.cat(values).numpy() for name, values in parts.items()}


def shared_anndata(adata: AnnData, key: str, include_data: IncludeData) -> AnnData:
    """A new AnnData with what the model in ``adata.uns[key]`` needs (the model itself is in
    the folder, not in this AnnData)."""
    model = load_model(adata, key)
    if include_data is True:
        require_counts(adata, key, "include_data=True")
    registered = extract_registered_data(adata, model.registry, var_names=model.var_names)
    obs = adata.obs[_registered_columns(model.registry)].copy()
    out = AnnData(obs=obs, var=pd.DataFrame(index=pd.Index(model.var_names, dtype=str)))
    if include_data == "minified":
        counts = sp.csr_matrix(adata.shape, dtype=np.float32)
        # the latent is left out: load_data recomputes it from the stored posterior
        write_posterior(out, key, compute_posterior(model, adata))
    else:
        X = registered.X
        counts = X.copy() if sp.issparse(X) else np.array(X)
        out.obsm[f"X_{key}"] = compute_latent(model.module, model_data(adata, model))
    layer = str(model.registry["layer"])
    if layer:
        out.layers[layer] = counts
    else:
        out.X = counts
    kind = "minified" if include_data == "minified" else "full"
    out.uns[SHARED_DATA_KEY] = {"key": key, "include_data": kind}
    return out


def rename_model_fields(adata: AnnData, key: str) -> AnnData:
    """Shared data saved under another model key, with its fields moved to ``key``."""
    old = str(adata.uns.get(SHARED_DATA_KEY, {}).get("key", key))
    if old == key:
        return adata
    if f"X_{old}" in adata.obsm:
        adata.obsm[f"X_{key}"] = adata.obsm.pop(f"X_{old}")
    if MINIFIED_KEY in adata.uns:
        for (where, old_name), (_, new_name) in zip(
            field_names(old).values(), field_names(key).values(), strict=True
        ):
            table = getattr(adata, where)
            table[new_name] = table.pop(old_name)
        adata.uns[MINIFIED_KEY] = {"keys": np.asarray([key], dtype=str)}
    adata.uns[SHARED_DATA_KEY] = {**adata.uns[SHARED_DATA_KEY], "key": key}
    return adata
