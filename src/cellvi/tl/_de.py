"""``cv.tl.differential_expression``: Bayesian DE between groups of cells from a trained model."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Literal

import numpy as np
import pandas as pd
import torch
from anndata import AnnData
from scipy import sparse

from .._settings import settings
from ..analysis.bayes_de import MODES, de_statistics, expected_fdr
from ..analysis.de_sampling import cells_for_draws, concat_draws, decode_draws, encode_draws
from ..data.loader import TensorData
from ..data.registry import extract_registered_data
from ._common import inference_device, load_model
from ._de_results import rank_genes_groups_layout
from ._model_kind import require_model

logger = logging.getLogger("cellvi")


def _check_args(mode, delta, fdr_target, n_samples, pseudocount) -> None:
    if mode not in MODES:
        raise ValueError(f"mode={mode!r} is not valid; choose one of {list(MODES)}.")
    if not (np.isfinite(delta) and delta >= 0):
        raise ValueError(f"delta must be a non-negative log2 fold change, got {delta!r}.")
    if not 0.0 < fdr_target < 1.0:
        raise ValueError(f"fdr_target must be in (0, 1), got {fdr_target!r}.")
    if int(n_samples) < 2:
        raise ValueError(f"n_samples must be at least 2, got {n_samples!r}.")
    if pseudocount is not None and not (np.isfinite(pseudocount) and pseudocount >= 0):
        raise ValueError(f"pseudocount must be >= 0 or None, got {pseudocount!r}.")


def _groups(
    adata: AnnData, groupby: str, groups: str | Sequence[str], reference: str
) -> tuple[np.ndarray, list[str], list[str]]:
    """Cell codes (-1: no group), categories with cells, and the groups to test."""
    if groupby not in adata.obs:
        raise KeyError(f"groupby={groupby!r} is not a column of adata.obs.")
    column = adata.obs[groupby].astype("category")
    categories = [str(c) for c in column.cat.categories]
    codes = column.cat.codes.to_numpy().astype(np.int64)
    present = [c for i, c in enumerate(categories) if (codes == i).any()]
    if reference != "rest" and reference not in present:
        raise ValueError(
            f"reference={reference!r} is not a non-empty group of {groupby!r}; "
            f"use 'rest' or one of {present}."
        )
    wanted = present if groups == "all" else [str(g) for g in np.atleast_1d(groups)]
    missing = [g for g in wanted if g not in present]
    if missing:
        raise ValueError(f"groups {missing} have no cells in {groupby!r}; groups: {present}.")
    wanted = [g for g in wanted if g != reference]
    if not wanted:
        raise ValueError("no group left to compare with the reference; pass other groups.")
    if reference == "rest" and len(present) < 2:
        raise ValueError(f"{groupby!r} has a single group, so 'rest' is empty.")
    return codes, present, wanted


def differential_expression(
    adata: AnnData,
    *,
    groupby: str,
    groups: str | Sequence[str] = "all",
    reference: str = "rest",
    key: str = "scvi",
    mode: Literal["change", "vanilla"] = "change",
    delta: float = 0.25,
    fdr_target: float = 0.05,
    batch_correction: bool = False,
    n_samples: int = 5000,
    pseudocount: float | None = None,
    seed: int | None = None,
    batch_size: int = 1024,
    key_added: str = "rank_genes_groups_scvi",
    copy: bool = False,
) -> AnnData | None:
    """Bayesian differential expression from the posterior of the model in ``adata.uns[key]``.

    For each group, ``n_samples`` posterior draws of normalised expression (proportions, so
    library size plays no role) are compared pair by pair with as many draws from the
    reference. A group larger than ``n_samples`` cells is subsampled to ``n_samples`` cells
    before the encoder runs; ``rest`` draws come from every other group in proportion to its
    size. See ``docs/analysis.md``.

    Parameters
    ----------
    adata
        Data with a trained model (e.g. freshly read from an ``.h5ad``).
    groupby
        ``adata.obs`` column defining the groups.
    groups
        Groups to test (``"all"``: every group with cells, except the reference).
    reference
        ``"rest"`` (all cells not in the group) or one group.
    key
        Key of the model in ``.uns``.
    mode
        ``"change"``: posterior probability that ``|LFC| > delta``; ``"vanilla"``: of the
        more likely ordering of the two means.
    delta
        Smallest log2 fold change that counts as an effect (``"change"``).
    fdr_target
        Target of the posterior expected false discovery rate for ``is_de_fdr``.
    batch_correction
        Decode every draw in every batch of the model and average (batch effects removed
        from both groups); ``False`` decodes each cell in its own batch.
    n_samples
        Posterior draws per group (and for its reference).
    pseudocount
        Added to normalised expression before the log fold change (shrinks the LFC of genes
        expressed far below it). ``None``: a tenth of one count in a cell of median size.
    seed
        Seed of cell subsampling, draws and pairing (``None``: ``cv.settings.seed``).
    batch_size
        Cells per encoder pass.
    key_added
        Key of the results in ``adata.uns``.
    copy
        Return a copy instead of writing to ``adata``.

    Returns
    -------
    ``None`` or a copy; sets ``adata.uns[key_added]`` in scanpy's ``rank_genes_groups``
    layout (``sc.get.rank_genes_groups_df``, ``sc.pl.rank_genes_groups*`` read it): record
    arrays with one column per group, genes in decreasing ``scores`` order:

    ``names``
        Gene names.
    ``scores``
        Posterior probability of up-regulation in the group minus that of down-regulation,
        ``P(LFC > delta) - P(LFC < -delta)`` (``delta = 0`` in vanilla mode), in [-1, 1];
        ties are ranked by the fold change.
    ``logfoldchanges``
        Posterior mean log2 fold change.
    ``pvals``
        Not a p-value: the posterior probability of no differential expression.
    ``pvals_adj``
        Not an adjusted p-value: the posterior expected FDR when calling this gene and all
        genes more probably DE; ``pvals_adj <= fdr_target`` is ``is_de_fdr``.
    ``proba_de``, ``proba_not_de``, ``bayes_factor``, ``lfc_median``, ``lfc_std``, ``lfc_min``, ``lfc_max``, ``scale1``, ``scale2``, ``raw_mean1``, ``raw_mean2``, ``is_de_fdr``
        The full statistics (see :func:`cellvi.tl.differential_expression_df`).
    ``pts``, ``pts_rest``
        DataFrames (genes x groups): fraction of cells with a non-zero count.
    ``params``
        ``groupby``, ``reference``, ``method``, ``use_raw`` (scanpy's) and every argument.
    """
    start = time.perf_counter()
    _check_args(mode, delta, fdr_target, n_samples, pseudocount)
    model = load_model(adata, key)
    require_model(model, ("scvi",), "differential_expression")
    codes, present, tested = _groups(adata, groupby, groups, reference)
    registered = extract_registered_data(adata, model.registry, var_names=model.var_names)
    data = TensorData.from_registered(registered)
    seed = settings.seed if seed is None else int(seed)
    if pseudocount is None:
        totals = np.asarray(registered.X.sum(axis=1)).ravel()
        pseudocount = 0.1 / max(float(np.median(totals)), 1.0)
    batch_codes = list(range(int(model.registry["n_batch"]))) if batch_correction else None
    tables = _compare(
        model.module,
        data,
        codes,
        present,
        tested,
        reference,
        int(n_samples),
        seed,
        batch_codes,
        batch_size,
        mode=mode,
        delta=float(delta),
        pseudocount=float(pseudocount),
    )
    pts, pts_rest = (
        pd.DataFrame(frac, index=pd.Index(model.var_names))
        for frac in _raw_summaries(registered.X, codes, present, tested, reference, tables)
    )
    for table in tables.values():
        table["expected_fdr"] = expected_fdr(table["proba_de"].to_numpy())
        table["is_de_fdr"] = table["expected_fdr"] <= fdr_target
        table["names"] = list(model.var_names)
    params = {
        "groupby": groupby,
        "reference": reference,
        "method": f"cellvi_{mode}",
        "use_raw": False,
        "key": key,
        "mode": mode,
        "delta": float(delta),
        "fdr_target": float(fdr_target),
        "batch_correction": bool(batch_correction),
        "n_samples": int(n_samples),
        "pseudocount": float(pseudocount),
        "seed": seed,
        "groups": tested,
    }
    adata = adata.copy() if copy else adata
    adata.uns[key_added] = rank_genes_groups_layout(tables, params, pts, pts_rest)
    logger.info(
        f"    finished in {time.perf_counter() - start:.1f}s: {len(tested)} group(s), "
        f"added {key_added!r} (adata.uns)"
    )
    return adata if copy else None


@torch.inference_mode()
def _compare(
    module,
    data,
    codes,
    present,
    tested,
    reference,
    n_samples,
    seed,
    batch_codes,
    batch_size,
    **stats_kwargs,
) -> dict[str, pd.DataFrame]:
    """Statistics of each tested group against its reference."""
    device = inference_device(module)
    module.to(device).eval()
    rng = np.random.default_rng(seed)
    categories = [c for c in present if reference == "rest" or c in (*tested, reference)]
    sizes = {c: int((codes == present.index(c)).sum()) for c in categories}
    tables = {}
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        draws = {
            c: encode_draws(
                module,
                data,
                cells_for_draws(np.flatnonzero(codes == present.index(c)), n_samples, rng),
                device,
                batch_size,
            )
            for c in categories
        }
        for group in tested:
            others = [c for c in categories if c != group] if reference == "rest" else [reference]
            pool = concat_draws([draws[c] for c in others])
            weights = np.array([sizes[c] for c in others], dtype=np.float64)
            picked = rng.choice(len(others), size=n_samples, p=weights / weights.sum())
            offsets = np.cumsum([0] + [draws[c].n for c in others])[:-1]
            within = rng.integers(0, n_samples, size=n_samples)  # every group has n_samples draws
            index2 = torch.as_tensor(offsets[picked] + within, device=device)
            index1 = torch.as_tensor(rng.permutation(n_samples), device=device)
            log1 = decode_draws(module, draws[group], index1, batch_codes)
            log2 = decode_draws(module, pool, index2, batch_codes)
            tables[group] = pd.DataFrame(de_statistics(log1, log2, **stats_kwargs))
    return tables


def _raw_summaries(X, codes, present, tested, reference, tables):
    """Mean counts and fraction of non-zero cells in each group and its reference."""
    X = sparse.csr_matrix(X) if sparse.issparse(X) else X
    pts, pts_rest = {}, {}
    grouped = codes >= 0
    for group in tested:
        in_group = codes == present.index(group)
        in_ref = grouped & ~in_group if reference == "rest" else codes == present.index(reference)
        for mask, mean_col, frac in ((in_group, "raw_mean1", pts), (in_ref, "raw_mean2", pts_rest)):
            sub = X[mask]
            tables[group][mean_col] = np.asarray(sub.mean(axis=0)).ravel()
            frac[group] = np.asarray((sub > 0).sum(axis=0)).ravel() / max(int(mask.sum()), 1)
    return pts, pts_rest
