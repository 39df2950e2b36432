"""Tests for cellvi.distributions: log pmfs against scipy/mpmath, moments, shapes, validation."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from scipy import special, stats

from cellvi.distributions import (
    NegativeBinomial,
    NegativeBinomialMixture,
    Poisson,
    ZeroInflatedNegativeBinomial,
)

F64, F32 = torch.float64, torch.float32
XS = [0, 1, 2, 3, 7, 25, 100, 1_000, 10_000]
MUS = [1e-6, 1e-2, 0.5, 3.0, 42.0, 1e3, 1e4]
THETAS = [1e-3, 0.2, 1.0, 9.5, 10.0, 80.0, 1e4, 1e6]


def _grid(*axes):
    return [np.array(a, dtype=np.float64) for a in zip(*itertools.product(*axes), strict=True)]


def _t(a, dtype=F64):
    return torch.as_tensor(np.asarray(a), dtype=dtype)


def _close(actual, expected, rtol):
    """Relative error, measured against ``max(1, |expected|)`` (log probs near 0 use abs)."""
    actual = actual.detach().double().numpy()
    assert np.isfinite(actual).all()
    err = np.abs(actual - expected) / np.maximum(1.0, np.abs(expected))
    assert err.max() < rtol, f"max error {err.max():.3g} at index {err.argmax()}"


def _scipy_nb(x, mu, theta):
    return stats.nbinom.logpmf(x, theta, theta / (theta + mu))


def _mpmath_nb(x, mu, theta):
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 40

    def one(x, mu, th):
        x, mu, th = mpmath.mpf(x), mpmath.mpf(mu), mpmath.mpf(th)
        lg = mpmath.loggamma
        return float(
            lg(x + th)
            - lg(th)
            - lg(x + 1)
            + th * mpmath.log(th / (th + mu))
            + x * mpmath.log(mu / (th + mu))
        )

    return np.array([one(*a) for a in zip(x, mu, theta, strict=True)])


@pytest.fixture
def seeded():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1234)
        yield


# --------------------------------------------------------------------------- log_prob values


@pytest.mark.parametrize(("dtype", "rtol"), [(F64, 2e-8), (F32, 2e-5)])
def test_nb_log_prob_matches_scipy(dtype, rtol):
    x, mu, theta = _grid(XS, MUS, [t for t in THETAS if t <= 1e4])
    lp = NegativeBinomial(_t(mu, dtype), _t(theta, dtype)).log_prob(_t(x, dtype))
    assert lp.dtype == dtype
    _close(lp, _scipy_nb(x, mu, theta), rtol)


@pytest.mark.parametrize(("dtype", "rtol"), [(F64, 1e-10), (F32, 1e-5)])
def test_nb_log_prob_extremes_match_high_precision(dtype, rtol):
    # scipy itself loses digits for theta >= 1e6 (1 - p rounds); use a 40-digit reference
    x, mu, theta = _grid(XS, [1e-6, 0.5, 42.0, 1e4], [1e-3, 10.0, 1e6, 1e8])
    lp = NegativeBinomial(_t(mu, dtype), _t(theta, dtype)).log_prob(_t(x, dtype))
    _close(lp, _mpmath_nb(x, mu, theta), rtol)


@pytest.mark.parametrize("dtype", [F64, F32])
def test_nb_large_theta_is_poisson(dtype):
    x, mu = _grid(XS, MUS)
    lp_nb = NegativeBinomial(_t(mu, dtype), torch.tensor(1e12, dtype=dtype)).log_prob(_t(x, dtype))
    lp_po = Poisson(_t(mu, dtype)).log_prob(_t(x, dtype))
    # the naive lgamma(x + theta) - lgamma(theta) is off by O(1) here in float32
    _close(lp_nb, lp_po.double().numpy(), 1e-5)


@pytest.mark.parametrize(("dtype", "rtol"), [(F64, 1e-10), (F32, 2e-6)])
def test_poisson_log_prob_matches_scipy(dtype, rtol):
    x, mu = _grid(XS, MUS + [1e5])
    lp = Poisson(_t(mu, dtype)).log_prob(_t(x, dtype))
    _close(lp, stats.poisson.logpmf(x, mu), rtol)


@pytest.mark.parametrize(("dtype", "rtol"), [(F64, 2e-8), (F32, 2e-5)])
def test_zinb_log_prob_matches_hand_built(dtype, rtol):
    x, mu, theta, logit = _grid(XS, [1e-6, 0.5, 42.0, 1e4], [0.2, 10.0, 1e4], [-60, -2, 0, 3, 60])
    lp = ZeroInflatedNegativeBinomial(_t(mu, dtype), _t(theta, dtype), _t(logit, dtype))
    log_pi, log_not_pi = special.log_expit(logit), special.log_expit(-logit)
    nb = _scipy_nb(x, mu, theta)
    expected = np.where(x == 0, np.logaddexp(log_pi, log_not_pi + nb), log_not_pi + nb)
    _close(lp.log_prob(_t(x, dtype)), expected, rtol)


@pytest.mark.parametrize(("dtype", "rtol"), [(F64, 2e-8), (F32, 2e-5)])
@pytest.mark.parametrize("same_theta", [False, True])
def test_mixture_log_prob_matches_hand_built(dtype, rtol, same_theta):
    x, mu1, mu2, th1, th2, logit = _grid(
        XS, [1e-6, 3.0, 1e3], [0.5, 42.0, 1e4], [0.2, 1e4], [1.0, 80.0], [-40, -1, 0, 2, 40]
    )
    if same_theta:
        th2 = th1
    d = NegativeBinomialMixture(
        _t(mu1, dtype),
        _t(mu2, dtype),
        _t(th1, dtype),
        _t(logit, dtype),
        theta2=None if same_theta else _t(th2, dtype),
    )
    expected = np.logaddexp(
        special.log_expit(logit) + _scipy_nb(x, mu1, th1),
        special.log_expit(-logit) + _scipy_nb(x, mu2, th2),
    )
    _close(d.log_prob(_t(x, dtype)), expected, rtol)


def _all_dists(dtype=F64):
    t = lambda *a: torch.tensor(a, dtype=dtype)  # noqa: E731
    return [
        Poisson(t(0.0, 0.3, 6.0, 250.0)),
        NegativeBinomial(t(0.0, 0.3, 6.0, 250.0), t(1.0, 0.05, 3.0, 1e6)),
        ZeroInflatedNegativeBinomial(
            t(0.0, 0.3, 6.0, 250.0), t(1.0, 0.05, 3.0, 20.0), t(3, -1, 0, 30)
        ),
        NegativeBinomialMixture(
            t(0.0, 0.3, 6.0, 250.0),
            t(5.0, 40.0, 0.1, 1.0),
            t(1.0, 0.5, 3.0, 20.0),
            t(-2, 0, 1, 5),
            theta2=t(2.0, 0.2, 1e4, 7.0),
        ),
    ]


@pytest.mark.parametrize("dist", _all_dists(), ids=lambda d: type(d).__name__)
def test_pmf_sums_to_one(dist):
    support = torch.arange(8_000, dtype=F64).unsqueeze(-1)
    total = dist.log_prob(support).exp().sum(0)
    torch.testing.assert_close(total, torch.ones_like(total), rtol=0, atol=1e-9)
    # the pmf's own first two moments agree with `mean` and `variance`
    probs = dist.log_prob(support).exp()
    mean = (probs * support).sum(0)
    torch.testing.assert_close(mean, dist.mean, rtol=1e-8, atol=1e-9)
    torch.testing.assert_close(
        (probs * (support - mean) ** 2).sum(0), dist.variance, rtol=1e-7, atol=1e-9
    )


def test_mu_zero_is_point_mass_at_zero(seeded):
    for dtype in (F64, F32):
        d = NegativeBinomial(
            torch.zeros(3, dtype=dtype), torch.tensor([0.1, 1.0, 1e6], dtype=dtype)
        )
        assert torch.equal(d.log_prob(torch.zeros(3)), torch.zeros(3, dtype=dtype))
        lp = d.log_prob(torch.full((3,), 2.0))
        assert torch.isfinite(lp).all() and (lp < -50).all()
        assert (d.sample((100,)) == 0).all()
        assert (Poisson(torch.zeros(2, dtype=dtype)).sample((100,)) == 0).all()


# ----------------------------------------------------------------------------- sampling


def _check_moments(samples, mean, var, wrong_var=None):
    """Sample mean/variance within 5 standard errors; a wrong variance is >= 15 SE away."""
    n = samples.shape[0]
    m_hat = samples.mean(0)
    sq = (samples - m_hat) ** 2
    v_hat, v_se = sq.mean(0), sq.std(0) / n**0.5
    assert ((m_hat - mean).abs() <= 5 * (var / n).sqrt() + 1e-12).all(), (m_hat, mean)
    assert ((v_hat - var).abs() <= 5 * v_se + 1e-12).all(), (v_hat, var)
    if wrong_var is not None:
        assert ((v_hat - wrong_var).abs() >= 15 * v_se).all()


@pytest.mark.parametrize("dtype", [F64, F32])
def test_sample_moments(seeded, dtype):
    n = 200_000
    t = lambda *a: torch.tensor(a, dtype=dtype)  # noqa: E731
    mu, theta = t(0.5, 5.0, 40.0, 10.0), t(0.3, 2.0, 1e4, 0.5)
    d = NegativeBinomial(mu, theta)
    s = d.sample((n,))
    assert s.shape == (n, 4) and s.dtype == dtype and (s == s.round()).all() and (s >= 0).all()
    _check_moments(s.double(), d.mean.double(), d.variance.double())

    p = Poisson(mu)
    _check_moments(p.sample((n,)).double(), p.mean.double(), p.variance.double())

    z = ZeroInflatedNegativeBinomial(t(10.0, 3.0, 30.0), t(2.0, 50.0, 5.0), t(-0.8, 0.5, 1.5))
    pi, mu_z, th_z = z.zi_probs.double(), z.mu.double(), z.theta.double()
    wrong = (1 - pi) * mu_z * (1 + mu_z / th_z)  # forgets the pi * mu term
    _check_moments(z.sample((n,)).double(), z.mean.double(), z.variance.double(), wrong)

    m = NegativeBinomialMixture(t(2.0, 0.5), t(30.0, 8.0), t(5.0, 2.0), t(0.4, -1.0), t(20.0, 1.0))
    w = m.mixture_probs.double()
    v1 = m.mu1 + m.mu1**2 / m.theta1
    v2 = m.mu2 + m.mu2**2 / m.theta2
    wrong = (w * v1 + (1 - w) * v2).double()  # forgets the between-component variance
    _check_moments(m.sample((n,)).double(), m.mean.double(), m.variance.double(), wrong)


def test_sample_has_no_grad():
    mu = torch.tensor([2.0, 3.0], requires_grad=True)
    for d in (
        NegativeBinomial(mu, 1.0),
        Poisson(mu),
        ZeroInflatedNegativeBinomial(mu, 1.0, 0.0),
        NegativeBinomialMixture(mu, 2 * mu, 1.0, 0.0),
    ):
        assert not d.sample((3,)).requires_grad


# --------------------------------------------------------------------- shapes and dtypes


def test_broadcasting_shapes():
    mu, theta = torch.rand(5, 3) + 0.1, torch.rand(3) + 0.5
    dists = [
        NegativeBinomial(mu, theta),
        Poisson(mu),
        ZeroInflatedNegativeBinomial(mu, theta, torch.zeros(5, 1)),
        NegativeBinomialMixture(mu, mu * 3, theta, 0.5),
        NegativeBinomialMixture(mu[:1], mu, theta, torch.zeros(5, 3), theta2=2.0),
    ]
    counts = torch.randint(0, 10, (5, 3))
    for d in dists:
        assert d.batch_shape == (5, 3) and d.event_shape == ()
        assert d.log_prob(counts).shape == (5, 3)
        assert d.log_prob(counts[:, :1]).shape == (5, 3)
        assert d.log_prob(torch.randint(0, 10, (7, 1, 3))).shape == (7, 5, 3)
        assert d.sample().shape == (5, 3)
        assert d.sample((2, 4)).shape == (2, 4, 5, 3)
        assert d.mean.shape == (5, 3) and d.variance.shape == (5, 3)


def test_dtypes_and_python_numbers():
    assert NegativeBinomial(2.0, 1.0).batch_shape == ()
    assert NegativeBinomial(2.0, 1.0).log_prob(3).dtype == torch.get_default_dtype()
    d = NegativeBinomial(torch.tensor([2.0], dtype=F32), 0.5)  # numbers follow the tensor
    assert d.theta.dtype == F32 and d.log_prob(torch.tensor([3])).dtype == F32
    d = NegativeBinomial(torch.tensor([2.0], dtype=F32), torch.tensor([0.5], dtype=F64))
    assert d.mu.dtype == F64  # promoted
    assert Poisson(torch.tensor([1, 2])).mu.dtype == torch.get_default_dtype()
    assert ZeroInflatedNegativeBinomial(torch.ones(2, dtype=F64), 1, 0).mean.dtype == F64
    assert "NegativeBinomialMixture" in repr(NegativeBinomialMixture(1.0, 2.0, 1.0, 0.0))


@pytest.mark.parametrize("dist", _all_dists(), ids=lambda d: type(d).__name__)
def test_expand(dist):
    new = dist.expand((6, 4))
    assert type(new) is type(dist) and new.batch_shape == (6, 4)
    assert new._validate_args == dist._validate_args
    counts = torch.tensor([0.0, 1.0, 5.0, 300.0])
    torch.testing.assert_close(new.log_prob(counts), dist.log_prob(counts).expand(6, 4))
    torch.testing.assert_close(new.mean, dist.mean.expand(6, 4))
    torch.testing.assert_close(new.variance, dist.variance.expand(6, 4))
    assert new.sample((2,)).shape == (2, 6, 4)
    with pytest.raises(RuntimeError):
        dist.expand((3,))


# --------------------------------------------------------------------------- validation


def test_invalid_parameters_raise_with_clear_message():
    good = torch.ones(2)
    with pytest.raises(ValueError, match=r"parameter mu \(Tensor of shape \(2,\)\).*GreaterThanEq"):
        NegativeBinomial(torch.tensor([-1.0, 2.0]), good, validate_args=True)
    with pytest.raises(ValueError, match=r"parameter theta .*GreaterThan\(lower_bound=0"):
        NegativeBinomial(good, torch.tensor([1.0, 0.0]), validate_args=True)
    with pytest.raises(ValueError, match=r"parameter mu "):
        Poisson(torch.tensor([-0.1]), validate_args=True)
    with pytest.raises(ValueError, match=r"parameter zi_logits .*Real"):
        ZeroInflatedNegativeBinomial(
            good, good, torch.tensor([0.0, float("nan")]), validate_args=True
        )
    with pytest.raises(ValueError, match=r"parameter theta2 "):
        NegativeBinomialMixture(good, good, good, 0.0, theta2=-good, validate_args=True)
    with pytest.raises(ValueError, match=r"parameter mu2 "):
        NegativeBinomialMixture(good, -good, good, 0.0, validate_args=True)
    with pytest.raises(ValueError, match=r"mu \(shape \(5, 3\)\), theta \(shape \(4,\)\)"):
        NegativeBinomial(torch.ones(5, 3), torch.ones(4))
    # mu = 0 is allowed (point mass at zero); validation can be switched off
    NegativeBinomial(torch.zeros(2), good, validate_args=True)
    NegativeBinomial(-good, good, validate_args=False)


@pytest.mark.parametrize("dist", _all_dists(), ids=lambda d: type(d).__name__)
def test_invalid_values_raise(dist):
    dist = dist.expand(dist.batch_shape)
    dist._validate_args = True
    with pytest.raises(ValueError, match=r"within the support \(IntegerGreaterThan"):
        dist.log_prob(torch.tensor([0.0, 1.5, 2.0, 3.0]))
    with pytest.raises(ValueError, match=r"within the support"):
        dist.log_prob(torch.tensor([0, -1, 2, 3]))
    with pytest.raises(ValueError, match=r"not broadcastable"):
        dist.log_prob(torch.zeros(3))
    dist._validate_args = False
    assert dist.log_prob(torch.tensor([0.0, 1.5, 2.0, 3.0])).shape == (4,)


# ---------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("dtype", [F64, F32])
def test_gradients_are_finite_at_extremes(dtype):
    x, mu, theta, logit = _grid(
        [0, 1, 10_000], [0.0, 1e-6, 3.0, 1e4], [1e-3, 1.0, 1e6], [-60.0, 0.0, 60.0]
    )
    params = [_t(a, dtype).requires_grad_() for a in (mu, theta, logit)]
    mu_t, th_t, lg_t = params
    value = _t(x, dtype)
    dists = [
        NegativeBinomial(mu_t, th_t),
        Poisson(mu_t),
        ZeroInflatedNegativeBinomial(mu_t, th_t, lg_t),
        NegativeBinomialMixture(mu_t, mu_t.flip(0), th_t, lg_t, theta2=th_t.flip(0)),
    ]
    for d in dists:
        grads = torch.autograd.grad(d.log_prob(value).sum(), params, allow_unused=True)
        for g in grads:
            assert g is None or torch.isfinite(g).all()


def test_nb_gradients_match_analytic():
    x, mu, theta = _grid([0, 1, 7, 500], [1e-3, 2.0, 300.0], [0.05, 9.99, 10.0, 1e5])
    mu_t, th_t = _t(mu).requires_grad_(), _t(theta).requires_grad_()
    NegativeBinomial(mu_t, th_t).log_prob(_t(x)).sum().backward()
    d_mu = x / mu - (x + theta) / (theta + mu)
    d_theta = (
        special.digamma(x + theta)
        - special.digamma(theta)
        + np.log(theta / (theta + mu))
        + (mu - x) / (theta + mu)
    )
    np.testing.assert_allclose(mu_t.grad.numpy(), d_mu, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(th_t.grad.numpy(), d_theta, rtol=1e-6, atol=1e-9)


def test_gradcheck():
    x = torch.tensor([0.0, 2.0, 15.0])
    mu = torch.tensor([0.7, 4.0, 20.0], dtype=F64, requires_grad=True)
    theta = torch.tensor([0.5, 12.0, 3.0], dtype=F64, requires_grad=True)
    logit = torch.tensor([-1.0, 0.3, 2.0], dtype=F64, requires_grad=True)
    torch.autograd.gradcheck(
        lambda m, t, z: ZeroInflatedNegativeBinomial(m, t, z).log_prob(x), (mu, theta, logit)
    )
    torch.autograd.gradcheck(
        lambda m, t, z: NegativeBinomialMixture(m, 3 * m, t, z, theta2=t + 1).log_prob(x),
        (mu, theta, logit),
    )
