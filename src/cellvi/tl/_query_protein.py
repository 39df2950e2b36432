"""Preparing RNA + protein query data for a reference whose family reads proteins.

Genes are aligned as for an RNA-only reference (:mod:`._query`). Proteins are put in the reference's order too;
a protein the query lacks becomes an all-zero column that is *not measured* in the query's new
batches (``protein_batch_mask`` 0: out of the protein likelihood), never a protein with zero
counts. The family's ``init_query`` hook then initialises what the new batches have of their
own (e.g. a protein background prior).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from anndata import AnnData

from ..data._fields import quoted_list
from ..data._mudata import (
    dense_protein_counts,
    is_mudata,
    protein_batch_mask,
    protein_matrix,
    protein_names_of,
    protein_source,
    rna_anndata,
)
from ..data._protein_loader import ProteinTensorData, protein_tensor_data
from ._query import (
    PADDED_COLUMN,
    PreparedQuery,
    align_genes,
    extend_registry,
    extended_module,
    genes_match,
)


def check_layout(query, spec: dict) -> None:
    """The query holds its proteins where the reference's registry says (modality or obsm)."""
    if spec["source"] == "modality":
        names = (str(spec["rna_modality"]), str(spec["protein_modality"]))
        if not is_mudata(query):
            raise TypeError(
                f"the reference was trained on a MuData (modalities {names[0]!r} and "
                f"{names[1]!r}); pass the query as a MuData laid out the same way, e.g. "
                f"`mu.MuData({{{names[0]!r}: rna, {names[1]!r}: prot}})`."
            )
        missing = [m for m in names if m not in query.mod]
        if missing:
            raise KeyError(
                f"the query MuData lacks the reference's modalities {missing} (it has "
                f"{quoted_list(query.mod)}); rename them to the reference's."
            )
        layer = str(spec["protein_layer"])
        if layer and layer not in query.mod[names[1]].layers:
            raise KeyError(
                f"the query's {names[1]!r} modality has no layer {layer!r}, where the "
                "reference's protein counts were; put the raw protein counts there."
            )
        return
    key = str(spec["protein_obsm_key"])
    if is_mudata(query) or not isinstance(query, AnnData):
        raise TypeError(
            f"the reference was trained on an AnnData with proteins in "
            f".obsm[{key!r}]; pass the query the same way."
        )
    if key not in query.obsm:
        raise KeyError(
            f"the query has no .obsm[{key!r}] (found {quoted_list(query.obsm)}), where the "
            "reference's protein counts were; put the query's protein counts there."
        )


def protein_positions(query, spec: dict, names: list[str]) -> np.ndarray:
    """For each reference protein, its column in the query (-1: missing); errors on
    duplicated names, on no shared protein, and on an unnamed array of another width."""
    matrix, query_names = protein_matrix(query, spec)
    if query_names is None:  # an unnamed .obsm array: only its width can be checked
        if matrix.shape[1] != len(names):
            raise ValueError(
                f"{protein_source(spec)} is an unnamed array of {matrix.shape[1]} proteins, the "
                f"reference has {len(names)}; store it as a DataFrame with protein names as "
                "columns so that the proteins can be matched by name."
            )
        return np.arange(len(names))
    index = pd.Index(query_names)
    if index.has_duplicates:
        repeated = index[index.duplicated()].unique()
        raise ValueError(
            f"the query has duplicated protein names ({', '.join(map(repr, repeated[:5]))}): "
            "mapping needs one column per protein. Make them unique or sum the duplicates."
        )
    position = index.get_indexer(pd.Index(names))
    if (position < 0).all():
        raise ValueError(
            f"none of the reference's {len(names)} proteins (e.g. {names[:3]}) is among the "
            f"query's {len(query_names)} (e.g. {query_names[:3]}); harmonise the protein "
            "names (e.g. 'CD3_TotalSeqB' -> 'CD3') before mapping."
        )
    return position


def _aligned_proteins(query, spec: dict, position: np.ndarray) -> np.ndarray:
    counts, _ = dense_protein_counts(query, spec)  # validated raw counts
    found = position >= 0
    out = np.zeros((counts.shape[0], len(position)), dtype=np.float32)
    out[:, found] = counts[:, position[found]]
    return out


