"""``cv.tl.differential_expression``: Bayesian DE between groups of cells from a trained model."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
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
from ..families import Capability
from ..lifecycle.minified import stored_posterior
from ..lifecycle.modalities import registered_counts
from ..lifecycle.runtime import inference_device, load_model
from ._de_inputs import DEInputs, protein_inputs
from ._de_results import rank_genes_groups_layout

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


@dataclass
class Grouping:
    """The cells of each group of ``adata.obs[groupby]`` and what is compared with what."""

    codes: np.ndarray  # category code of each cell, -1 for none
    categories: list[str]  # all categories, in code order
    tested: list[str]
    reference: str

    def mask(self, group: str) -> np.ndarray:
        return self.codes == self.categories.index(group)

    def reference_mask(self, group: str) -> np.ndarray:
        if self.reference == "rest":
            return (self.codes >= 0) & ~self.mask(group)
        return self.mask(self.reference)

    def references(self, group: str) -> list[str]:
        """The groups whose cells make up ``group``'s reference."""
        if self.reference != "rest":
            return [self.reference]
        return [c for c in self.categories if c != group and self.mask(c).any()]


def _grouping(
    obs: pd.DataFrame, groupby: str, groups: str | Sequence[str], reference: str
) -> Grouping:
    if groupby not in obs:
        raise KeyError(f"groupby={groupby!r} is not a column of adata.obs.")
    column = obs[groupby].astype("category")
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
    return Grouping(codes, categories, wanted, reference)


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
    key_added: str | None = None,
    copy: bool = False,
) -> AnnData | None:
    """Bayesian differential expression from the posterior of the model in ``adata.uns[key]``.

    For each group, ``n_samples`` posterior draws of normalised expression (proportions, so
    library size plays no role) are compared pair by pair with as many draws from the
    reference. A group larger than ``n_samples`` cells is subsampled to ``n_samples`` cells
    before the encoder runs; ``rest`` draws come from every other group in proportion to its
    size. See ``docs/analysis.md``.

    For an RNA + protein model (``adata`` a MuData, or an AnnData with proteins in ``.obsm``) the
    genes (normalised expression) are followed by the proteins (denoised foreground
    expression, background removed), named ``"protein:<name>"``, in the same tables; the
    expected FDR is computed over the genes and over the proteins separately, and proteins
    use a pseudocount of 0.1 counts. See the RNA + protein guide in ``docs/``.

    Parameters
    ----------
    adata
        Data with a trained model (e.g. freshly read from an ``.h5ad``).
    groupby
        ``adata.obs`` column defining the groups (for a MuData: of ``mdata.obs``, else of the
        RNA modality's ``.obs``).
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
        Gene names (with proteins: then ``"protein:<name>"``).
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
        ``groupby``, ``reference``, ``method``, ``use_raw`` (scanpy's) and every argument;
        a model with proteins adds ``n_proteins``, ``protein_prefix`` and ``protein_pseudocount``.
    """
    start = time.perf_counter()
    _check_args(mode, delta, fdr_target, n_samples, pseudocount)
    model = load_model(adata, key)
    family = model.require(Capability.DE, "cv.tl.differential_expression")
    key_added = f"rank_genes_groups_{key}" if key_added is None else key_added
    inputs = protein_inputs(adata, model, groupby) if family.has_proteins else None
    grouping = _grouping(adata.obs if inputs is None else inputs.obs, groupby, groups, reference)
    if inputs is None:
        registered, _, tensors = registered_counts(adata, model)
        inputs = DEInputs(tensors, registered.X, registered.X, list(model.var_names), adata.obs)
    seed = settings.seed if seed is None else int(seed)
    if pseudocount is None:
        pseudocount = 0.1 / max(float(np.median(_rna_totals(adata, key, inputs))), 1.0)
    draws = DrawSettings(
        n_samples=int(n_samples),
        seed=seed,
        batch_codes=list(range(int(model.registry["n_batch"]))) if batch_correction else None,
        batch_size=batch_size,
    )
    stats = {"mode": mode, "delta": float(delta), "pseudocount": float(pseudocount)}
    families = inputs.families(float(pseudocount))
    tables = _compare(model.module, inputs.data, grouping, draws, stats, families)
    pts, pts_rest = (
        pd.DataFrame(frac, index=pd.Index(inputs.names))
        for frac in _raw_summaries(inputs.counts, grouping, tables)
    )
    for table in tables.values():
        # the expected FDR is per family of features (all genes; all proteins, if any)
        fdr = np.empty(len(table))
        for columns, _ in families:
            fdr[columns] = expected_fdr(table["proba_de"].to_numpy()[columns])
        table["expected_fdr"] = fdr
        table["is_de_fdr"] = table["expected_fdr"] <= fdr_target
        table["names"] = inputs.names
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
        "groups": grouping.tested,
        **inputs.params(),
    }
    adata = adata.copy() if copy else adata
    adata.uns[key_added] = rank_genes_groups_layout(tables, params, pts, pts_rest)
    logger.info(
        f"    finished in {time.perf_counter() - start:.1f}s: {len(grouping.tested)} group(s), "
        f"added {key_added!r} (adata.uns)"
    )
    return adata if copy else None


