"""The fast per-cell likelihoods equal the summed log_prob of the distribution classes,
and their hand-written gradients equal autograd's."""

import pytest
import torch

from cellvi.distributions import NegativeBinomial, Poisson, ZeroInflatedNegativeBinomial
from cellvi.distributions._likelihood import (
    digamma_positive,
    nb_log_likelihood,
    poisson_log_likelihood,
    zinb_log_likelihood,
)


def _data(per_entry_theta: bool, n: int = 7, p: int = 11):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(n, p, generator=g, dtype=torch.float64) * 2
    log_lib = torch.rand(n, generator=g, dtype=torch.float64) * 3 + 2
    theta = torch.rand((n, p) if per_entry_theta else (p,), generator=g, dtype=torch.float64)
    theta = theta * 5 + 0.05
    zi = torch.randn(n, p, generator=g, dtype=torch.float64) * 3
    mu = torch.softmax(logits, -1) * torch.exp(log_lib).unsqueeze(-1)
    x = torch.poisson(mu, generator=g)
    x[0] = 0.0  # an all-zero cell
    log_fact = torch.lgamma(x + 1).sum(1)
    return x, logits, log_lib, theta, zi, mu, log_fact


@pytest.mark.parametrize("per_entry_theta", [False, True])
def test_nb_matches_distribution(per_entry_theta):
    x, logits, log_lib, theta, _, mu, log_fact = _data(per_entry_theta)
    fast = nb_log_likelihood(x, logits, log_lib, theta, log_x_factorial=log_fact)
    ref = NegativeBinomial(mu, theta.expand_as(mu)).log_prob(x).sum(1)
    torch.testing.assert_close(fast, ref, rtol=1e-7, atol=1e-6)


@pytest.mark.parametrize("per_entry_theta", [False, True])
def test_zinb_matches_distribution(per_entry_theta):
    x, logits, log_lib, theta, zi, mu, log_fact = _data(per_entry_theta)
    fast = zinb_log_likelihood(x, logits, log_lib, theta, zi, log_x_factorial=log_fact)
    ref = ZeroInflatedNegativeBinomial(mu, theta.expand_as(mu), zi).log_prob(x).sum(1)
    torch.testing.assert_close(fast, ref, rtol=1e-7, atol=1e-6)


def test_poisson_matches_distribution():
    x, logits, log_lib, _, _, mu, log_fact = _data(False)
    fast = poisson_log_likelihood(x, logits, log_lib, log_x_factorial=log_fact)
    torch.testing.assert_close(fast, Poisson(mu).log_prob(x).sum(1))


def test_float32_matches_float64():
    x, logits, log_lib, theta, zi, _, log_fact = _data(False, n=64, p=500)
    ref = zinb_log_likelihood(x, logits, log_lib, theta, zi, log_x_factorial=log_fact)
    args = [t.float() for t in (x, logits, log_lib, theta, zi)]
    fast = zinb_log_likelihood(*args, log_x_factorial=log_fact.float())
    torch.testing.assert_close(fast.double(), ref, rtol=1e-5, atol=1e-2)


def test_given_nonzero_coordinates_are_used():
    x, logits, log_lib, theta, zi, _, log_fact = _data(False)
    rows, cols = torch.nonzero(x, as_tuple=True)
    args = (x, logits, log_lib, theta, zi)
    a = zinb_log_likelihood(*args, log_x_factorial=log_fact)
    b = zinb_log_likelihood(*args, log_x_factorial=log_fact, nz_rows=rows, nz_cols=cols)
    torch.testing.assert_close(a, b)
    # dropping one non-zero coordinate must change the result: the coordinates really matter
    c = zinb_log_likelihood(*args, log_x_factorial=log_fact, nz_rows=rows[1:], nz_cols=cols[1:])
    assert not torch.allclose(a, c)


@pytest.mark.parametrize("per_entry_theta", [False, True])
@pytest.mark.parametrize("zero_inflated", [False, True])
def test_hand_written_gradient_passes_gradcheck(per_entry_theta, zero_inflated):
    x, logits, log_lib, theta, zi, _, log_fact = _data(per_entry_theta)
    rows, cols = torch.nonzero(x, as_tuple=True)
    inputs = [t.clone().requires_grad_() for t in (logits, log_lib, theta)]
    if zero_inflated:
        inputs.append(zi.clone().requires_grad_())

    def f(*params):
        fn = zinb_log_likelihood if zero_inflated else nb_log_likelihood
        return fn(x, *params, log_x_factorial=log_fact, nz_rows=rows, nz_cols=cols)

    assert torch.autograd.gradcheck(f, tuple(inputs))


def test_gradient_with_uneven_upstream_weights():
    """Per-cell upstream gradients (e.g. a weighted loss) reach the right cells."""
    x, logits, log_lib, theta, zi, _, log_fact = _data(False)
    weights = torch.arange(1.0, x.shape[0] + 1, dtype=torch.float64)

    def grads(fast: bool):
        params = [t.clone().requires_grad_() for t in (logits, log_lib, theta, zi)]
        lg, ll, th, z = params
        if fast:
            value = zinb_log_likelihood(x, lg, ll, th, z, log_x_factorial=log_fact)
        else:
            mu = torch.softmax(lg, -1) * torch.exp(ll).unsqueeze(-1)
            value = ZeroInflatedNegativeBinomial(mu, th.expand_as(mu), z).log_prob(x).sum(1)
        (value * weights).sum().backward()
        return [p.grad for p in params]

    for a, b in zip(grads(True), grads(False), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def test_fast_digamma_matches_torch():
    z = torch.cat([torch.logspace(-4, 5, 2000, dtype=torch.float64), torch.arange(1.0, 50.0)])
    z = z.to(torch.float64)
    torch.testing.assert_close(digamma_positive(z), torch.digamma(z), rtol=1e-10, atol=1e-10)
    z32 = z.float()
    torch.testing.assert_close(digamma_positive(z32), torch.digamma(z32), rtol=1e-5, atol=1e-4)
