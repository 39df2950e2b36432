"""``cv.tl.criticism``: posterior predictive checks of trained models, metrics only."""

from __future__ import annotations

import dataclasses
import logging
import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from anndata import AnnData

from ..data._fields import obs_column
from ..data.loader import TensorData
from .criticism import PredictiveStatistics, observed_statistics
from .criticism_scores import summarize
from .minified import require_counts
from .modalities import is_multimodal, registered_counts, rna_counts_view
from .runtime import (
    LoadedModel,
    compute_latent,
    inference_device,
    load_model,
    minibatches,
)
from .sampling import cells_per_pass, check_n_samples, draw_modalities, seeded

logger = logging.getLogger("cellvi")


def model_keys(key: str | Sequence[str]) -> list[str]:
    """``key`` as a list of distinct model keys."""
    keys = [key] if isinstance(key, str) else list(key)
    if not keys or not all(isinstance(k, str) for k in keys):
        raise TypeError(f"key must be a model key (str) or a list of them, got {key!r}.")
    if len(set(keys)) != len(keys):
        raise ValueError(f"key lists a model twice: {keys}.")
    return keys


def _with_layer(model: LoadedModel, layer: str | None) -> LoadedModel:
    """The model reading its counts from ``layer`` instead of its registered layer."""
    if layer is None:
        return model
    return dataclasses.replace(model, registry={**model.registry, "layer": layer})


def _leiden_groups(adata: AnnData, model: LoadedModel, data: TensorData, seed: int):
    """Leiden clusters of the model's latent (``obsm["X_" + key]`` when present).

    The 15-nearest-neighbour graph is built with scikit-learn directly: scanpy's neighbours
    would compile UMAP's numba code first, which takes longer than the whole check.
    """
    import scanpy as sc
    from sklearn.neighbors import NearestNeighbors

    latent = adata.obsm.get(f"X_{model.key}")
    if latent is None or latent.shape != (adata.n_obs, model.module.n_latent):
        latent = compute_latent(model.module, data)
    n_neighbors = min(15, adata.n_obs - 1)
    knn = NearestNeighbors(n_neighbors=n_neighbors).fit(np.asarray(latent))
    graph = knn.kneighbors_graph(mode="connectivity")
    graph = graph.maximum(graph.T)
    tmp = AnnData(np.zeros((adata.n_obs, 0), dtype=np.float32))
    sc.tl.leiden(
        tmp, adjacency=graph, flavor="igraph", n_iterations=2, directed=False, random_state=seed
    )
    return tmp.obs["leiden"].array


def _group_column(obs_source: AnnData, groupby: str):
    column = obs_column(obs_source, groupby, role="groupby")
    if column.isna().any():
        raise ValueError(
            f"groupby {groupby!r} is missing (NaN) in {int(column.isna().sum()):,} cells; fill "
            f"them, e.g. `adata.obs[{groupby!r}] = adata.obs[{groupby!r}].astype(str)`."
        )
    return column.array


def _groups(adata, groupby, model, data, seed) -> tuple[np.ndarray, np.ndarray, str]:
    """Group code of each cell, the group names, and what the groups are."""
    if groupby is None and model.registry.get("labels_key"):
        groupby = str(model.registry["labels_key"])
    if groupby is None:
        values, source = _leiden_groups(adata, model, data, seed), f"leiden of X_{model.key}"
    else:
        # a MuData's own .obs columns, then its RNA modality's
        values, source = _group_column(rna_counts_view(adata, model), groupby), groupby
    # a categorical keeps its category order (Leiden's are "0", "1", ..., "10")
    groups = pd.Categorical(values).remove_unused_categories()
    return groups.codes.astype(np.int64), np.asarray(groups.categories.astype(str)), source


def _observed_and_tensors(adata, model: LoadedModel) -> tuple[dict, TensorData]:
    """Observed counts per modality (``"rna"``, and ``"protein"`` for a model of protein
    counts) and the tensors the model reads."""
    rna, protein, tensors = registered_counts(adata, model)
    if protein is None:
        return {"rna": rna.X}, tensors
    if not model.module.protein_batch_mask.bool().all():
        warnings.warn(
            f"Some proteins of model {model.key!r} were not measured in some batches; the "
            "protein checks compare their stored counts with the model's imputed draws.",
            UserWarning,
            stacklevel=3,
        )
    return {"rna": rna.X, "protein": protein}, tensors


@torch.inference_mode()
def _predictive(model, data: TensorData, codes, n_groups, n_samples, seed, batch_size) -> dict:
    """Statistics of each modality's draws, ``{"rna": ..., "protein": ...}``."""
    sizes = {"rna": data.n_vars}
    if is_multimodal(model):
        sizes["protein"] = data.n_proteins
    stats = {
        name: PredictiveStatistics(data.n_cells, size, n_samples, codes, n_groups)
        for name, size in sizes.items()
    }
    device = inference_device(model.module)
    module = model.module.to(device).eval()
    cells = cells_per_pass(n_samples, sum(sizes.values()), batch_size)
    start = 0
    with seeded(seed, device):
        for mb in minibatches(data, device, cells):
            rows = torch.arange(start, start + mb["batch"].shape[0])
            draws = draw_modalities(module, mb, n_samples)
            observed = {"rna": mb["x"], "protein": mb.get("y")}
            for name, stat in stats.items():
                stat.update(observed[name], draws[name], rows)
            start += len(rows)
    return {name: stat.finish() for name, stat in stats.items()}


