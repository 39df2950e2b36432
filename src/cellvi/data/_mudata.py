"""RNA + protein data: a MuData with two modalities, or an AnnData with proteins in ``.obsm``.

A multimodal registry is an ordinary registry of the RNA counts (see
:mod:`cellvi.data.registry`) with one more entry, ``protein``, a dict with:

``source``
    ``"modality"`` (a MuData modality) or ``"obsm"`` (an AnnData ``.obsm`` entry).
``rna_modality``, ``protein_modality``, ``protein_layer``, ``protein_obsm_key``
    Where the counts are read (``""`` where it does not apply; layer ``""`` is ``X``).
``protein_names``, ``n_proteins``
    The proteins, in column order.
``protein_batch_mask``
    ``(n_batch, n_proteins)`` uint8: 1 where the protein was measured in the batch (it has a
    non-zero count there), 0 where the whole batch is zero for it.

Obs columns (batch, labels, covariates) of a MuData are looked up in ``mdata.obs`` first, then
in the RNA modality's ``.obs``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

from ._fields import quoted_list
from ._format import check_registry, str_array, str_list
from .validation import validate_counts

DEFAULT_RNA, DEFAULT_PROTEIN = "rna", "prot"


def is_mudata(data: object) -> bool:
    """Whether ``data`` is a MuData (checked by name: mudata is imported only when used)."""
    return type(data).__name__ == "MuData" or type(data).__module__.startswith("mudata")


def _modality(mdata, name: str, role: str) -> AnnData:
    if name not in mdata.mod:
        raise KeyError(
            f"The MuData has no {role} modality {name!r} (modalities: {quoted_list(mdata.mod)}); "
            f"pass {role}_modality=<name> to cv.pp.setup_registry."
        )
    return mdata.mod[name]


def _check_same_cells(mdata, rna: AnnData, prot: AnnData, names: tuple[str, str]) -> None:
    rna_cells, prot_cells = rna.obs_names, prot.obs_names
    if len(rna_cells) == len(prot_cells) and (rna_cells == prot_cells).all():
        if len(mdata.obs_names) == len(rna_cells) and (mdata.obs_names == rna_cells).all():
            return
    only_rna = rna_cells.difference(prot_cells).size
    only_prot = prot_cells.difference(rna_cells).size
    raise ValueError(
        f"Modalities {names[0]!r} and {names[1]!r} must hold the same cells in the same order "
        f"(found {rna.n_obs:,} and {prot.n_obs:,} cells; {only_rna:,} only in {names[0]!r}, "
        f"{only_prot:,} only in {names[1]!r}). Keep the shared cells with "
        "`mu.pp.intersect_obs(mdata)` and put them in one order."
    )


def rna_anndata(data, registry_or_names: dict | tuple[str, str]) -> AnnData:
    """The RNA counts as an AnnData whose ``.obs`` also has the MuData's joint columns.

    For an AnnData the data itself is returned. Nothing is copied but ``.obs``.
    """
    if not is_mudata(data):
        return data
    if isinstance(registry_or_names, dict):
        spec = registry_or_names["protein"]
        names = (str(spec["rna_modality"]), str(spec["protein_modality"]))
    else:
        names = registry_or_names
    rna = _modality(data, names[0], "rna")
    prot = _modality(data, names[1], "protein")
    _check_same_cells(data, rna, prot, names)
    obs = rna.obs.copy()
    for column in data.obs.columns:
        # columns mudata copies from the modalities carry a "<modality>:" prefix
        if not any(str(column).startswith(f"{m}:") for m in data.mod):
            obs[column] = data.obs[column].to_numpy()
    return AnnData(X=rna.X, obs=obs, var=rna.var, layers=dict(rna.layers))


def _obsm_proteins(
    adata: AnnData, key: str, protein_names: Sequence[str] | None
) -> tuple[object, list[str] | None]:
    if key not in adata.obsm:
        raise KeyError(
            f"adata.obsm has no {key!r} (found {quoted_list(adata.obsm)}); pass the key of the "
            "protein counts as protein_obsm_key."
        )
    value = adata.obsm[key]
    if isinstance(value, pd.DataFrame):
        names = [str(c) for c in value.columns]
        if protein_names is not None and [str(n) for n in protein_names] != names:
            raise ValueError(
                f"protein_names differ from the columns of adata.obsm[{key!r}]; leave "
                "protein_names out to use the DataFrame's columns."
            )
        return value.to_numpy(), names
    if protein_names is None:
        return value, None  # an unnamed array
    names = [str(n) for n in protein_names]
    if len(names) != value.shape[1]:
        raise ValueError(
            f"protein_names has {len(names)} names but adata.obsm[{key!r}] has "
            f"{value.shape[1]} columns."
        )
    return value, names


def protein_matrix(data, spec: dict, protein_names: Sequence[str] | None = None):
    """The protein counts (as stored) and their names (``None`` for an unnamed ``.obsm``
    array), from a MuData or ``.obsm``."""
    if spec["source"] == "obsm":
        return _obsm_proteins(data, str(spec["protein_obsm_key"]), protein_names)
    prot = _modality(data, str(spec["protein_modality"]), "protein")
    layer = str(spec["protein_layer"])
    if layer and layer not in prot.layers:
        raise KeyError(
            f"Protein modality has no layer {layer!r} (layers: {quoted_list(prot.layers)}); "
            "pass protein_layer=None to use its X."
        )
    return (prot.layers[layer] if layer else prot.X), [str(v) for v in prot.var_names]


def protein_source(spec: dict) -> str:
    """How messages name the protein counts."""
    if spec["source"] == "obsm":
        return f"adata.obsm[{str(spec['protein_obsm_key'])!r}]"
    layer = str(spec["protein_layer"])
    where = f"layers[{layer!r}]" if layer else "X"
    return f"mdata[{str(spec['protein_modality'])!r}].{where}"


def dense_protein_counts(
    data,
    spec: dict,
    *,
    protein_names: Sequence[str] | None = None,
    expected_names: Sequence[str] | None = None,
):
    """Validated protein counts as a dense float32 ``(n_cells, n_proteins)`` array, and names.

    Dense and sparse storage are accepted alike (there are few proteins). ``protein_names``
    names the columns of an ``.obsm`` array; ``expected_names`` are the proteins a model needs.
    """
    matrix, names = protein_matrix(data, spec, protein_names)
    if names is None:  # an unnamed array: only its width can be checked
        names = [f"protein_{i}" for i in range(matrix.shape[1])]
        if expected_names is not None and len(expected_names) == len(names):
            names = [str(n) for n in expected_names]
    if expected_names is not None and list(names) != [str(n) for n in expected_names]:
        raise ValueError(
            f"The proteins of {protein_source(spec)} ({len(names)}) are not the model's "
            f"({len(expected_names)}) in the same order; select them with "
            "`mdata.mod['prot'] = mdata['prot'][:, protein_names].copy()`."
        )
    if sparse.issparse(matrix):
        matrix = matrix.toarray()
    matrix = np.asarray(matrix)
    if matrix.dtype.kind in "iu":
        matrix = matrix.astype(np.float32)
    if matrix.ndim != 2 or matrix.shape[1] == 0:
        raise ValueError(f"{protein_source(spec)} has no proteins (shape {matrix.shape}).")
    source = protein_source(spec)
    validate_counts(matrix, source=source, available_layers=[])
    return np.ascontiguousarray(matrix, dtype=np.float32), names


def protein_batch_mask(counts: np.ndarray, batch: np.ndarray, n_batch: int) -> np.ndarray:
    """``(n_batch, n_proteins)`` uint8: 1 where the protein has a non-zero count in the batch."""
    totals = np.zeros((n_batch, counts.shape[1]))
    np.add.at(totals, batch, counts)
    return (totals > 0).astype(np.uint8)


def protein_spec(
    data,
    *,
    rna_modality: str,
    protein_modality: str,
    protein_layer: str | None,
    protein_obsm_key: str | None,
) -> dict:
    """Where the protein counts are: the start of the ``protein`` registry entry."""
    if is_mudata(data):
        if protein_obsm_key is not None:
            raise ValueError("protein_obsm_key is for an AnnData; a MuData uses protein_modality.")
        return {
            "source": "modality",
            "rna_modality": rna_modality,
            "protein_modality": protein_modality,
            "protein_layer": protein_layer or "",
            "protein_obsm_key": "",
        }
    if protein_layer:
        raise ValueError("protein_layer is for a MuData; an AnnData uses protein_obsm_key.")
    return {
        "source": "obsm",
        "rna_modality": "",
        "protein_modality": "",
        "protein_layer": "",
        "protein_obsm_key": protein_obsm_key,
    }


def complete_protein_spec(
    spec: dict, counts: np.ndarray, names: list[str], batch: np.ndarray, n_batch: int
) -> dict:
    """Add names, count and batch mask to a protein registry entry."""
    if len(set(names)) != len(names):
        raise ValueError(
            "Protein names must be unique; make them so, e.g. with var_names_make_unique."
        )
    return spec | {
        "protein_names": str_array(names),
        "n_proteins": int(len(names)),
        "protein_batch_mask": protein_batch_mask(counts, batch, n_batch),
    }


def get_protein_registry(data, key: str) -> dict:
    """The registry of RNA + protein data, with a clear error when proteins were not set up."""
    hint = (
        "run `cv.pp.setup_registry(mdata, batch_key=...)` on a MuData with 'rna' and 'prot' "
        "modalities, or `cv.pp.setup_registry(adata, protein_obsm_key=..., ...)` first."
    )
    if key not in data.uns:
        raise KeyError(f"No cellvi registry (no .uns[{key!r}]); {hint}")
    registry = data.uns[key]
    check_registry(registry, where=f".uns[{key!r}]")
    if "protein" not in registry:
        raise ValueError(f"The cellvi registry in .uns[{key!r}] has no protein counts; {hint}")
    return registry


def protein_names_of(registry: dict) -> list[str]:
    """The registered protein names."""
    return str_list(registry["protein"]["protein_names"])
