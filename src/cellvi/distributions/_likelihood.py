"""Per-cell count log-likelihoods for training, without wasted per-element work.

The distribution classes in this package give the textbook ``log_prob``. Training needs the
same numbers summed per cell, fast, and three facts make that cheap:

- ``lgamma(x + 1)`` does not depend on the parameters: it is passed in per cell (precomputed
  once per dataset by the loader) instead of being recomputed every step.
- ``lgamma(x + theta) - lgamma(theta)`` and ``x * log(mu)`` vanish where ``x == 0``: they are
  evaluated on the non-zero entries only (the loader gives their coordinates).
- With one dispersion per gene, ``theta * log(theta)`` is a per-gene term.

Every function returns the full normalised log-likelihood per cell, shape ``(n_cells,)``.
``log_mu`` is ``log`` of the NB/Poisson mean, ``theta`` is the inverse dispersion, either per
gene ``(n_genes,)`` or per entry ``(n_cells, n_genes)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

_EPS = 1e-8


def nonzero_coords(
    x: torch.Tensor, rows: torch.Tensor | None = None, cols: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Coordinates of the non-zero entries of ``x`` (reuses the loader's when given)."""
    if rows is None or cols is None:
        rows, cols = torch.nonzero(x, as_tuple=True)
    return rows, cols


def _at(t: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """Entries of a per-gene ``(g,)`` or per-entry ``(n, g)`` tensor at the coordinates."""
    return t[cols] if t.dim() == 1 else t[rows, cols]


def _row_sum_per_gene_or_entry(t: torch.Tensor, n_cells: int) -> torch.Tensor:
    return t.sum().expand(n_cells) if t.dim() == 1 else t.sum(-1)


def _nb_nonzero_terms(x_nz, theta_nz, log_mu_nz, log_theta_mu_nz):
    return (
        torch.lgamma(x_nz + theta_nz)
        - torch.lgamma(theta_nz)
        + x_nz * (log_mu_nz - log_theta_mu_nz)
    )


def _scatter_rows(values: torch.Tensor, rows: torch.Tensor, n_cells: int) -> torch.Tensor:
    return torch.zeros(n_cells, dtype=values.dtype, device=values.device).index_add_(
        0, rows, values
    )


def nb_log_likelihood(
    x: torch.Tensor,
    log_mu: torch.Tensor,
    theta: torch.Tensor,
    *,
    log_x_factorial: torch.Tensor,
    nz_rows: torch.Tensor | None = None,
    nz_cols: torch.Tensor | None = None,
) -> torch.Tensor:
    """Negative binomial log-likelihood summed over genes, per cell."""
    n = x.shape[0]
    rows, cols = nonzero_coords(x, nz_rows, nz_cols)
    mu = torch.exp(log_mu)
    log_theta_mu = torch.log(theta + mu + _EPS)
    log_theta = torch.log(theta + _EPS)
    # theta * (log theta - log(theta + mu)), split so a per-gene theta stays per gene
    dense = _row_sum_per_gene_or_entry(theta * log_theta, n) - _weighted_row_sum(
        log_theta_mu, theta
    )
    x_nz = x[rows, cols]
    nz = _nb_nonzero_terms(
        x_nz, _at(theta, rows, cols), log_mu[rows, cols], log_theta_mu[rows, cols]
    )
    return dense + _scatter_rows(nz, rows, n) - log_x_factorial


def _weighted_row_sum(values: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``(values * weight).sum(-1)``; a matrix-vector product when weight is per gene."""
    if weight.dim() == 1:
        return values @ weight
    return (values * weight).sum(-1)


def zinb_log_likelihood(
    x: torch.Tensor,
    log_mu: torch.Tensor,
    theta: torch.Tensor,
    zi_logits: torch.Tensor,
    *,
    log_x_factorial: torch.Tensor,
    nz_rows: torch.Tensor | None = None,
    nz_cols: torch.Tensor | None = None,
) -> torch.Tensor:
    """Zero-inflated NB log-likelihood summed over genes, per cell.

    With ``rho = zi_logits`` and ``t = log NB(0) = theta (log theta - log(theta + mu))``:
    ``log p(0) = logaddexp(rho, t) - softplus(rho)`` and
    ``log p(x > 0) = log NB(x) - softplus(rho)``. The zero case is summed over every entry and
    corrected at the non-zero entries, where ``-softplus(rho)`` cancels.
    """
    n = x.shape[0]
    rows, cols = nonzero_coords(x, nz_rows, nz_cols)
    mu = torch.exp(log_mu)
    log_theta_mu = torch.log(theta + mu + _EPS)
    t = theta * (torch.log(theta + _EPS) - log_theta_mu)
    zero_case = torch.logaddexp(zi_logits, t)
    dense = (zero_case - F.softplus(zi_logits)).sum(-1)
    x_nz = x[rows, cols]
    nz = (
        _nb_nonzero_terms(
            x_nz, _at(theta, rows, cols), log_mu[rows, cols], log_theta_mu[rows, cols]
        )
        + t[rows, cols]
        - zero_case[rows, cols]
    )
    return dense + _scatter_rows(nz, rows, n) - log_x_factorial


def poisson_log_likelihood(
    x: torch.Tensor,
    log_mu: torch.Tensor,
    *,
    log_x_factorial: torch.Tensor,
    nz_rows: torch.Tensor | None = None,
    nz_cols: torch.Tensor | None = None,
) -> torch.Tensor:
    """Poisson log-likelihood summed over genes, per cell."""
    n = x.shape[0]
    rows, cols = nonzero_coords(x, nz_rows, nz_cols)
    nz = x[rows, cols] * log_mu[rows, cols]
    return _scatter_rows(nz, rows, n) - torch.exp(log_mu).sum(-1) - log_x_factorial