def _aligned_target(query, registry: dict, var_names, proteins, names, padded):
    """A new MuData / AnnData with the reference's genes and proteins in its order."""
    spec = registry["protein"]
    rna = rna_anndata(query, registry)
    if genes_match(rna, var_names):
        rna = rna.copy()
    else:
        rna = align_genes(rna, var_names, str(registry["layer"]))
    if spec["source"] == "obsm":
        key = str(spec["protein_obsm_key"])
        named = isinstance(query.obsm[key], pd.DataFrame)
        rna.obsm[key] = (
            pd.DataFrame(proteins, index=rna.obs_names, columns=names) if named else proteins
        )
        return rna
    import mudata as mu

    source = query.mod[str(spec["protein_modality"])]
    prot = AnnData(
        proteins, obs=source.obs.copy(), var=pd.DataFrame({PADDED_COLUMN: padded}, index=names)
    )
    if str(spec["protein_layer"]):
        prot.layers[str(spec["protein_layer"])] = proteins.copy()
    out = mu.MuData({str(spec["rna_modality"]): rna, str(spec["protein_modality"]): prot})
    for column in query.obs.columns:
        if not any(str(column).startswith(f"{m}:") for m in query.mod):
            out.obs[column] = query.obs[column].to_numpy()
    for name, value in query.obsm.items():
        if name not in query.mod:  # mudata mirrors each modality's presence in .obsm
            out.obsm[name] = value
    return out


def _protein_mask(reference_mask, data: ProteinTensorData, missing, n_batch, names) -> np.ndarray:
    """The reference's rows, then one row per new batch: measured where it has counts."""
    n_old = reference_mask.shape[0]
    batch = data.batch.numpy()
    measured = protein_batch_mask(data.protein.numpy(), batch, n_batch)
    known = np.unique(batch[batch < n_old])
    lacking = reference_mask[known][:, missing].any(0) if len(known) else np.zeros(0, bool)
    if lacking.any():
        shown = [names[p] for p in np.flatnonzero(missing)[lacking]]
        raise ValueError(
            f"the query lacks proteins {shown[:5]} that the reference measured in the "
            "batches it shares with the query; they cannot be marked unmeasured for a batch "
            "the reference already knows. Give those cells a new batch name, or add the "
            "proteins."
        )
    return np.concatenate([reference_mask, measured[n_old:]]).astype(np.uint8)


def prepare_with_proteins(model, query, overlap: float, *, copy: bool, seed: int) -> PreparedQuery:
    """An RNA + protein reference extended to the query's batches, its weights transplanted."""
    spec = model.registry["protein"]
    names = protein_names_of(model.registry)
    position = protein_positions(query, spec, names)
    missing = position < 0
    in_order = not missing.any() and len(position) == protein_matrix(query, spec)[0].shape[1]
    in_order = in_order and bool((position == np.arange(len(names))).all())
    rna = rna_anndata(query, model.registry)
    if not copy and not in_order:
        raise ValueError(
            "the query's proteins are not the reference's proteins in the same order; use "
            "`query = cv.tl.map_query(query, reference=..., key=..., copy=True)`, which "
            "returns a copy with the reference's proteins (missing ones unmeasured)."
        )
    proteins = _aligned_proteins(query, spec, position)
    if in_order and genes_match(rna, model.var_names):
        target = query
    else:
        target = _aligned_target(query, model.registry, model.var_names, proteins, names, missing)
    keep_labels = model.family.reads_labels(model.params)
    registry = extend_registry(model.registry, rna_anndata(target, model.registry),
                               keep_labels=keep_labels)  # fmt: skip
    registry["protein"] = dict(spec)  # never the reference's own dict
    data = protein_tensor_data(target, registry, var_names=model.var_names, protein_names=names)
    n_batch = int(registry["n_batch"])
    reference_mask = np.asarray(spec["protein_batch_mask"], dtype=np.uint8)
    mask = _protein_mask(reference_mask, data, missing, n_batch, names)
    registry["protein"]["protein_batch_mask"] = mask
    module, masks = extended_module(model, registry, data, seed)
    record = {
        "gene_overlap": overlap,
        "protein_overlap": float((~missing).mean()),
        "missing_proteins": [names[p] for p in np.flatnonzero(missing)],
    }
    extra = {"protein_names": np.asarray(names, dtype=str)}
    return PreparedQuery(target, registry, data, module, masks, record, extra)
