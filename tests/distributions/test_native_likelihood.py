"""The compiled NB / ZINB likelihood kernel gives the values and gradients of the torch
implementation, falls back to it cleanly, and is built once and cached."""

from __future__ import annotations

import logging

import pytest
import torch

import cellvi as cv
from cellvi.distributions import _native_likelihood as native
from cellvi.distributions._likelihood import (
    _NegBinomialLogLik,
    nb_log_likelihood,
    zinb_log_likelihood,
)
from cellvi.utils import native as build

needs_kernel = pytest.mark.skipif(
    not native.available(), reason="the C kernel could not be built here (no C compiler?)"
)


def _data(n=9, p=300, per_entry=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, p, generator=g, dtype=torch.float64) * 2
    logits[1, :5] = -200.0  # softmax underflows to 0 there
    log_lib = torch.rand(n, generator=g, dtype=torch.float64) * 4 + 4
    theta = torch.exp(torch.randn((n, p) if per_entry else (p,), generator=g, dtype=torch.float64))
    theta.view(-1)[:3] = torch.tensor([1e-3, 1e4, 50.0], dtype=torch.float64)
    rho = torch.randn(n, p, generator=g, dtype=torch.float64) * 3
    mu = torch.softmax(logits, -1) * torch.exp(log_lib).unsqueeze(-1)
    x = torch.poisson(mu, generator=g)
    x[0] = 0.0  # an all-zero cell
    x[1, :5] = 0.0
    x[2, 7], x[3, 0], x[3, 1] = 5000.0, 3.0, 2.0  # a large count, counts at extreme theta
    return x, logits, log_lib, theta, rho


def _both(x, logits, log_lib, theta, rho):
    """Value and gradients from the kernel (float32) and from torch (float64)."""
    results = []
    for dtype in (torch.float32, torch.float64):
        leaves = [t.to(dtype).requires_grad_() for t in (logits, log_lib, theta)]
        if rho is not None:
            leaves.append(rho.to(dtype).requires_grad_())
        lx, ll, th = leaves[:3]
        lxf = torch.lgamma(x.to(dtype) + 1).sum(1)
        if rho is None:
            out = nb_log_likelihood(x.to(dtype), lx, ll, th, log_x_factorial=lxf)
        else:
            out = zinb_log_likelihood(x.to(dtype), lx, ll, th, leaves[3], log_x_factorial=lxf)
        weights = torch.linspace(0.5, 2.0, len(out), dtype=dtype)  # uneven upstream gradient
        (out * weights).sum().backward()
        results.append((out.detach(), *(t.grad for t in leaves)))
        if dtype == torch.float32:
            assert out.grad_fn.name().startswith("_NativeNegBinomialLogLik")
    return results


@needs_kernel
@pytest.mark.parametrize("zero_inflated", [True, False])
@pytest.mark.parametrize("per_entry", [False, True])
def test_kernel_matches_torch_values_and_gradients(zero_inflated, per_entry):
    x, logits, log_lib, theta, rho = _data(per_entry=per_entry)
    kernel, reference = _both(x, logits, log_lib, theta, rho if zero_inflated else None)
    names = ["log-likelihood", "d logits", "d log library", "d theta", "d rho"]
    for name, a, b in zip(names, kernel, reference, strict=False):
        scale = b.abs().max().item()
        torch.testing.assert_close(
            a.double(), b, rtol=2e-5, atol=2e-5 * max(scale, 1.0), msg=lambda m, n=name: f"{n}: {m}"
        )


@needs_kernel
def test_kernel_without_gradients_and_with_unsorted_coordinates():
    x, logits, log_lib, theta, rho = (t.float() for t in _data())
    lxf = torch.lgamma(x + 1).sum(1)
    rows, cols = torch.nonzero(x, as_tuple=True)
    order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(1))
    sorted_out = zinb_log_likelihood(None, logits, log_lib, theta, rho, log_x_factorial=lxf,
                                     nz_rows=rows, nz_cols=cols, nz_values=x[rows, cols])  # fmt: skip
    with torch.no_grad():
        shuffled = zinb_log_likelihood(
            None, logits, log_lib, theta, rho, log_x_factorial=lxf,
            nz_rows=rows[order], nz_cols=cols[order], nz_values=x[rows, cols][order],
        )  # fmt: skip
    torch.testing.assert_close(shuffled, sorted_out, rtol=1e-6, atol=1e-4)
    assert sorted_out.grad_fn is None  # no input needed a gradient: none was computed


