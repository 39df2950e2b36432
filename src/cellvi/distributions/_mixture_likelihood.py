"""Per-cell log-likelihood of protein counts under a background/foreground NB mixture.

Each protein count ``y`` is drawn from a background negative binomial with mean ``exp(b)`` or a
foreground one with mean ``exp(f)`` (``f > b``), both with inverse dispersion ``theta``; the
background is picked with probability ``sigmoid(rho)``. Written in log space throughout so that
well separated components and large ``|rho|`` stay finite. The matrix is small, but its
twenty-odd torch operations and their backward cost about a third of a millisecond per
training step; on a CPU the compiled kernel in ``_nb_kernel.c`` scores it in one pass.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import _native_likelihood as native


def nb_log_prob_from_log_mean(
    y: torch.Tensor, log_mu: torch.Tensor, theta: torch.Tensor, lgamma_y1: torch.Tensor
) -> torch.Tensor:
    """Normalised NB log pmf per entry, from the log of the mean.

    ``lgamma(y + theta) - lgamma(theta) - lgamma(y + 1) + theta (log theta - log(theta + mu))
    + y (log mu - log(theta + mu))``, with ``log(theta + mu)`` as a ``logaddexp``.
    """
    log_theta = torch.log(theta)
    log_theta_mu = torch.logaddexp(log_theta.expand_as(log_mu), log_mu)
    return (
        torch.lgamma(y + theta)
        - torch.lgamma(theta)
        - lgamma_y1
        + theta * (log_theta - log_theta_mu)
        + y * (log_mu - log_theta_mu)
    )


def nb_mixture_log_prob(
    y: torch.Tensor,
    log_mu_background: torch.Tensor,
    log_mu_foreground: torch.Tensor,
    theta: torch.Tensor,
    background_logits: torch.Tensor,
) -> torch.Tensor:
    """Log pmf per entry of the two-component mixture (``(n_cells, n_proteins)``)."""
    lgamma_y1 = torch.lgamma(y + 1.0)
    lp_back = nb_log_prob_from_log_mean(y, log_mu_background, theta, lgamma_y1)
    lp_fore = nb_log_prob_from_log_mean(y, log_mu_foreground, theta, lgamma_y1)
    # log sigmoid(rho) = -softplus(-rho), log(1 - sigmoid(rho)) = -softplus(rho)
    return torch.logaddexp(
        lp_back - F.softplus(-background_logits), lp_fore - F.softplus(background_logits)
    )


def nb_mixture_log_likelihood(
    y: torch.Tensor,
    log_mu_background: torch.Tensor,
    log_mu_foreground: torch.Tensor,
    theta: torch.Tensor,
    background_logits: torch.Tensor,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-cell sum of :func:`nb_mixture_log_prob` over the proteins where ``mask`` is 1.

    Float32 CPU tensors go through the compiled kernel (:mod:`._native_likelihood`: the same
    values and gradients, computed in float64 in one pass) when it is available.
    """
    shape = log_mu_background.shape
    if (
        log_mu_background.dim() == 2
        and all(t.shape == shape for t in (y, log_mu_foreground, background_logits))
        and theta.shape in (shape, shape[-1:])
        and (mask is None or mask.shape == shape)
        and native.mixture_usable(
            y, log_mu_background, log_mu_foreground, theta, background_logits, mask
        )
    ):
        return native.nb_mixture_log_likelihood_native(
            y, log_mu_background, log_mu_foreground, theta, background_logits, mask
        )
    lp = nb_mixture_log_prob(y, log_mu_background, log_mu_foreground, theta, background_logits)
    if mask is not None:
        lp = lp * mask
    return lp.sum(-1)
