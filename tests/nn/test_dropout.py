import pytest
import torch

import cellvi as cv
from cellvi.nn import dropout as dropout_module
from cellvi.nn.dropout import Dropout
from cellvi.utils.native import status as native_status


@pytest.fixture(autouse=True, params=["compiled", "torch"])
def implementation(request, monkeypatch):
    """Every test runs with the C kernel (when it can be built here) and without it."""
    if request.param == "compiled" and dropout_module._kernel() is None:
        pytest.skip(f"the C dropout kernel is not used here: {native_status()['dropout']}")
    monkeypatch.setattr(cv.settings, "_native_kernels", request.param == "compiled")
    return request.param


def test_keeps_the_expected_fraction_and_the_mean():
    torch.manual_seed(0)
    drop = Dropout(0.2).train()
    x = torch.ones(400, 1000)
    y = drop(x)
    kept = (y != 0).float().mean().item()
    # binomial sd of the fraction is 6e-4 here; the rounded p is 13107 / 65536
    assert kept == pytest.approx(1 - 13107 / 65536, abs=3e-3)
    assert y.mean().item() == pytest.approx(1.0, abs=5e-3)
    assert torch.unique(y).tolist() == pytest.approx([0.0, 65536 / (65536 - 13107)])


@pytest.mark.parametrize("p", [0.05, 0.1, 0.5, 0.9])
def test_each_rate_is_honoured(p):
    torch.manual_seed(1)
    y = Dropout(p).train()(torch.ones(200_000))
    assert (y == 0).float().mean().item() == pytest.approx(p, abs=4e-3)


def test_entries_are_dropped_independently():
    """Neighbouring entries share a 64-bit draw; their masks must still be uncorrelated."""
    torch.manual_seed(2)
    keep = (Dropout(0.5).train()(torch.ones(100_000, 4)) != 0).float()
    corr = torch.corrcoef(keep.T)
    off_diagonal = corr[~torch.eye(4, dtype=torch.bool)]
    assert off_diagonal.abs().max().item() < 0.02


def test_seeded_and_identity_in_eval():
    drop = Dropout(0.3).train()
    x = torch.randn(64, 32)
    torch.manual_seed(3)
    a = drop(x)
    torch.manual_seed(3)
    b = drop(x)
    assert torch.equal(a, b)
    assert not torch.equal(a, drop(x))
    assert drop.eval()(x) is x
    assert Dropout(0.0).train()(x) is x


def test_gradient_is_the_scaled_mask():
    torch.manual_seed(4)
    x = torch.randn(50, 40, requires_grad=True)
    y = Dropout(0.25).train()(x)
    y.sum().backward()
    mask = (y != 0).float()
    assert torch.allclose(x.grad, mask * (65536 / (65536 - 16384)))


def test_low_precision_input_keeps_its_dtype():
    torch.manual_seed(5)
    y = Dropout(0.2).train()(torch.ones(10, 10, dtype=torch.bfloat16))
    assert y.dtype == torch.bfloat16


@pytest.mark.parametrize("p", [-0.1, 1.0, 1.5])
def test_rate_outside_range_is_refused(p):
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        Dropout(p)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_uses_torch_dropout():
    torch.manual_seed(6)
    y = Dropout(0.2).train()(torch.ones(1000, 100, device="cuda"))
    assert y.device.type == "cuda"
    assert (y == 0).float().mean().item() == pytest.approx(0.2, abs=0.01)


def test_the_compiled_kernel_is_used_and_thread_count_does_not_matter(implementation):
    x = torch.randn(300, 257, requires_grad=True)  # not a multiple of 4 entries
    threads = torch.get_num_threads()
    try:
        outs = []
        for n in (1, 2):
            torch.set_num_threads(n)
            torch.manual_seed(7)
            outs.append(Dropout(0.2).train()(x))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(outs[0], outs[1])
    native = outs[0].grad_fn.name().startswith("_NativeDropout")
    assert native == (implementation == "compiled")
