"""The compiled protein-mixture likelihood gives the values and gradients of the torch version."""

from __future__ import annotations

import pytest
import torch

import cellvi as cv
from cellvi.distributions import _native_likelihood as native
from cellvi.distributions._mixture_likelihood import nb_mixture_log_likelihood
from cellvi.utils.native import status as native_status

pytestmark = pytest.mark.skipif(
    native._mixture_kernel() is None,
    reason=f"the C likelihood kernel is not used here: {native_status()['nb_likelihood']}",
)


def _data(n=40, p=11, per_entry=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.poisson(torch.full((n, p), 30.0), generator=g)
    y[0] = 0.0  # an all-zero cell
    y[1, 0] = 5000.0
    log_back = torch.randn(n, p, generator=g) * 2
    log_fore = log_back + torch.rand(n, p, generator=g) * 4
    log_fore[2, 1] = log_back[2, 1] + 40.0  # far apart components
    shape = (n, p) if per_entry else (p,)
    theta = torch.rand(shape, generator=g) * 20 + 1e-3
    theta.view(-1)[0] = 1e4
    rho = torch.randn(n, p, generator=g) * 4
    rho[3, 2] = 60.0  # sure background
    mask = (torch.rand(n, p, generator=g) > 0.2).float()
    return y, log_back, log_fore, theta, rho, mask


@pytest.fixture(autouse=True)
def native_on(monkeypatch):
    monkeypatch.setattr(cv.settings, "_native_kernels", True)


@pytest.mark.parametrize("per_entry", [False, True])
@pytest.mark.parametrize("masked", [True, False])
def test_values_and_gradients_match_float64_torch(per_entry, masked):
    y, *params, mask = _data(per_entry=per_entry)
    mask = mask if masked else None
    params = [t.requires_grad_() for t in params]
    out = nb_mixture_log_likelihood(y, *params, mask)
    assert out.grad_fn.name().startswith("_NativeMixtureLogLik")
    upstream = torch.randn(len(y))
    got = torch.autograd.grad(out, params, upstream)

    cv.settings.native_kernels = False
    params64 = [t.detach().double().requires_grad_() for t in params]
    mask64 = mask.double() if masked else None
    ref = nb_mixture_log_likelihood(y.double(), *params64, mask64)
    assert ref.grad_fn is not None and not ref.grad_fn.name().startswith("_Native")
    want = torch.autograd.grad(ref, params64, upstream.double())
    assert torch.allclose(out.double(), ref, rtol=1e-6, atol=1e-3)
    for name, g, w in zip(("log_back", "log_fore", "theta", "rho"), got, want, strict=True):
        assert g.shape == w.shape, name
        scale = 1 + w.abs().max().item()
        assert torch.allclose(g.double(), w, rtol=1e-4, atol=1e-5 * scale), name


def test_without_gradients_and_masked_entries_ignored():
    y, *params, mask = _data()
    with torch.no_grad():
        out = nb_mixture_log_likelihood(y, *params, mask)
        # a masked entry may hold anything finite
        params[0][mask == 0] = 50.0
        assert torch.allclose(nb_mixture_log_likelihood(y, *params, mask), out)


def test_propagates_nan_and_does_not_depend_on_threads(monkeypatch):
    y, *params, mask = _data(n=3000, p=14)
    monkeypatch.setattr(native, "_SERIAL_ENTRIES", 0)  # every thread torch has
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = nb_mixture_log_likelihood(y, *params, mask)
        torch.set_num_threads(2)
        two = nb_mixture_log_likelihood(y, *params, mask)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, two)
    params[3][5, 0] = float("nan")
    out = nb_mixture_log_likelihood(y, *params, None)
    assert torch.isnan(out[5]) and torch.isfinite(out[torch.arange(len(out)) != 5]).all()


def test_other_dtypes_and_broadcast_shapes_use_torch():
    y, *params, mask = _data()
    out = nb_mixture_log_likelihood(y.double(), *(t.double() for t in params), mask.double())
    assert out.dtype == torch.float64
    # a theta of shape (1, p) broadcasts in torch; the kernel takes only (p,) or (n, p)
    theta = params[2].view(1, -1).requires_grad_()
    out = nb_mixture_log_likelihood(y, params[0], params[1], theta, params[3], mask)
    assert not out.grad_fn.name().startswith("_Native")
