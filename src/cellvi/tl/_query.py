"""Preparing a query data set for a reference model: genes aligned, registry extended."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from anndata import AnnData
from scipy import sparse

from ..analysis.surgery import transplant
from ..data._fields import count_matrix, obs_column
from ..data._format import str_array, str_list
from ..data.loader import TensorData
from ..data.registry import extract_registered_data
from ..data.tensors import tensor_data

#: ``.var`` column marking genes the query lacked (all-zero columns added for the model).
PADDED_COLUMN = "cellvi_padded"


def gene_overlap(query: AnnData, var_names: list[str], min_gene_overlap: float) -> float:
    """Fraction of the model's genes present in the query; an error when below the minimum or
    when a gene name repeats (its counts could not be placed unambiguously)."""
    names = pd.Index(np.asarray(query.var_names).astype(str))
    if names.has_duplicates:
        repeated = names[names.duplicated()].unique()
        shown = ", ".join(repr(n) for n in repeated[:5])
        raise ValueError(
            f"the query has duplicated gene names ({len(repeated):,}, e.g. {shown}): mapping "
            "needs one column per gene. Run `query.var_names_make_unique()` or aggregate the "
            "duplicates first."
        )
    present = pd.Index(var_names).isin(names)
    fraction = float(present.mean())
    if fraction < min_gene_overlap:
        raise ValueError(
            f"the query has only {int(present.sum()):,} of the reference's {len(var_names):,} "
            f"genes ({fraction:.0%}, below min_gene_overlap={min_gene_overlap:.0%}). Check that "
            "both use the same gene identifiers (symbols vs Ensembl IDs); lower "
            "min_gene_overlap only if the missing genes can fairly be treated as zero counts."
        )
    return fraction


def genes_match(query: AnnData, var_names: list[str]) -> bool:
    return list(np.asarray(query.var_names).astype(str)) == list(var_names)


def align_genes(query: AnnData, var_names: list[str], layer: str) -> AnnData:
    """A new AnnData with the model's genes in its order; missing genes are all-zero columns.

    Only the registered counts (in ``layer``, or ``X`` when ``layer`` is ``""``) are carried
    over, with ``obs`` and ``obsm``; ``var[PADDED_COLUMN]`` marks the added genes.
    """
    source = pd.Index(np.asarray(query.var_names).astype(str))
    position = source.get_indexer(pd.Index(var_names))
    found = position >= 0
    counts = sparse.csr_matrix(count_matrix(query, layer), dtype=np.float32)
    # a selection matrix places each found query gene in the reference's column order
    select = sparse.csr_matrix(
        (np.ones(found.sum(), dtype=np.float32), (position[found], np.flatnonzero(found))),
        shape=(query.n_vars, len(var_names)),
    )
    aligned = (counts @ select).tocsr()
    aligned.sort_indices()
    var = pd.DataFrame({PADDED_COLUMN: ~found}, index=pd.Index(var_names))
    out = AnnData(aligned, obs=query.obs.copy(), var=var, obsm=dict(query.obsm))
    if layer:
        out.layers[layer] = aligned.copy()
    return out


def extend_registry(reference: dict, query: AnnData, *, keep_labels: bool) -> dict:
    """The reference's registry with the query's new batches appended (order kept).

    The new batches get library-size priors from the query's cells. Without ``keep_labels``
    the labels column is unregistered (the query's cell types need not be the reference's).
    With it, a reference whose registry names an ``unlabeled_category`` it has no cells of (it
    was trained with every cell labelled) gains that category, so that the query's cells may
    be unlabelled.
    """
    batch_key = str(reference["batch_key"])
    known = str_list(reference["batch_categories"])
    column = obs_column(query, batch_key, role="batch_key").astype(str).to_numpy()
    new = [b for b in pd.unique(column) if b not in known]
    totals = np.asarray(count_matrix(query, str(reference["layer"])).sum(axis=1)).ravel()
    logs = np.log(np.maximum(totals, 1.0))
    means = [float(logs[column == b].mean()) for b in new]
    variances = [float(logs[column == b].var()) for b in new]
    registry = dict(reference)
    registry.update(
        batch_categories=str_array(known + new),
        n_batch=len(known) + len(new),
        library_log_means=np.r_[np.asarray(reference["library_log_means"], float), means],
        library_log_vars=np.r_[np.asarray(reference["library_log_vars"], float), variances],
        n_cells=int(query.n_obs),
        n_zero_count_cells=int((totals == 0).sum()),
    )
    unlabeled = registry.get("unlabeled_category")
    labels = str_list(reference["labels_categories"])
    if not keep_labels:
        registry.update(labels_key="")
    elif unlabeled is not None and str(unlabeled) not in labels:
        # a reference trained with every cell labelled: the query's cells may have no label
        registry.update(labels_categories=str_array([*labels, str(unlabeled)]),
                        n_labels=len(labels) + 1)  # fmt: skip
    return registry


@dataclass
class PreparedQuery:
    """A query made ready for training: what to write to, and the extended model.

    ``target`` is the query itself, or a new object with the reference's features when the
    query's differ; ``masks`` marks the new-batch entries that may train when frozen.
    """

    target: Any
    registry: dict
    data: TensorData
    module: torch.nn.Module
    masks: dict[str, torch.Tensor]
    record: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


def extended_module(model, registry: dict, data, seed: int):
    """The reference's module rebuilt for the extended ``registry`` (its batches, then the
    query's), the reference's weights transplanted and the new batches initialised by the
    family's ``init_query`` hook; and the masks of the entries that may train when frozen."""
    family = model.family
    module = family.build(model.params, registry, len(model.var_names))
    n_old = int(model.registry["n_batch"])
    masks = transplant(model.module, module, n_old)
    if family.init_query is not None:
        with torch.no_grad():
            family.init_query(module, model.params, registry, data, n_old, seed)
    return module, masks


def prepare_rna(model, query: AnnData, overlap: float, *, seed: int) -> PreparedQuery:
    """A reference that reads RNA only, extended to the query's batches."""
    layer = str(model.registry["layer"])
    target = (
        query if genes_match(query, model.var_names) else align_genes(query, model.var_names, layer)
    )
    keep_labels = model.family.reads_labels(model.params)
    registry = extend_registry(model.registry, target, keep_labels=keep_labels)
    data = tensor_data(extract_registered_data(target, registry, var_names=model.var_names))
    module, masks = extended_module(model, registry, data, seed)
    return PreparedQuery(target, registry, data, module, masks, {"gene_overlap": overlap})
