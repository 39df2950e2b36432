"""The fast per-cell likelihoods equal the summed log_prob of the distribution classes."""

import pytest
import torch

from cellvi.distributions import NegativeBinomial, Poisson, ZeroInflatedNegativeBinomial
from cellvi.distributions._likelihood import (
    nb_log_likelihood,
    poisson_log_likelihood,
    zinb_log_likelihood,
)


def _data(per_entry_theta: bool):
    g = torch.Generator().manual_seed(0)
    n, p = 7, 11
    log_mu = torch.randn(n, p, generator=g, dtype=torch.float64) * 2
    theta = torch.rand((n, p) if per_entry_theta else (p,), generator=g, dtype=torch.float64) * 5
    theta = theta + 0.05
    x = torch.poisson(torch.exp(log_mu), generator=g)
    x[0] = 0.0  # an all-zero cell
    zi = torch.randn(n, p, generator=g, dtype=torch.float64) * 3
    log_fact = torch.lgamma(x + 1).sum(1)
    return x, log_mu, theta, zi, log_fact


@pytest.mark.parametrize("per_entry_theta", [False, True])
def test_nb_matches_distribution(per_entry_theta):
    x, log_mu, theta, _, log_fact = _data(per_entry_theta)
    fast = nb_log_likelihood(x, log_mu, theta, log_x_factorial=log_fact)
    ref = NegativeBinomial(torch.exp(log_mu), theta.expand_as(log_mu)).log_prob(x).sum(1)
    torch.testing.assert_close(fast, ref, rtol=1e-7, atol=1e-6)


@pytest.mark.parametrize("per_entry_theta", [False, True])
def test_zinb_matches_distribution(per_entry_theta):
    x, log_mu, theta, zi, log_fact = _data(per_entry_theta)
    fast = zinb_log_likelihood(x, log_mu, theta, zi, log_x_factorial=log_fact)
    ref = ZeroInflatedNegativeBinomial(torch.exp(log_mu), theta.expand_as(log_mu), zi)
    torch.testing.assert_close(fast, ref.log_prob(x).sum(1), rtol=1e-7, atol=1e-6)


def test_poisson_matches_distribution():
    x, log_mu, _, _, log_fact = _data(False)
    fast = poisson_log_likelihood(x, log_mu, log_x_factorial=log_fact)
    torch.testing.assert_close(fast, Poisson(torch.exp(log_mu)).log_prob(x).sum(1))


def test_given_nonzero_coordinates_are_used():
    x, log_mu, theta, zi, log_fact = _data(False)
    rows, cols = torch.nonzero(x, as_tuple=True)
    a = zinb_log_likelihood(x, log_mu, theta, zi, log_x_factorial=log_fact)
    b = zinb_log_likelihood(
        x, log_mu, theta, zi, log_x_factorial=log_fact, nz_rows=rows, nz_cols=cols
    )
    torch.testing.assert_close(a, b)
    # dropping one non-zero coordinate must change the result: the coordinates really matter
    c = zinb_log_likelihood(
        x, log_mu, theta, zi, log_x_factorial=log_fact, nz_rows=rows[1:], nz_cols=cols[1:]
    )
    assert not torch.allclose(a, c)


def test_gradients_match_distribution():
    x, log_mu, theta, zi, log_fact = _data(False)
    params = [t.clone().requires_grad_() for t in (log_mu, theta, zi)]
    zinb_log_likelihood(x, *params, log_x_factorial=log_fact).sum().backward()
    fast_grads = [p.grad for p in params]
    params = [t.clone().requires_grad_() for t in (log_mu, theta, zi)]
    lm, th, z = params
    ZeroInflatedNegativeBinomial(torch.exp(lm), th.expand_as(lm), z).log_prob(x).sum().backward()
    for a, p in zip(fast_grads, params, strict=True):
        torch.testing.assert_close(a, p.grad, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("per_entry_theta", [False, True])
@pytest.mark.parametrize("zero_inflated", [False, True])
def test_hand_written_gradient_passes_gradcheck(per_entry_theta, zero_inflated):
    x, log_mu, theta, zi, log_fact = _data(per_entry_theta)
    rows, cols = torch.nonzero(x, as_tuple=True)
    inputs = [log_mu.clone().requires_grad_(), theta.clone().requires_grad_()]
    if zero_inflated:
        inputs.append(zi.clone().requires_grad_())

    def f(*params):
        fn = zinb_log_likelihood if zero_inflated else nb_log_likelihood
        return fn(x, *params, log_x_factorial=log_fact, nz_rows=rows, nz_cols=cols)

    assert torch.autograd.gradcheck(f, tuple(inputs))


def test_gradient_with_uneven_upstream_weights():
    """Per-cell upstream gradients (e.g. a weighted loss) reach the right cells."""
    x, log_mu, theta, zi, log_fact = _data(False)
    weights = torch.arange(1.0, x.shape[0] + 1, dtype=torch.float64)
    params = [t.clone().requires_grad_() for t in (log_mu, theta, zi)]
    (zinb_log_likelihood(x, *params, log_x_factorial=log_fact) * weights).sum().backward()
    fast = [p.grad for p in params]
    params = [t.clone().requires_grad_() for t in (log_mu, theta, zi)]
    lm, th, z = params
    ref = ZeroInflatedNegativeBinomial(torch.exp(lm), th.expand_as(lm), z).log_prob(x).sum(1)
    (ref * weights).sum().backward()
    for a, p in zip(fast, params, strict=True):
        torch.testing.assert_close(a, p.grad, rtol=1e-6, atol=1e-6)
