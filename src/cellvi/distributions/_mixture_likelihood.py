"""Per-cell log-likelihood of protein counts under totalVI's background/foreground NB mixture.

Each protein count ``y`` is drawn from a background negative binomial with mean ``exp(b)`` or a
foreground one with mean ``exp(f)`` (``f > b``), both with inverse dispersion ``theta``; the
background is picked with probability ``sigmoid(rho)``. Proteins are few, so the matrix is
small and plain torch ops (autograd) are fast enough; written in log space throughout so that
well separated components and large ``|rho|`` stay finite.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


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
    """Per-cell sum of :func:`nb_mixture_log_prob` over the proteins where ``mask`` is 1."""
    lp = nb_mixture_log_prob(y, log_mu_background, log_mu_foreground, theta, background_logits)
    if mask is not None:
        lp = lp * mask
    return lp.sum(-1)
