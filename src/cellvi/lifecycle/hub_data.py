"""The data shared next to a model folder (``adata.h5ad``): the registered counts, or minified.

``include_data=True`` shares what the model reads: the registered counts (in the registered
layer), the registered ``obs`` columns, the genes and the latent ``obsm["X_" + key]``.
``include_data="minified"`` shares the same without counts (and without the latent, which
``load_data`` recomputes): the latent posterior and library sizes of every cell (see
:mod:`cellvi.lifecycle.minified`), enough to embed, normalise and decode the reference again,
at a fraction of the size.

An RNA + protein model's data keeps the layout it was registered with: a MuData (``mdata.h5mu``)
with the RNA and protein modalities, or an AnnData with the protein counts in ``.obsm``
(``adata.h5ad``); minified, its protein counts are all zero too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from anndata import AnnData

from ..data._format import str_list
from ..data._mudata import dense_protein_counts, is_mudata, rna_anndata
from ..data.registry import extract_registered_data
from .minified import MINIFIED_KEY, field_names, require_counts, write_posterior
from .runtime import (
    LoadedModel,
    compute_latent,
    inference_device,
    load_model,
    minibatches,
    model_data,
    run_inference,
)

DATA_FILE = "adata.h5ad"
#: The data file of a model trained on a MuData (RNA + protein): the same, as a MuData.
MUDATA_FILE = "mdata.h5mu"
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


def shared_anndata(adata, key: str, include_data: IncludeData):
    """A new AnnData (a MuData for an RNA + protein model trained on one) with what the model in
    ``adata.uns[key]`` needs (the model itself is in the folder, not in this object)."""
    model = load_model(adata, key)
    if include_data is True:
        require_counts(adata, key, "include_data=True")
    minified = include_data == "minified"
    if "protein" in model.registry:
        out = _shared_multimodal(adata, model, minified)
    else:
        registered = extract_registered_data(adata, model.registry, var_names=model.var_names)
        obs = adata.obs[_registered_columns(model.registry)].copy()
        out = _counts_anndata(obs, model, None if minified else registered.X)
    if minified:
        # the latent is left out: load_data recomputes it from the stored posterior
        write_posterior(out, key, compute_posterior(model, adata))
    else:
        out.obsm[f"X_{key}"] = compute_latent(model.module, model_data(adata, model))
    out.uns[SHARED_DATA_KEY] = {"key": key, "include_data": "minified" if minified else "full"}
    return out


def _counts_anndata(obs: pd.DataFrame, model: LoadedModel, X) -> AnnData:
    """The model's genes with counts ``X`` (``None``: all-zero sparse) in the registered layer."""
    out = AnnData(obs=obs, var=pd.DataFrame(index=pd.Index(model.var_names, dtype=str)))
    if X is None:
        counts = sp.csr_matrix(out.shape, dtype=np.float32)
    else:
        counts = X.copy() if sp.issparse(X) else np.array(X)
    layer = str(model.registry["layer"])
    if layer:
        out.layers[layer] = counts
    else:
        out.X = counts
    return out


def _shared_multimodal(data, model: LoadedModel, minified: bool):
    """RNA + protein data laid out as it was registered: a MuData with the RNA and protein
    modalities, or an AnnData with the protein counts in ``.obsm`` (minified: all zeros)."""
    spec = model.registry["protein"]
    names = model.protein_names
    rna = rna_anndata(data, model.registry)
    registered = extract_registered_data(rna, model.registry, var_names=model.var_names)
    obs = rna.obs[_registered_columns(model.registry)].copy()
    out = _counts_anndata(obs, model, None if minified else registered.X)
    if minified:
        protein = sp.csr_matrix((out.n_obs, len(names)), dtype=np.float32)
    else:
        protein, _ = dense_protein_counts(data, spec, expected_names=names)
    if spec["source"] == "obsm":
        dense = protein.toarray() if sp.issparse(protein) else protein
        out.obsm[str(spec["protein_obsm_key"])] = pd.DataFrame(
            dense, index=out.obs_names, columns=names
        )
        return out
    import mudata

    prot = AnnData(obs=pd.DataFrame(index=out.obs_names), var=pd.DataFrame(index=names))
    layer = str(spec["protein_layer"])
    if layer:
        prot.layers[layer] = protein
    else:
        prot.X = protein
    return mudata.MuData({str(spec["rna_modality"]): out, str(spec["protein_modality"]): prot})


def data_file(data) -> str:
    """``mdata.h5mu`` for a MuData, else ``adata.h5ad``."""
    return MUDATA_FILE if is_mudata(data) else DATA_FILE


def write_data_file(data, folder: Path) -> None:
    """Write ``data`` (``None``: none) to ``folder``, removing the data file of an older save."""
    written = None if data is None else data_file(data)
    for name in (DATA_FILE, MUDATA_FILE):
        if name != written:
            (folder / name).unlink(missing_ok=True)  # never leave data of an older model
    if written == MUDATA_FILE:
        data.write_h5mu(folder / MUDATA_FILE, compression="gzip")
    elif written is not None:
        data.write_h5ad(folder / DATA_FILE, compression="gzip")


def read_data_file(folder: Path, source: str):
    """The shared data in ``folder`` (a MuData or an AnnData), read without unpickling."""
    if (folder / MUDATA_FILE).is_file():
        import mudata

        return mudata.read_h5mu(folder / MUDATA_FILE)
    if (folder / DATA_FILE).is_file():
        import anndata

        return anndata.read_h5ad(folder / DATA_FILE)
    raise FileNotFoundError(
        f"{source} has no {DATA_FILE} or {MUDATA_FILE}: the model was saved without data. Save "
        "it with `cv.hub.save(adata, path, include_data=True)` (or 'minified'), or load the "
        "model into your own data with `cv.hub.load(path, adata)`."
    )


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
