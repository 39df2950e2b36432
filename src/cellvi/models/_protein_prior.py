"""Initialising totalVI's protein background prior from the data (empirical prior).

For each protein and batch, a two-component Gaussian mixture is fitted to ``log1p`` of the
counts; the lower component is the background. Its mean and standard deviation initialise the
(learned) prior of the log background mean.

The standard deviation starts at most at :data:`MAX_INITIAL_STD`. The fit measures the spread of
``log1p`` counts, which is the spread of the cells' background *means* plus the counts' own
sampling noise; the prior describes the first only. A prior as wide as the log counts lets the
background absorb foreground signal and widens the protein predictive intervals (measured in
``benchmarks/bench_protein_calibration.py``). The prior is learned, so it can widen again where
the data ask for it.
"""

from __future__ import annotations

import numpy as np

#: More proteins than this switch the empirical prior on by default.
EMPIRICAL_PRIOR_MIN_PROTEINS = 10
_MIN_STD = 0.05
#: Largest starting standard deviation of the empirical background prior (log scale).
MAX_INITIAL_STD = 0.3
_EM_STEPS = 50


def _two_gaussians(values: np.ndarray) -> tuple[float, float]:
    """Mean and standard deviation of the lower component of a 2-Gaussian EM fit."""
    lo, hi = np.quantile(values, [0.25, 0.75])
    means = np.array([lo, hi if hi > lo else lo + 1.0])
    stds = np.full(2, max(values.std(), _MIN_STD))
    weights = np.full(2, 0.5)
    for _ in range(_EM_STEPS):
        log_p = np.log(weights) - np.log(stds) - 0.5 * ((values[:, None] - means) / stds) ** 2
        log_p -= log_p.max(1, keepdims=True)
        resp = np.exp(log_p)
        resp /= resp.sum(1, keepdims=True)
        mass = resp.sum(0) + 1e-12
        weights = mass / mass.sum()
        means = (resp * values[:, None]).sum(0) / mass
        stds = np.sqrt((resp * (values[:, None] - means) ** 2).sum(0) / mass)
        stds = np.maximum(stds, _MIN_STD)
    low = int(np.argmin(means))
    return float(means[low]), float(stds[low])


def empirical_background_prior(
    counts: np.ndarray,
    batch: np.ndarray,
    mask: np.ndarray,
    *,
    default_mean: float,
    default_std: float,
    max_cells: int = 5000,
    max_std: float | None = None,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Prior mean and std of the log background, ``(n_batch, n_proteins)`` each.

    Pairs not measured (``mask`` 0) or with fewer than 10 cells keep the defaults. At most
    ``max_cells`` cells per batch (a seeded subsample) enter each fit. Fitted standard
    deviations are capped at ``max_std`` (default :data:`MAX_INITIAL_STD`).
    """
    cap = MAX_INITIAL_STD if max_std is None else float(max_std)
    n_batch, n_proteins = mask.shape
    means = np.full((n_batch, n_proteins), default_mean)
    stds = np.full((n_batch, n_proteins), default_std)
    rng = np.random.default_rng(seed)
    for b in range(n_batch):
        cells = np.flatnonzero(batch == b)
        if len(cells) < 10:
            continue
        if len(cells) > max_cells:
            cells = rng.choice(cells, max_cells, replace=False)
        logs = np.log1p(counts[cells])
        for p in np.flatnonzero(mask[b]):
            mean, std = _two_gaussians(logs[:, p])
            means[b, p], stds[b, p] = mean, min(std, cap)
    return means, stds
