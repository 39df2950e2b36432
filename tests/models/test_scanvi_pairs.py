"""The fused kernel of scANVI's per-(cell, class) networks against the module path, and where
each is used. (tests/native/kernel_checks.py checks the kernel against float64 formulas.)"""

import copy

import pytest
import torch

import cellvi as cv
from cellvi.models import _scanvi_pairs
from cellvi.models.scanvi import SCANVIModule
from cellvi.nn import fused_hidden

pytestmark = pytest.mark.skipif(
    _scanvi_pairs._function("cellvi_scanvi_pairs_forward", _scanvi_pairs._FORWARD_ARGS) is None,
    reason="the scANVI pairs kernel is switched off or not built here (cellvi.utils.native.status())",
)


@pytest.fixture(autouse=True)
def native_on(monkeypatch):
    monkeypatch.setattr(cv.settings, "_native_kernels", True)


def _module(**kwargs) -> SCANVIModule:
    torch.manual_seed(0)
    return SCANVIModule(30, unlabeled_code=4, n_labels=5, **kwargs).train()


def _pairs(module, n=40, n_labelled=9):
    classes = torch.full((n,), -1)
    classes[:n_labelled] = torch.arange(n_labelled) % module.n_classes
    return module._class_pairs(classes)[2:]


def _run(module, z1, cells, ys, *, fused: bool, monkeypatch):
    """Values, gradients (z1 and every parameter), buffers and the generator's next draw."""
    module = copy.deepcopy(module)
    z1 = z1.detach().clone().requires_grad_()
    with monkeypatch.context() as mp:
        if not fused:
            mp.setattr(_scanvi_pairs, "applies", lambda *args: False)
        torch.manual_seed(5)
        log_p, kl = module._pair_terms(z1, cells, ys)
        weights = torch.linspace(-1, 1, log_p.numel())
        (log_p * weights + kl * weights.flip(0)).sum().backward()
        after = torch.rand(4)
    grads = {name: p.grad for name, p in module.named_parameters() if p.grad is not None}
    return log_p.detach(), kl.detach(), z1.grad, grads, dict(module.named_buffers()), after


