"""Where the per-modality results of RNA and RNA + protein models are read from and written to.

An RNA model reads and writes one AnnData. An RNA + protein model reads a MuData (RNA and protein
modalities) or an AnnData with protein counts in ``.obsm``, and writes its results as
``cv.tl.normalize`` does: on a MuData, RNA results on the RNA modality and protein results on the
protein modality under the same name; on an AnnData, RNA results on the AnnData and protein results
in its ``.obsm`` (dense ones as DataFrames with the protein names as columns).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from ..data._extract import RegisteredData
from ..data._mudata import dense_protein_counts, is_mudata, rna_anndata
from ..data._protein_loader import ProteinTensorData
from ..data.loader import TensorData
from ..data.registry import extract_registered_data
from ..data.tensors import tensor_data
from .runtime import LoadedModel, with_stored_posterior


def is_multimodal(model: LoadedModel) -> bool:
    """Whether the model's family reads and generates proteins as well as RNA."""
    return model.family.has_proteins


def rna_target(data, model: LoadedModel) -> AnnData:
    """The AnnData that holds the model's RNA (the RNA modality itself, of a MuData)."""
    if is_multimodal(model) and is_mudata(data):
        return data.mod[str(model.registry["protein"]["rna_modality"])]
    return data


def rna_counts_view(data, model: LoadedModel) -> AnnData:
    """The RNA as an AnnData to read from, with the MuData's joint ``.obs`` columns."""
    return rna_anndata(data, model.registry) if is_multimodal(model) else data


def registered_counts(
    data, model: LoadedModel
) -> tuple[RegisteredData, np.ndarray | None, TensorData]:
    """The model's registered RNA (counts in ``.X``), its protein counts (``None`` for a model
    without proteins) and the tensors the model reads from them, with the stored posterior on
    minified data."""
    view = rna_counts_view(data, model)
    rna = extract_registered_data(view, model.registry, var_names=model.var_names)
    if not is_multimodal(model):
        return rna, None, with_stored_posterior(tensor_data(rna), data, model.key)
    spec = model.registry["protein"]
    protein, _ = dense_protein_counts(data, spec, expected_names=model.protein_names)
    tensors = ProteinTensorData.from_registered_with_proteins(rna, protein)
    return rna, protein, with_stored_posterior(tensors, data, model.key)


def check_protein_obsm_name(data, model: LoadedModel, name: str) -> None:
    """Refuse an ``.obsm`` result name that would overwrite the model's protein counts."""
    spec = model.registry.get("protein") if is_multimodal(model) else None
    if spec is None or is_mudata(data) or str(spec["source"]) != "obsm":
        return
    if name == str(spec["protein_obsm_key"]):
        raise ValueError(
            f"The result name {name!r} is adata.obsm's protein counts, which it would "
            "overwrite; choose another name."
        )


def write_protein(data, model: LoadedModel, value, *, name: str, obsm_name: str,
                  where: str = "layers") -> str:  # fmt: skip
    """Write a ``(n_cells, n_proteins)`` (or wider) protein result; returns where it went.

    On a MuData: the protein modality's ``.layers[name]`` (``where="obsm"``: ``.obsm``). On an
    AnnData: ``adata.obsm[obsm_name]``, a DataFrame with the protein names as columns when
    ``value`` is dense with one column per protein, else the matrix as is.
    """
    if is_mudata(data):
        modality = str(model.registry["protein"]["protein_modality"])
        getattr(data.mod[modality], where)[name] = value
        return f"mdata[{modality!r}].{where}[{name!r}]"
    names = model.protein_names
    if not sp.issparse(value) and np.ndim(value) == 2 and value.shape[1] == len(names):
        value = pd.DataFrame(value, index=data.obs_names, columns=names)
    data.obsm[obsm_name] = value
    return f"adata.obsm[{obsm_name!r}]"
