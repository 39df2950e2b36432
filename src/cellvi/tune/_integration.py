"""An scIB-style integration score of a latent space: batch mixing and label conservation.

Computed on the latent of a cell subsample, with a k-nearest-neighbour graph (Euclidean, the
cell itself excluded) and silhouette widths, from one matrix of pairwise distances (memory
grows with the square of the subsample size: 32 MB for 2,000 cells):

* label conservation (bio) = mean of
  ``asw_label`` = (silhouette width of the labels + 1) / 2, and
  ``knn_label_purity`` = mean fraction of a cell's neighbours that share its label;
* batch mixing = mean of
  ``asw_batch`` = within each label, mean over its cells of 1 - |silhouette width of the
  batches|, averaged over the labels found in at least two batches (scIB's batch ASW), and
  ``knn_batch_entropy`` = entropy of the batches among a cell's neighbours divided by the
  entropy of the batch frequencies of the subsample (capped at 1), averaged over cells;
* ``integration`` = 0.6 * bio + 0.4 * batch mixing (scIB's weighting). All terms lie in [0, 1];
  higher is better.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import pairwise_distances, silhouette_samples, silhouette_score

BIO_WEIGHT = 0.6
DEFAULT_NEIGHBORS = 15


def subsample(n_cells: int, n_max: int, seed: int) -> np.ndarray:
    """Sorted indices of at most ``n_max`` cells drawn without replacement."""
    if n_cells <= n_max:
        return np.arange(n_cells)
    return np.sort(np.random.default_rng(seed).choice(n_cells, size=n_max, replace=False))


def _entropy(frequencies: np.ndarray) -> np.ndarray:
    p = np.where(frequencies > 0, frequencies, 1.0)
    return -(frequencies * np.log(p)).sum(-1)


def _batch_asw(distances: np.ndarray, batch: np.ndarray, labels: np.ndarray) -> float:
    scores = []
    for label in np.unique(labels):
        cells = np.flatnonzero(labels == label)
        n_batches = len(np.unique(batch[cells]))
        if n_batches < 2 or n_batches >= len(cells):
            continue  # silhouettes need 2 <= groups < cells
        within = distances[np.ix_(cells, cells)]
        widths = silhouette_samples(within, batch[cells], metric="precomputed")
        scores.append(np.mean(1.0 - np.abs(widths)))
    return float(np.mean(scores)) if scores else float("nan")


def integration_score(
    latent: np.ndarray,
    batch: np.ndarray,
    labels: np.ndarray,
    *,
    n_neighbors: int = DEFAULT_NEIGHBORS,
) -> dict[str, float]:
    """The score and its terms for the cells of ``latent`` (see the module docstring)."""
    latent = np.asarray(latent, dtype=np.float64)
    if not np.isfinite(latent).all():
        raise FloatingPointError("the latent space holds NaN/inf values")
    # one distance matrix serves the neighbours and every silhouette (n_cells^2 floats)
    distances = pairwise_distances(latent)
    k = min(n_neighbors, len(latent) - 1)
    np.fill_diagonal(distances, np.inf)
    neighbors = np.argpartition(distances, k - 1, axis=1)[:, :k]
    np.fill_diagonal(distances, 0.0)
    purity = float(np.mean(labels[neighbors] == labels[:, None]))
    n_batch = int(batch.max()) + 1
    local = np.stack([np.bincount(row, minlength=n_batch) for row in batch[neighbors]]) / k
    overall = _entropy(np.bincount(batch, minlength=n_batch) / len(batch))
    mixing = float(np.mean(np.minimum(_entropy(local) / overall, 1.0))) if overall > 0 else 0.0
    asw_label = (float(silhouette_score(distances, labels, metric="precomputed")) + 1.0) / 2.0
    asw_batch = _batch_asw(distances, batch, labels)
    bio = (asw_label + purity) / 2.0
    batch_terms = [mixing] if np.isnan(asw_batch) else [asw_batch, mixing]
    batch_mixing = float(np.mean(batch_terms))
    return {
        "integration": BIO_WEIGHT * bio + (1.0 - BIO_WEIGHT) * batch_mixing,
        "bio_conservation": bio,
        "batch_mixing": batch_mixing,
        "asw_label": asw_label,
        "knn_label_purity": purity,
        "asw_batch": asw_batch,
        "knn_batch_entropy": mixing,
    }