@needs_kernel
def test_kernel_propagates_nan_and_does_not_depend_on_threads():
    x, logits, log_lib, theta, rho = (t.float() for t in _data())
    lxf = torch.lgamma(x + 1).sum(1)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = zinb_log_likelihood(x, logits, log_lib, theta, rho, log_x_factorial=lxf)
        torch.set_num_threads(2)
        two = zinb_log_likelihood(x, logits, log_lib, theta, rho, log_x_factorial=lxf)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, two)
    logits[4, 10] = float("nan")
    out = zinb_log_likelihood(x, logits, log_lib, theta, rho, log_x_factorial=lxf)
    assert torch.isnan(out[4]) and torch.isfinite(out[torch.arange(len(out)) != 4]).all()


def test_setting_off_uses_the_torch_implementation(monkeypatch):
    x, logits, log_lib, theta, rho = (t.float() for t in _data())
    logits.requires_grad_()
    monkeypatch.setattr(cv.settings, "native_kernels", False)
    out = zinb_log_likelihood(x, logits, log_lib, theta, rho,
                              log_x_factorial=torch.lgamma(x + 1).sum(1))  # fmt: skip
    assert out.grad_fn.name().startswith(_NegBinomialLogLik.__name__)


def test_missing_compiler_falls_back_with_a_logged_reason(monkeypatch, tmp_path, caplog):
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    monkeypatch.setenv("CELLVI_CACHE_DIR", str(tmp_path / "cache"))
    source = tmp_path / "k.c"
    source.write_text("int f(void) { return 1; }\n")
    with caplog.at_level(logging.INFO, logger="cellvi"):
        assert build.load_kernel.__wrapped__(source) is None
    assert "no C compiler found" in caplog.text and "torch implementation" in caplog.text
    # the likelihood then takes the torch path
    monkeypatch.setattr(native, "_kernel", lambda: None)
    x, logits, log_lib, theta, rho = (t.float() for t in _data())
    logits.requires_grad_()
    out = nb_log_likelihood(x, logits, log_lib, theta, log_x_factorial=torch.lgamma(x + 1).sum(1))
    assert out.grad_fn.name().startswith(_NegBinomialLogLik.__name__)


@pytest.fixture
def compiler(monkeypatch, tmp_path):
    """The C compiler, with kernels cached under ``tmp_path``; skips when there is none."""
    found = build.find_compiler()
    if found is None:
        pytest.skip("no C compiler on this machine")
    monkeypatch.setenv("CELLVI_CACHE_DIR", str(tmp_path))
    return found


def test_compile_errors_are_reported(compiler, tmp_path, caplog):
    source = tmp_path / "broken.c"
    source.write_text("int f(void) { return }\n")
    with caplog.at_level(logging.INFO, logger="cellvi"):
        assert build.load_kernel.__wrapped__(source) is None
    assert "broken.c" in caplog.text and "compile error" in caplog.text
    assert not [p for p in (tmp_path / "kernels").iterdir() if p.suffix == ".so"]


def test_kernels_are_compiled_once_and_keyed_by_their_source(compiler, tmp_path):
    source = tmp_path / "k.c"
    source.write_text("int answer(void) { return 41; }\n")
    flags = build.FLAG_SETS[-1]
    first = build.compile_kernel(source, compiler, flags)
    stamp = first.stat().st_mtime_ns
    assert build.compile_kernel(source, compiler, flags) == first
    assert first.stat().st_mtime_ns == stamp  # reused, not rebuilt
    source.write_text("int answer(void) { return 42; }\n")
    second = build.compile_kernel(source, compiler, flags)
    assert second != first
    import ctypes

    assert ctypes.CDLL(str(second)).answer() == 42
