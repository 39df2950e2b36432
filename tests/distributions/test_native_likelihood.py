"""The NB / ZINB training likelihood: the torch implementation against an independent float64
reference, and the compiled kernel's plumbing (unsorted coordinates, NaN, the switch, the
fallback, the build cache). The kernel's numbers against the reference, with and without grad
mode, on two threads and for every toolchain, are checked in tests/native."""

from __future__ import annotations

import logging

import pytest
import torch
from tests.native.kernel_checks import close, nb_data, nb_reference, nb_sum_scales

import cellvi as cv
from cellvi.distributions import _native_likelihood as native
from cellvi.distributions._likelihood import (
    _NegBinomialLogLik,
    nb_log_likelihood,
    zinb_log_likelihood,
)
from cellvi.utils import native as build

needs_kernel = pytest.mark.skipif(
    not native.available(),
    reason="the NB kernel is switched off or not built here (cellvi.utils.native.status())",
)


def _data():
    return nb_data()


@pytest.mark.parametrize("zero_inflated", [True, False])
@pytest.mark.parametrize("per_entry", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_torch_implementation_matches_the_reference(monkeypatch, zero_inflated, per_entry, dtype):
    """The path that runs without the kernel (and for float64 always) against the textbook
    float64 formula; the kernel gets the same check for every toolchain in tests/native."""
    monkeypatch.setattr(cv.settings, "_native_kernels", False)
    x, logits, log_lib, theta, rho = nb_data(per_entry=per_entry)
    rho = rho if zero_inflated else None
    ref_leaves = [
        t.clone().requires_grad_() for t in (logits, log_lib, theta, rho) if t is not None
    ]
    ref = nb_reference(x, *ref_leaves[:3], rho if rho is None else ref_leaves[3])
    weights = torch.linspace(0.5, 2.0, len(ref), dtype=torch.float64)
    want = torch.autograd.grad((ref * weights).sum(), ref_leaves)
    scales = nb_sum_scales(x, *ref_leaves[:3], rho, weights)
    leaves = [t.detach().to(dtype).requires_grad_() for t in ref_leaves]
    lxf = torch.lgamma(x.to(dtype) + 1).sum(1)
    args = (x.to(dtype), *leaves[:3])
    if zero_inflated:
        out = zinb_log_likelihood(*args, leaves[3], log_x_factorial=lxf)
    else:
        out = nb_log_likelihood(*args, log_x_factorial=lxf)
    assert out.grad_fn.name().startswith(_NegBinomialLogLik.__name__)
    rtol = 2e-5 if dtype == torch.float32 else 1e-9
    close(out, ref.detach(), "log-likelihood", rtol=rtol)
    got = torch.autograd.grad((out * weights.to(dtype)).sum(), leaves)
    for name, g, w, sc in zip(("logits", "log library", "theta", "rho"), got, want, scales,
                              strict=False):  # fmt: skip
        close(g, w, f"d {name}", rtol=rtol, scale=sc)


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
def test_kernel_propagates_nan():
    x, logits, log_lib, theta, rho = (t.float() for t in _data())
    lxf = torch.lgamma(x + 1).sum(1)
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
