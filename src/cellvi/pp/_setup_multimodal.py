"""Registering RNA + protein data: a MuData, or an AnnData with proteins in ``.obsm``."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from typing import Any

from anndata import AnnData

from ..data._fields import category_codes
from ..data._mudata import (
    complete_protein_spec,
    dense_protein_counts,
    is_mudata,
    protein_spec,
    rna_anndata,
)
from ..data.backed import counts_on_disk
from ..data.registry import REGISTRY_KEY, build_registry

logger = logging.getLogger("cellvi")


def build_multimodal_registry(
    data,
    *,
    rna_layer: str | None,
    protein_layer: str | None,
    rna_modality: str,
    protein_modality: str,
    protein_obsm_key: str | None,
    protein_names: Sequence[str] | None,
    obs_keys: dict[str, Any],
) -> dict:
    """The registry of RNA and protein counts; ``data`` is never modified."""
    if not is_mudata(data) and not isinstance(data, AnnData):
        raise TypeError(f"Expected a MuData or an AnnData, got {type(data).__name__}.")
    spec = protein_spec(
        data,
        rna_modality=rna_modality,
        protein_modality=protein_modality,
        protein_layer=protein_layer,
        protein_obsm_key=protein_obsm_key,
    )
    rna = rna_anndata(data, (rna_modality, protein_modality))
    if counts_on_disk(rna):
        raise ValueError(
            "The RNA counts are on disk (backed); RNA + protein models train from memory: load "
            "them with "
            "`.to_memory()` first."
        )
    registry = build_registry(rna, layer=rna_layer, **obs_keys)
    counts, names = dense_protein_counts(data, spec, protein_names=protein_names)
    batch = category_codes(
        rna, str(registry["batch_key"]), registry["batch_categories"], role="batch_key"
    )
    spec = complete_protein_spec(spec, counts, names, batch, int(registry["n_batch"]))
    missing = int((spec["protein_batch_mask"] == 0).sum())
    if missing:
        warnings.warn(
            f"{missing} (batch, protein) pairs have only zero counts; those proteins are treated "
            "as not measured in those batches (left out of the protein likelihood).",
            UserWarning,
            stacklevel=3,
        )
    registry["protein"] = spec
    return registry


def setup_multimodal(data, *, copy: bool, **options) -> Any:
    """``cv.pp.setup_registry`` for RNA + protein data (see there)."""
    registry = build_multimodal_registry(data, **options)
    if copy:
        data = data.copy()
    elif isinstance(data, AnnData) and data.is_view:
        # like scanpy: a view cannot hold new .uns entries, so it becomes an actual AnnData
        warnings.warn("Received a view of an AnnData. Making a copy.", UserWarning, stacklevel=3)
        data._init_as_actual(data.copy())
    data.uns[REGISTRY_KEY] = registry
    spec = registry["protein"]
    where = "mdata.uns" if is_mudata(data) else "adata.uns"
    logger.info(
        f"cellvi registry in {where}[{REGISTRY_KEY!r}]: {registry['n_cells']:,} cells, "
        f"{registry['n_vars']:,} genes and {spec['n_proteins']} proteins, "
        f"{registry['n_batch']} batch(es)."
    )
    return data if copy else None
