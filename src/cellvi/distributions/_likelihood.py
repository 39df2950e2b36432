"""Per-cell NB / ZINB / Poisson log-likelihoods for training, fused and sparse-aware.

The distribution classes in this package give the textbook ``log_prob``. Training needs the
same numbers summed per cell, fast, and four facts make that cheap:

- ``lgamma(x + 1)`` does not depend on the parameters: it is passed in per cell (precomputed
  once per dataset by the loader) instead of being recomputed every step.
- ``lgamma(x + theta) - lgamma(theta)`` and ``x * log(mu)`` vanish where ``x == 0``: they are
  evaluated on the non-zero entries only (the loader gives their coordinates).
- With one dispersion per gene, ``lgamma(theta)`` and ``digamma(theta)`` are per-gene terms.
- The gradient, including that of the softmax that turns decoder logits into means, is written
  by hand (:class:`_NegBinomialLogLik`): a training step makes about half as many full passes
  over the ``cells x genes`` matrix as autograd would.

The mean is ``mu = softmax(logits) * exp(log_library)``. With ``D = log theta - log(theta +
mu)`` and ``t = theta * D = log NB(0)``, for ``x > 0``: ``log NB(x) = t + lgamma(x + theta)
- lgamma(theta) - log x! + x (log mu - log(theta + mu))``; with zero-inflation logits
``rho``: ``log p(0) = softplus(t - rho) - softplus(-rho)`` and ``log p(x > 0) = log NB(x) -
softplus(rho)``. The zero case is summed over every entry and corrected at the non-zero ones.
Values and gradients are checked against the distribution classes and autograd in the tests.

On a CPU, with float32 inputs, the NB and ZINB functions run the compiled C kernel of
:mod:`._native_likelihood` instead (same values and gradients, one pass over each cell) when
it could be built; :class:`_NegBinomialLogLik` is the implementation everywhere else.

Every function returns the full normalised log-likelihood per cell, shape ``(n_cells,)``.
``x`` is the dense count matrix; it may be ``None`` when the non-zero entries are given as
``nz_rows``, ``nz_cols`` and ``nz_values``.
``theta`` is the inverse dispersion, per gene ``(n_genes,)`` or per entry ``(n_cells,
n_genes)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import _native_likelihood as native

_EPS = 1e-8
_TINY = torch.finfo(torch.float32).tiny


class _NonZero:
    """The non-zero entries of a count matrix: rows, columns, flat positions and values.

    From a dense ``x`` (coordinates found or given), or from coordinates and values alone.
    """

    def __init__(self, x, rows, cols, values=None, *, n_genes: int):
        if rows is None or cols is None:
            rows, cols = torch.nonzero(x, as_tuple=True)
        self.rows, self.cols = rows, cols
        self.flat = rows * n_genes + cols
        self.x = values if values is not None else x.reshape(-1).index_select(0, self.flat)


def _take(t: torch.Tensor, flat: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1).index_select(0, flat)


def digamma_positive(z: torch.Tensor) -> torch.Tensor:
    """``digamma(z)`` for ``z > 0``: six recurrence steps, then the asymptotic series.

    Accurate to about 1e-11 (relative) and, on a CPU, several times faster than
    ``torch.digamma``, which matters because it runs on every non-zero count at every step.
    """
    acc = z.reciprocal()
    for k in range(1, 6):
        acc = acc + (z + k).reciprocal()
    w = z + 6.0
    w2 = (w * w).reciprocal()
    series = w2 * (1 / 12 - w2 * (1 / 120 - w2 * (1 / 252 - w2 * (1 / 240 - w2 / 132))))
    return torch.log(w) - 0.5 / w - series - acc


class _NegBinomialLogLik(torch.autograd.Function):
    """Per-cell (zero-inflated) NB log-likelihood from decoder logits; hand-written backward."""

    @staticmethod
    def forward(ctx, logits, log_library, theta, rho, rows, cols, flat, x_nz, log_x_factorial):
        per_gene = theta.dim() == 1
        # softmax is one fused kernel, several times cheaper on a CPU than logsumexp + exp
        scale = torch.softmax(logits, -1)
        mu = scale * torch.exp(log_library).unsqueeze(-1)
        # the NB of inverse dispersion theta + eps in every term, as in the C kernel (an eps
        # left out of lgamma / digamma alone moved d theta by 1e-4 relative at theta = 1e-4)
        theta = theta + _EPS
        ratio = mu / theta  # mu / theta
        log1p_ratio = torch.log1p(ratio)  # -D = log(theta + mu) - log(theta)
        q = ratio.div_(ratio + 1.0)  # mu / (theta + mu)
        t = log1p_ratio * (-theta)  # log NB(0)
        a = neg_rho = None
        if rho is None:
            out = t.sum(-1)
        else:
            a, neg_rho = t - rho, rho.neg()
            out = F.softplus(a).sum(-1) - F.softplus(neg_rho).sum(-1)
        # the non-zero entries
        # log mu at the non-zeros; the floor only matters where a softmax underflows (the value
        # is then far below any useful fit); the gradient is analytic and does not use it
        log_scale_nz = torch.log(_take(scale, flat).clamp_min_(_TINY))
        log_mu_nz = log_scale_nz + log_library.index_select(0, rows)
        D_nz = _take(log1p_ratio, flat).neg_()
        if per_gene:
            theta_nz = theta.index_select(0, cols)
            lgamma_theta_nz = torch.lgamma(theta).index_select(0, cols)
        else:
            theta_nz = _take(theta, flat)
            lgamma_theta_nz = torch.lgamma(theta_nz)
        log_theta_mu_nz = torch.log(theta_nz) - D_nz
        nz = torch.lgamma(x_nz + theta_nz) - lgamma_theta_nz + x_nz * (log_mu_nz - log_theta_mu_nz)
        rho_nz = None
        if rho is not None:
            rho_nz, t_nz = _take(rho, flat), theta_nz * D_nz
            nz = nz + t_nz - torch.logaddexp(rho_nz, t_nz)
        out = out.index_add_(0, rows, nz) - log_x_factorial
        ctx.save_for_backward(
            scale, q, log1p_ratio, a, neg_rho, theta, rows, cols, flat, x_nz, D_nz, theta_nz,
            rho_nz,
        )  # fmt: skip
        return out

    @staticmethod
    def backward(ctx, grad):
        (scale, q, log1p_ratio, a, neg_rho, theta, rows, cols, flat, x_nz, D_nz, theta_nz,
         rho_nz) = ctx.saved_tensors  # fmt: skip
        per_gene, zero_inflated = theta.dim() == 1, a is not None
        g = grad.unsqueeze(-1)
        g_rho = None
        if zero_inflated:
            g_t = torch.sigmoid(a).mul_(g)
            g_rho = torch.sigmoid(neg_rho).mul_(g).sub_(g_t)
        else:
            g_t = g.expand_as(q)
        # d t / d log_mu = -theta q ;  d t / d theta = D + q = q - log1p(mu / theta)
        g_log_mu = (g_t * q).mul_(-theta)
        g_theta = (q - log1p_ratio).mul_(g_t)
        if per_gene:
            g_theta = g_theta.sum(0)
        # the non-zero entries
        grad_nz = grad.index_select(0, rows)
        q_nz = _take(q, flat)
        dig = torch.digamma(theta).index_select(0, cols) if per_gene else torch.digamma(theta_nz)
        g_mu_nz = x_nz * (1.0 - q_nz)
        # x / (theta + mu) = x (1 - q) / theta
        g_theta_nz = digamma_positive(x_nz + theta_nz) - dig - g_mu_nz / theta_nz
        if zero_inflated:
            w = torch.sigmoid(rho_nz - theta_nz * D_nz)  # d/dt of (t - logaddexp(rho, t))
            g_mu_nz = g_mu_nz - w * theta_nz * q_nz
            g_theta_nz = g_theta_nz + w * (D_nz + q_nz)
            g_rho.reshape(-1).index_add_(0, flat, (-w).mul_(grad_nz))
        g_log_mu.reshape(-1).index_add_(0, flat, g_mu_nz.mul_(grad_nz))
        if per_gene:
            g_theta.index_add_(0, cols, g_theta_nz.mul_(grad_nz))
        else:
            g_theta.reshape(-1).index_add_(0, flat, g_theta_nz.mul_(grad_nz))
        # through log_mu = logits - logsumexp(logits) + log_library
        s = g_log_mu.sum(-1)
        g_log_library = s if ctx.needs_input_grad[1] else None
        g_logits = g_log_mu.addcmul_(scale, s.neg().unsqueeze(-1))
        return g_logits, g_log_library, g_theta, g_rho, None, None, None, None, None


def _check_theta(theta: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    if theta.dim() == 2 and theta.shape != logits.shape:
        theta = theta.expand_as(logits)
    return theta.contiguous() if theta.dim() == 2 else theta


def _nb_or_zinb(x, logits, log_library, theta, rho, log_x_factorial, rows, cols, values):
    theta = _check_theta(theta, logits)
    if rows is None or cols is None:
        rows, cols = torch.nonzero(x, as_tuple=True)
    if values is None:
        values = x[rows, cols]
    if native.usable(logits, log_library, theta, rho, values, log_x_factorial):
        return native.nb_log_likelihood_native(
            logits, log_library, theta, rho, rows, cols, values, log_x_factorial
        )
    nz = _NonZero(x, rows, cols, values, n_genes=logits.shape[-1])
    return _NegBinomialLogLik.apply(
        logits, log_library, theta, rho, nz.rows, nz.cols, nz.flat, nz.x, log_x_factorial
    )


def nb_log_likelihood(
    x: torch.Tensor,
    logits: torch.Tensor,
    log_library: torch.Tensor,
    theta: torch.Tensor,
    *,
    log_x_factorial: torch.Tensor,
    nz_rows: torch.Tensor | None = None,
    nz_cols: torch.Tensor | None = None,
    nz_values: torch.Tensor | None = None,
) -> torch.Tensor:
    """NB log-likelihood per cell with ``mu = softmax(logits) * exp(log_library)``."""
    return _nb_or_zinb(x, logits, log_library, theta, None, log_x_factorial,
                       nz_rows, nz_cols, nz_values)  # fmt: skip


def zinb_log_likelihood(
    x: torch.Tensor,
    logits: torch.Tensor,
    log_library: torch.Tensor,
    theta: torch.Tensor,
    zi_logits: torch.Tensor,
    *,
    log_x_factorial: torch.Tensor,
    nz_rows: torch.Tensor | None = None,
    nz_cols: torch.Tensor | None = None,
    nz_values: torch.Tensor | None = None,
) -> torch.Tensor:
    """Zero-inflated NB log-likelihood per cell, ``mu = softmax(logits) * exp(log_library)``."""
    return _nb_or_zinb(x, logits, log_library, theta, zi_logits, log_x_factorial,
                       nz_rows, nz_cols, nz_values)  # fmt: skip


def poisson_log_likelihood(
    x: torch.Tensor,
    logits: torch.Tensor,
    log_library: torch.Tensor,
    *,
    log_x_factorial: torch.Tensor,
    nz_rows: torch.Tensor | None = None,
    nz_cols: torch.Tensor | None = None,
    nz_values: torch.Tensor | None = None,
) -> torch.Tensor:
    """Poisson log-likelihood per cell with ``mu = softmax(logits) * exp(log_library)``.

    ``sum_g mu_g = exp(log_library)``, so the dense term needs no pass over the matrix.
    """
    nz = _NonZero(x, nz_rows, nz_cols, nz_values, n_genes=logits.shape[-1])
    log_mu_nz = _take(torch.log_softmax(logits, -1), nz.flat) + log_library.index_select(0, nz.rows)
    per_cell = torch.zeros_like(log_library).index_add(0, nz.rows, nz.x * log_mu_nz)
    return per_cell - torch.exp(log_library) - log_x_factorial