@pytest.mark.parametrize("n_hidden, n_latent", [(128, 10), (40, 6)])
def test_fused_networks_give_the_module_paths_values_and_gradients(n_hidden, n_latent, monkeypatch):  # fmt: skip
    module = _module(n_hidden=n_hidden, n_latent=n_latent)
    cells, ys = _pairs(module)
    z1 = torch.randn(40, n_latent) * 1.5
    assert _scanvi_pairs.applies(module.z2_encoder, module.z1_decoder, z1, cells.numel())
    fused = _run(module, z1, cells, ys, fused=True, monkeypatch=monkeypatch)
    plain = _run(module, z1, cells, ys, fused=False, monkeypatch=monkeypatch)
    torch.testing.assert_close(fused[0], plain[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fused[1], plain[1], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fused[2], plain[2], rtol=1e-4, atol=1e-5)
    assert fused[3].keys() == plain[3].keys()
    assert len(fused[3]) == 18  # both networks' parameters, every one
    for name in plain[3]:
        torch.testing.assert_close(fused[3][name], plain[3][name], rtol=1e-4, atol=1e-5, msg=name)
    for name, value in plain[4].items():
        torch.testing.assert_close(fused[4][name], value, rtol=1e-5, atol=1e-6, msg=name)
    # the same draws from torch's generator, in the same number
    assert torch.equal(fused[5], plain[5])


def test_training_scanvi_goes_through_the_kernel(monkeypatch):
    module = _module()
    calls = []
    real = _scanvi_pairs.pair_terms
    monkeypatch.setattr(_scanvi_pairs, "pair_terms", lambda *a: calls.append(1) or real(*a))
    z1 = torch.randn(40, 10, requires_grad=True)
    value = module.latent_kl(z1, z1, torch.ones(40, 10), torch.full((40,), -1)).mean()
    value.backward()
    assert calls and torch.isfinite(z1.grad).all()
    # evaluation (and the importance-sampled prior) stays on the module path
    calls.clear()
    module.eval()
    with torch.no_grad():
        module.latent_kl(z1, z1, torch.ones(40, 10), torch.full((40,), -1))
        module.log_prior_z1(z1)
    assert not calls


@pytest.mark.parametrize(
    "change",
    [
        "eval",
        "layer norm",
        "two layers",
        "hook",
        "too many pairs for the threads",
        "kernels off",
        "dropout off",
    ],
)
def test_module_path_where_the_kernel_does_not_apply(change, monkeypatch):
    kwargs = {"layer norm": {"use_batch_norm": "none", "use_layer_norm": "both"},
              "two layers": {"n_layers": 2}}.get(change, {})  # fmt: skip
    module = _module(**kwargs)
    cells, ys = _pairs(module)
    z1 = torch.randn(40, 10)
    if change == "eval":
        module.eval()
    elif change == "hook":
        module.z1_decoder.body.norms[0].register_forward_hook(lambda *a: None)
    elif change == "too many pairs for the threads":
        monkeypatch.setattr(fused_hidden, "SERIAL_ENTRIES", cells.numel() * 128 - 1)
        monkeypatch.setattr(torch, "get_num_threads", lambda: _scanvi_pairs.MAX_CHUNKS + 1)
    elif change == "kernels off":
        monkeypatch.setattr(cv.settings, "_native_kernels", False)
    elif change == "dropout off":
        module.z2_encoder.body.dropout.eval()
    assert not _scanvi_pairs.applies(module.z2_encoder, module.z1_decoder, z1, cells.numel())
    monkeypatch.setattr(_scanvi_pairs, "pair_terms", lambda *a: pytest.fail("kernel used"))
    log_p, kl = module._pair_terms(z1.requires_grad_(), cells, ys)
    assert torch.isfinite(log_p).all() and torch.isfinite(kl).all()


def test_a_replaced_part_is_looked_at_again():
    module = _module()
    z1 = torch.randn(40, 10)
    assert _scanvi_pairs.applies(module.z2_encoder, module.z1_decoder, z1, 100)
    module.z2_encoder.body.norms[0] = torch.nn.LayerNorm(128)
    assert not _scanvi_pairs.applies(module.z2_encoder, module.z1_decoder, z1, 100)


def test_pair_outside_the_cells_is_an_error_and_changes_nothing():
    module = _module()
    before = copy.deepcopy(module.state_dict())
    z1 = torch.randn(40, 10)
    cells, ys = _pairs(module)
    cells = cells.clone()
    cells[3] = 40

    def draw():
        return torch.randn(cells.numel(), 10)

    with pytest.raises(IndexError, match="outside z1"):
        _scanvi_pairs.pair_terms(module.z2_encoder, module.z1_decoder, z1, cells, ys, draw)
    for name, value in module.state_dict().items():
        assert torch.equal(value, before[name]), name


def test_nan_in_z1_gives_nan_terms_not_a_crash():
    module = _module()
    cells, ys = _pairs(module)
    z1 = torch.randn(40, 10)
    z1[12, 3] = float("nan")
    log_p, kl = module._pair_terms(z1, cells, ys)
    assert torch.isnan(log_p).any() and torch.isnan(kl).any()


@pytest.mark.parametrize("n_cells", [40, 3])
def test_results_do_not_depend_on_the_thread_count(n_cells, monkeypatch):
    # 133 pairs: the kernel's eight chunks of rows; 6 pairs: one chunk, shorter than a block
    module = _module()
    cells, ys = _pairs(module, n=n_cells, n_labelled=min(9, n_cells - 1))
    z1 = torch.randn(n_cells, 10) * 1.5
    runs = []
    for threads in (1, 2, 3):
        monkeypatch.setattr(_scanvi_pairs, "_threads", lambda *args, t=threads: t)
        runs.append(_run(module, z1, cells, ys, fused=True, monkeypatch=monkeypatch))
    first = runs[0]
    for other in runs[1:]:
        for mine, theirs in zip(first[:3], other[:3], strict=True):
            assert torch.equal(mine, theirs)
        for part in (3, 4):
            for name, value in first[part].items():
                assert torch.equal(value, other[part][name]), name


def test_many_pairs_take_the_kernel_when_its_chunks_cover_the_threads(monkeypatch):
    module = _module()
    cells, _ = _pairs(module)
    z1 = torch.randn(40, 10)
    monkeypatch.setattr(fused_hidden, "SERIAL_ENTRIES", cells.numel() * 128 - 1)
    monkeypatch.setattr(torch, "get_num_threads", lambda: _scanvi_pairs.MAX_CHUNKS)
    assert _scanvi_pairs.applies(module.z2_encoder, module.z1_decoder, z1, cells.numel())


def test_max_chunks_is_the_kernels():
    source = _scanvi_pairs._SOURCE.read_text()
    assert f"#define NCH {_scanvi_pairs.MAX_CHUNKS} " in source