def _rna_totals(adata, key: str, inputs: DEInputs) -> np.ndarray:
    """RNA counts per cell; on minified data (no counts) the stored observed library sizes."""
    stored = stored_posterior(adata, key)
    if stored is not None:
        return np.exp(stored["log_library_m"].astype(np.float64))
    return np.asarray(inputs.rna_counts.sum(axis=1)).ravel()


@dataclass
class DrawSettings:
    n_samples: int
    seed: int
    batch_codes: list[int] | None
    batch_size: int


@torch.inference_mode()
def _compare(
    module, data: TensorData, grouping: Grouping, draws: DrawSettings, stats: dict, families
) -> dict[str, pd.DataFrame]:
    """Statistics of each tested group against its reference."""
    device = inference_device(module)
    module.to(device).eval()
    rng = np.random.default_rng(draws.seed)
    n = draws.n_samples
    needed = dict.fromkeys(c for g in grouping.tested for c in (g, *grouping.references(g)))
    tables = {}
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(draws.seed)
        encoded = {
            c: encode_draws(
                module,
                data,
                cells_for_draws(np.flatnonzero(grouping.mask(c)), n, rng),
                device,
                draws.batch_size,
            )
            for c in needed
        }
        for group in grouping.tested:
            # reference draws: from each reference group in proportion to its cells
            others = grouping.references(group)
            sizes = np.array([grouping.mask(c).sum() for c in others], dtype=np.float64)
            picked = rng.choice(len(others), size=n, p=sizes / sizes.sum())
            index2 = picked * n + rng.integers(0, n, size=n)  # every group holds n draws
            pool = concat_draws([encoded[c] for c in others])
            log1 = decode_draws(
                module, encoded[group], torch.as_tensor(rng.permutation(n), device=device),
                draws.batch_codes,
            )  # fmt: skip
            log2 = decode_draws(
                module, pool, torch.as_tensor(index2, device=device), draws.batch_codes
            )
            tables[group] = pd.concat(
                [
                    pd.DataFrame(
                        de_statistics(log1[:, cols], log2[:, cols], **{**stats, "pseudocount": pc})
                    )
                    for cols, pc in families
                ],
                ignore_index=True,
            )
    return tables


def _raw_summaries(X, grouping: Grouping, tables: dict[str, pd.DataFrame]):
    """Mean counts and fraction of non-zero cells in each group and its reference."""
    X = sparse.csr_matrix(X) if sparse.issparse(X) else X
    pts, pts_rest = {}, {}
    for group in grouping.tested:
        sides = (
            (grouping.mask(group), "raw_mean1", pts),
            (grouping.reference_mask(group), "raw_mean2", pts_rest),
        )
        for mask, mean_col, frac in sides:
            sub = X[mask]
            tables[group][mean_col] = np.asarray(sub.mean(axis=0)).ravel()
            frac[group] = np.asarray((sub > 0).sum(axis=0)).ravel() / max(int(mask.sum()), 1)
    return pts, pts_rest