def _model_result(model, observed: dict, tensors, codes, names, args: dict) -> dict:
    """``uns[key + "_criticism"]`` of one model: flat for an RNA model, one entry per
    modality for an RNA + protein model."""
    predicted = _predictive(model, tensors, codes, len(names), args["n_samples"],
                            args["seed"], args["batch_size"])  # fmt: skip
    per_modality = {
        name: summarize(
            observed_statistics(observed[name], codes, len(names)),
            predicted[name],
            groups=names,
            n_top=args["n_top_genes"],
        )
        for name in predicted
    }
    params = {
        "key": model.key,
        "n_samples": args["n_samples"],
        "groupby": args["groupby"],
        "layer": str(model.registry["layer"]),
        "n_top_genes": args["n_top_genes"],
        "seed": args["seed"],
        "gene_likelihood": str(model.params.get("gene_likelihood", "zinb")),
    }
    if not is_multimodal(model):
        return {**per_modality["rna"], "params": params}
    params |= {"modalities": np.asarray(list(per_modality), dtype=str),
               "protein_likelihood": "nb_mixture"}  # fmt: skip
    return {**per_modality, "params": params}


def criticism(
    adata: AnnData,
    *,
    key: str | Sequence[str] = "scvi",
    n_samples: int = 10,
    groupby: str | None = None,
    layer: str | None = None,
    n_top_genes: int = 10,
    seed: int = 0,
    batch_size: int = 1024,
    copy: bool = False,
) -> AnnData | None:
    """Posterior predictive checks: compare counts generated by each model with the observed.

    Each model draws ``n_samples`` counts per cell from its posterior predictive distribution (its
    own likelihood), in minibatches, and its metrics come from its own draws only. A model that
    generates protein counts is checked twice, on its RNA draws against the RNA counts and on its
    protein draws (background/foreground negative binomial mixture, drawn from the same latent)
    against the protein counts. See ``docs/criticism.md`` for what each metric means.

    Parameters
    ----------
    adata
        Data with the trained model(s) and the counts they were trained on (for an RNA +
        protein model a MuData or an AnnData with protein counts in ``.obsm``).
    key
        Key of a model in ``.uns``, or a list of keys to check several models.
    n_samples
        Posterior predictive draws per cell.
    groupby
        ``adata.obs`` column defining the groups of the fold-change check (default: the
        model's registered labels, else Leiden clusters of the first model's latent). For a
        MuData, a column of ``mdata.obs`` or else of the RNA modality's ``.obs``.
    layer
        Layer with the counts, both encoded by the models and compared with their draws (default:
        each model's registered layer); for an RNA + protein model, a layer of the RNA (the
        proteins are always read where they were registered).
    n_top_genes
        Number of top marker genes per group compared by the F1 score.
    seed
        Seed of the draws (and of Leiden).
    batch_size
        Cells per forward pass (fewer when ``n_samples`` draws would not fit).
    copy
        Return a copy instead of writing to ``adata``.

    Returns
    -------
    ``None`` or a copy. Sets, for each model key ``k``, ``adata.uns[k + "_criticism"]``:

    ``summary``
        One number per score: ``{gene_cv,cell_cv,gene_zero_fraction}_{mae,pearson,spearman}``,
        ``calibration_error`` (mean absolute gap between observed and nominal coverage),
        ``calibration_bias`` (mean signed gap: > 0 intervals too wide, < 0 too narrow) and
        ``lfc_{mae,pearson,spearman,f1}``.
    ``gene``
        Per gene, ``observed_gene_cv``, ``predicted_gene_cv``, ``observed_gene_zero_fraction``,
        ``predicted_gene_zero_fraction``.
    ``cell``
        Per cell, ``observed_cv`` and ``predicted_cv``.
    ``calibration``
        ``nominal`` levels, ``observed`` coverage, ``pit_histogram`` (density of the
        randomised PIT in 20 bins; flat when calibrated).
    ``de``
        ``groups``, ``group_sizes``, ``lfc_observed`` and ``lfc_predicted`` (groups x genes),
        and per group ``group_mae``, ``group_pearson``, ``group_spearman``, ``group_f1``.
    ``params``
        The arguments, with ``groupby`` naming the groups used.

    For an RNA + protein model, ``adata.uns[k + "_criticism"]`` (``mdata.uns`` for a MuData) holds
    instead ``rna`` and ``protein``, each a dict with the ``summary``, ``gene``, ``cell``,
    ``calibration`` and ``de`` fields above (for ``protein`` the per-"gene" entries are per
    protein and the fold changes are of protein counts normalised per cell), and ``params``
    with also ``modalities`` (``["rna", "protein"]``) and ``protein_likelihood``
    (``"nb_mixture"``).
    """
    keys = model_keys(key)
    n_samples = check_n_samples(n_samples)
    if int(n_top_genes) < 1:
        raise ValueError(f"n_top_genes must be a positive integer, got {n_top_genes!r}.")
    for k in keys:
        require_counts(adata, k, "cv.tl.criticism")
    models = [_with_layer(load_model(adata, k), layer) for k in keys]
    # every model's data is checked before anything is computed or written
    inputs = [_observed_and_tensors(adata, m) for m in models]
    codes, names, source = _groups(adata, groupby, models[0], inputs[0][1], seed)
    args = {"n_samples": n_samples, "groupby": source, "n_top_genes": int(n_top_genes),
            "seed": int(seed), "batch_size": batch_size}  # fmt: skip
    results = {
        f"{model.key}_criticism": _model_result(model, *data, codes, names, args)
        for model, data in zip(models, inputs, strict=True)
    }
    adata = adata.copy() if copy else adata
    adata.uns.update(results)
    logger.info(f"    added {', '.join(map(repr, results))} (adata.uns)")
    return adata if copy else None
