"""Scores of agreement between observed and generated statistics (posterior predictive checks).

Every score is computed from the statistics of :mod:`cellvi.lifecycle.criticism`; the result
of :func:`summarize` is h5ad-safe (numbers, 1-D/2-D float arrays, string arrays).
"""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata

from .criticism import LEVELS


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation over the entries finite in both (NaN if undefined)."""
    ok = np.isfinite(a) & np.isfinite(b)
    a, b = a[ok], b[ok]
    if a.size < 2 or a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation over the entries finite in both."""
    ok = np.isfinite(a) & np.isfinite(b)
    return pearson(rankdata(a[ok]), rankdata(b[ok]))


def agreement(observed: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    """Mean absolute error, Pearson and Spearman correlation of two statistics."""
    ok = np.isfinite(observed) & np.isfinite(predicted)
    mae = float(np.abs(observed[ok] - predicted[ok]).mean()) if ok.any() else float("nan")
    return {
        "mae": mae,
        "pearson": pearson(observed, predicted),
        "spearman": spearman(observed, predicted),
    }


def top_gene_f1(observed: np.ndarray, predicted: np.ndarray, n_top: int) -> float:
    """Overlap of the ``n_top`` genes with the largest fold changes (F1 = precision = recall)."""
    n_top = min(n_top, observed.size)
    top_obs = set(np.argsort(-observed, kind="stable")[:n_top].tolist())
    top_pred = set(np.argsort(-predicted, kind="stable")[:n_top].tolist())
    return len(top_obs & top_pred) / n_top


def de_scores(
    lfc_observed: np.ndarray, lfc_predicted: np.ndarray, sizes: np.ndarray, n_top: int
) -> dict[str, np.ndarray]:
    """Per group: MAE, Pearson, Spearman of the fold changes and F1 of the top genes.

    Groups with fewer than two cells, or holding all cells, have no fold change (NaN).
    """
    n_cells = sizes.sum()
    scores = {name: np.full(len(sizes), np.nan) for name in ("mae", "pearson", "spearman", "f1")}
    for k, size in enumerate(sizes):
        if size < 2 or size == n_cells:
            continue
        for name, value in agreement(lfc_observed[k], lfc_predicted[k]).items():
            scores[name][k] = value
        scores["f1"][k] = top_gene_f1(lfc_observed[k], lfc_predicted[k], n_top)
    return scores


def _nanmean(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else float("nan")


def summarize(
    observed: dict[str, np.ndarray],
    predicted: dict[str, np.ndarray],
    *,
    groups: np.ndarray,
    n_top: int,
) -> dict:
    """All scores and the statistics behind them, as one h5ad-safe dict.

    ``summary`` holds one number per score; ``gene``, ``cell``, ``calibration`` and ``de`` hold
    what the figure draws.
    """
    summary: dict[str, float] = {}
    for stat in ("gene_cv", "cell_cv", "gene_zero_fraction"):
        for name, value in agreement(observed[stat], predicted[stat]).items():
            summary[f"{stat}_{name}"] = value
    coverage = predicted["coverage"]
    summary["calibration_error"] = float(np.abs(coverage - LEVELS).mean())
    # > 0: intervals too wide (predictions too variable); < 0: too narrow (e.g. Poisson on
    # overdispersed counts)
    summary["calibration_bias"] = float((coverage - LEVELS).mean())
    de = de_scores(observed["lfc"], predicted["lfc"], observed["group_sizes"], n_top)
    for name, values in de.items():
        summary[f"lfc_{name}"] = _nanmean(values)
    return {
        "summary": summary,
        "gene": {
            f"{side}_{stat}": values[stat]
            for side, values in (("observed", observed), ("predicted", predicted))
            for stat in ("gene_cv", "gene_zero_fraction")
        },
        "cell": {"observed_cv": observed["cell_cv"], "predicted_cv": predicted["cell_cv"]},
        "calibration": {
            "nominal": LEVELS.astype(np.float64),
            "observed": coverage,
            "pit_histogram": predicted["pit_histogram"],
        },
        "de": {
            "groups": np.asarray(groups, dtype=str),
            "group_sizes": observed["group_sizes"].astype(np.int64),
            "lfc_observed": observed["lfc"],
            "lfc_predicted": predicted["lfc"],
            **{f"group_{name}": values for name, values in de.items()},
        },
    }
