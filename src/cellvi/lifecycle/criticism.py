"""Posterior predictive checks: statistics of observed and generated counts, and how they agree.

No plotting here (``cv.pl.criticism`` draws what this module computes). The generated counts
are never held in full: :class:`PredictiveStatistics` takes them minibatch by minibatch and keeps
only running sums, so memory is bounded by one minibatch of draws whatever the data size.

Checks (see ``docs/criticism.md``):

- coefficient of variation (sd / mean) of each gene across cells and of each cell across genes;
- fraction of zeros of each gene;
- calibration: for nominal levels ``a``, the fraction of observed counts inside the central
  ``a`` predictive interval. Each observed count is ranked among the draws of its entry with
  ties broken at random (a randomised probability integral transform), which is uniform when the
  observed count is exchangeable with the draws, so a calibrated model covers exactly ``a``
  even for discrete counts and few draws;
- differential-expression consistency: per group, log2 fold changes of normalised expression
  (group vs rest) from the observed and from the generated counts.
"""

from __future__ import annotations

import warnings

import numpy as np
import scipy.sparse as sp
import torch

#: Nominal coverage levels of the central predictive intervals.
LEVELS = np.round(np.arange(0.05, 1.0, 0.05), 2)
#: Counts per cell of the normalised expression the fold changes are computed on.
NORMALIZED_TOTAL = 1e4
#: Pseudocount (in normalised counts) of the fold changes.
PSEUDOCOUNT = 1.0
PIT_BINS = 20


