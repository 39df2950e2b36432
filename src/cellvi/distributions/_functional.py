"""Numerically stable building blocks shared by the count distributions (private).

The log pmfs are written in Loader's saddle-point form: every ``lgamma`` is split into
Stirling's leading terms plus a small correction, so that the large leading terms cancel
analytically instead of in floating point. This keeps the negative binomial accurate in
float32 for very large ``theta`` (the Poisson limit) and for large counts.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)
# Above this argument the asymptotic Stirling series (4 terms) has an error below 1e-12.
_STIRLING_CUTOFF = 10.0


def broadcast_params(owner: str, **params) -> tuple[Tensor, ...]:
    """Convert parameters to one floating dtype and device and broadcast them together.

    Tensors keep their device; numbers (or arrays) follow the first tensor. Integer or
    boolean inputs become the default floating dtype; mixed floating dtypes are promoted.
    """
    ref = next((p for p in params.values() if isinstance(p, Tensor)), None)
    device = None if ref is None else ref.device
    dtype = None
    for p in params.values():
        if isinstance(p, Tensor) and p.dtype.is_floating_point:
            dtype = p.dtype if dtype is None else torch.promote_types(dtype, p.dtype)
    if dtype is None:
        dtype = torch.get_default_dtype()
    tensors = [torch.as_tensor(p, dtype=dtype, device=device) for p in params.values()]
    try:
        return tuple(torch.broadcast_tensors(*tensors))
    except RuntimeError as err:
        shapes = ", ".join(
            f"{k} (shape {tuple(t.shape)})" for k, t in zip(params, tensors, strict=True)
        )
        raise ValueError(f"{owner}: parameters cannot be broadcast together: {shapes}.") from err


def prepare_value(dist, value, like: Tensor) -> Tensor:
    """Turn ``value`` into a tensor, validate it (if enabled) and cast it like ``like``."""
    value = torch.as_tensor(value, device=like.device)
    if dist._validate_args:
        dist._validate_sample(value)
    return value.to(like.dtype)


def stirling_correction(z: Tensor) -> Tensor:
    """``lgamma(z) - [(z - 1/2) log z - z + log(2 pi) / 2]`` for ``z > 0``.

    Below the cutoff the definition is evaluated directly (its terms are small there), above
    it the asymptotic series is used; each piece sees a clamped argument, so the unused one
    stays finite and contributes no gradient.
    """
    zl = z.clamp_min(_STIRLING_CUTOFF)
    r = zl.reciprocal()
    r2 = r * r
    series = r * (1.0 / 12 - r2 * (1.0 / 360 - r2 * (1.0 / 1260 - r2 / 1680)))
    zs = z.clamp_max(_STIRLING_CUTOFF)
    direct = torch.lgamma(zs) - (zs - 0.5) * torch.log(zs) + zs - _HALF_LOG_2PI
    return torch.where(z >= _STIRLING_CUTOFF, series, direct)


def log_ratio(diff: Tensor, den: Tensor, far: Tensor) -> Tensor:
    """``log((den + diff) / den)`` for a positive ratio, given the difference ``diff``.

    Near one (``|diff| < den / 2``) this is ``log1p(diff / den)``, free of cancellation;
    elsewhere it is ``far``, the same log ratio computed as a difference of logs (which
    cannot overflow and has bounded gradients).
    """
    close = diff.abs() < 0.5 * den
    near = torch.log1p(torch.where(close, diff, torch.zeros_like(diff)) / den)
    return torch.where(close, near, far)


def _positive_counts(x: Tensor) -> tuple[Tensor, Tensor]:
    """Mask of ``x > 0`` and a copy of ``x`` with zeros replaced by ones (safe for logs)."""
    pos = x > 0
    return pos, torch.where(pos, x, torch.ones_like(x))


def poisson_log_prob(x: Tensor, mu: Tensor) -> Tensor:
    """Normalised Poisson log pmf, ``x log mu - mu - lgamma(x + 1)``, computed stably."""
    pos, xs = _positive_counts(x)
    mu_c = mu.clamp_min(torch.finfo(mu.dtype).tiny)
    log_x_over_mu = log_ratio(xs - mu_c, mu_c, torch.log(xs) - torch.log(mu_c))
    bd0 = xs * log_x_over_mu + mu - xs  # half the Poisson deviance (>= 0)
    lp_pos = -stirling_correction(xs) - bd0 - 0.5 * torch.log(xs) - _HALF_LOG_2PI
    return torch.where(pos, lp_pos, -mu)


def nb_log_prob(x: Tensor, mu: Tensor, theta: Tensor) -> Tensor:
    """Normalised negative binomial log pmf with mean ``mu`` and inverse dispersion ``theta``.

    Equal to ``lgamma(x + theta) - lgamma(theta) - lgamma(x + 1)
    + theta log(theta / (theta + mu)) + x log(mu / (theta + mu))``.
    """
    pos, xs = _positive_counts(x)
    mu_c = mu.clamp_min(torch.finfo(mu.dtype).tiny)
    # main = (x + theta) log((x + theta) / (mu + theta)) - x log(x / mu), i.e. minus half the
    # NB deviance, rearranged as x log[(x + theta) mu / (x (mu + theta))] + theta log[(x + theta)
    # / (mu + theta)] so that small theta does not cancel two terms of size x log(x / mu).
    log_x = torch.log(xs)
    far1 = torch.log(xs + theta) - torch.log(mu_c + theta)
    far2 = far1 + torch.log(mu_c) - log_x
    main = xs * log_ratio(theta * (mu_c - xs), xs * (mu_c + theta), far2) + theta * log_ratio(
        xs - mu_c, mu_c + theta, far1
    )
    corr = stirling_correction(xs + theta) - stirling_correction(theta) - stirling_correction(xs)
    half = -0.5 * (log_x + torch.log1p(xs / theta)) - _HALF_LOG_2PI
    lp_zero = -theta * torch.log1p(mu / theta)
    return torch.where(pos, main + corr + half, lp_zero)


@torch.no_grad()
def sample_poisson(mu: Tensor, shape: torch.Size) -> Tensor:
    """Poisson draws of the given shape (``mu`` broadcast to it)."""
    return torch.poisson(mu.expand(shape))


@torch.no_grad()
def sample_nb(mu: Tensor, theta: Tensor, shape: torch.Size) -> Tensor:
    """Negative binomial draws as a Gamma-Poisson mixture; ``mu = 0`` gives zero counts."""
    mu, theta = mu.expand(shape), theta.expand(shape)
    gamma = torch.distributions.Gamma(theta, torch.ones_like(theta), validate_args=False)
    rate = gamma.sample() * (mu / theta)  # Gamma(concentration=theta, rate=theta / mu)
    return torch.poisson(torch.where(mu > 0, rate, torch.zeros_like(rate)))