def _safe_divide(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    out = np.full(np.broadcast(num, den).shape, np.nan)
    np.divide(num, den, out=out, where=den > 0)
    return out


def _cv(total: np.ndarray, total_sq: np.ndarray, n: int) -> np.ndarray:
    """Coefficient of variation from sums and sums of squares over ``n`` values."""
    mean = total / n
    var = np.maximum(total_sq / n - mean**2, 0.0)
    return _safe_divide(np.sqrt(var), mean)


def _normalized(x: np.ndarray | sp.spmatrix) -> np.ndarray | sp.spmatrix:
    totals = np.asarray(x.sum(1)).ravel()
    scale = NORMALIZED_TOTAL / np.maximum(totals, 1.0)
    return sp.diags(scale) @ x if sp.issparse(x) else x * scale[:, None]


def group_means(x, groups: np.ndarray, n_groups: int) -> np.ndarray:
    """``(n_groups, n_genes)`` sums of the rows of ``x`` per group (float64)."""
    onehot = sp.csr_matrix(
        (np.ones(len(groups)), (groups, np.arange(len(groups)))), shape=(n_groups, len(groups))
    )
    return np.asarray((onehot @ x).todense() if sp.issparse(x) else onehot @ x, dtype=np.float64)


def log_fold_changes(group_sums: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """log2 of (mean in group + pseudocount) / (mean in the other cells + pseudocount)."""
    n = sizes.sum()
    inside = group_sums / np.maximum(sizes, 1)[:, None]
    rest = (group_sums.sum(0, keepdims=True) - group_sums) / np.maximum(n - sizes, 1)[:, None]
    return np.log2(inside + PSEUDOCOUNT) - np.log2(rest + PSEUDOCOUNT)


def observed_statistics(x, groups: np.ndarray, n_groups: int) -> dict[str, np.ndarray]:
    """The statistics of the observed counts ``x`` (CSR or dense, cells x genes)."""
    x = x.astype(np.float64)
    n_cells, n_genes = x.shape
    sq = x.multiply(x) if sp.issparse(x) else x * x
    col = lambda m: np.asarray(m.sum(0)).ravel()  # noqa: E731
    row = lambda m: np.asarray(m.sum(1)).ravel()  # noqa: E731
    nonzero = col(x != 0) if sp.issparse(x) else (x != 0).sum(0)
    sizes = np.bincount(groups, minlength=n_groups)
    return {
        "gene_cv": _cv(col(x), col(sq), n_cells),
        "cell_cv": _cv(row(x), row(sq), n_genes),
        "gene_zero_fraction": 1.0 - nonzero / n_cells,
        "lfc": log_fold_changes(group_means(_normalized(x), groups, n_groups), sizes),
        "group_sizes": sizes,
    }


class PredictiveStatistics:
    """Running sums over minibatches of generated counts, turned into statistics at the end.

    Parameters
    ----------
    n_cells, n_genes, n_samples
        Shape of the draws: ``n_samples`` per cell.
    groups, n_groups
        Group code of each cell (for the fold changes) and the number of groups.
    """

    def __init__(self, n_cells: int, n_genes: int, n_samples: int, groups, n_groups: int):
        self.n_cells, self.n_genes, self.n_samples = n_cells, n_genes, n_samples
        self.groups = torch.as_tensor(np.asarray(groups), dtype=torch.long)
        self.n_groups = n_groups
        self.gene_sum = np.zeros((n_samples, n_genes))
        self.gene_sq = np.zeros((n_samples, n_genes))
        self.gene_zeros = np.zeros((n_samples, n_genes))
        self.cell_cv = np.zeros((n_samples, n_cells))
        self.group_sum = np.zeros((n_samples, n_groups, n_genes))
        self.levels = torch.as_tensor(LEVELS, dtype=torch.float64)
        self.inside = np.zeros(len(LEVELS) + 1)
        self.pit = np.zeros(PIT_BINS)
        self._seen = 0

    @torch.inference_mode()
    def update(self, x: torch.Tensor, draws: torch.Tensor, rows: torch.Tensor) -> None:
        """Add a minibatch: observed ``x`` ``(cells, genes)``, ``draws`` ``(n_samples, cells,
        genes)``, and the cells' row positions ``rows``."""
        draws = draws.double()
        x = x.to(draws.device, torch.float64)
        as_np = lambda t: t.cpu().numpy()  # noqa: E731
        self.gene_sum += as_np(draws.sum(1))
        self.gene_sq += as_np(draws.square().sum(1))
        self.gene_zeros += as_np((draws == 0).sum(1))
        mean = draws.mean(-1)
        sd = draws.var(-1, unbiased=False).sqrt()
        cv = torch.where(mean > 0, sd / mean.clamp(min=1e-300), torch.full_like(mean, np.nan))
        self.cell_cv[:, as_np(rows)] = as_np(cv)
        normalized = draws * (NORMALIZED_TOTAL / draws.sum(-1, keepdim=True).clamp(min=1.0))
        onehot = torch.nn.functional.one_hot(
            self.groups[rows.cpu()].to(draws.device), self.n_groups
        ).double()
        self.group_sum += as_np(torch.einsum("ck,scg->skg", onehot, normalized))
        self._add_calibration(x, draws)
        self._seen += len(rows)

    def _add_calibration(self, x: torch.Tensor, draws: torch.Tensor) -> None:
        """Randomised rank of each observed count among its draws -> uniform PIT values."""
        below = (draws < x).sum(0)
        ties = (draws == x).sum(0)
        rank = below + torch.floor(torch.rand_like(x) * (ties + 1))
        pit = ((rank + torch.rand_like(x)) / (self.n_samples + 1)).flatten()
        width = (2.0 * (pit - 0.5).abs()).clamp(max=1.0)  # narrowest central interval holding x
        bins = torch.bucketize(width, self.levels.to(width.device))
        self.inside += np.bincount(bins.cpu().numpy(), minlength=len(LEVELS) + 1)
        self.pit += np.histogram(pit.cpu().numpy(), bins=PIT_BINS, range=(0.0, 1.0))[0]

    def finish(self) -> dict[str, np.ndarray]:
        """The statistics of the generated counts (each a mean over the draws)."""
        if self._seen != self.n_cells:
            raise RuntimeError(f"saw {self._seen} of {self.n_cells} cells; a minibatch is missing.")
        n = self.n_cells
        sizes = np.bincount(self.groups.numpy(), minlength=self.n_groups)
        lfc = np.stack([log_fold_changes(g, sizes) for g in self.group_sum])
        total = self.inside.sum()
        with warnings.catch_warnings():  # genes never expressed in any draw stay NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            gene_cv = np.nanmean(_cv(self.gene_sum, self.gene_sq, n), axis=0)
            cell_cv = np.nanmean(self.cell_cv, axis=0)
        return {
            "gene_cv": gene_cv,
            "cell_cv": cell_cv,
            "gene_zero_fraction": self.gene_zeros.mean(0) / n,
            "lfc": lfc.mean(0),
            "coverage": np.cumsum(self.inside)[: len(LEVELS)] / total,
            "pit_histogram": self.pit / self.pit.sum() * PIT_BINS,
        }
