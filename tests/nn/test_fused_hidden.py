import copy

import pytest
import torch
from tests.native.kernel_checks import hidden_mask_replay
from torch import nn

import cellvi as cv
from cellvi.nn import fused_hidden
from cellvi.nn.dropout import Dropout
from cellvi.nn.layers import MLP

pytestmark = pytest.mark.skipif(
    fused_hidden._function("cellvi_hidden_forward", fused_hidden._FORWARD_ARGS) is None,
    reason="the hidden-layer kernel is switched off or not built here (cellvi.utils.native.status())",
)


@pytest.fixture(autouse=True)
def native_on(monkeypatch):
    monkeypatch.setattr(cv.settings, "_native_kernels", True)


def _norm(d, seed=0):
    torch.manual_seed(seed)
    norm = nn.BatchNorm1d(d, momentum=0.01, eps=1e-3)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-0.5, 0.5)
        norm.running_mean.uniform_(-1, 1)
        norm.running_var.uniform_(0.5, 2)
    return norm


def _next_seed(torch_seed: int) -> int:
    """The seed the kernel will draw from torch's generator after ``manual_seed(torch_seed)``."""
    torch.manual_seed(torch_seed)
    return int(torch.empty((), dtype=torch.int64).random_())


def _reference(a, tables, codes, weight, bias, eps, keep, scale):
    """The unfused computation in float64 with a given keep mask."""
    v = a.double()
    for table, code in zip(tables, codes, strict=True):
        v = v + table.double()[code]
    mean, var = v.mean(0), v.var(0, unbiased=False)
    y = (v - mean) / torch.sqrt(var + eps) * weight.double() + bias.double()
    return torch.relu(y) * keep.double() * scale, v


@pytest.mark.parametrize("n_tables", [0, 1, 2])
@pytest.mark.parametrize(("n", "d"), [(64, 48), (7, 37), (2, 5), (300, 256)])
@pytest.mark.parametrize("p", [0.0, 0.2])
def test_matches_the_unfused_layer(n_tables, n, d, p):
    torch.manual_seed(1)
    a = (torch.randn(n, d) * 3 + 1).requires_grad_()
    sizes = [3, 5][:n_tables]
    tables = [torch.randn(k, d, requires_grad=True) for k in sizes]
    codes = [torch.randint(0, k, (n,)) for k in sizes]
    norm, dropout = _norm(d), Dropout(p) if p else nn.Identity()
    reference_norm = copy.deepcopy(norm)
    threshold, scale = fused_hidden._dropout_setting(dropout)
    keep = fused_hidden.dropout_mask(n, d, _next_seed(7), threshold)
    torch.manual_seed(7)
    out = fused_hidden.hidden_step(a, tables, codes, norm, dropout)
    ref, v = _reference(
        a, tables, codes, norm.weight, norm.bias, norm.eps, keep, scale
    )  # fmt: skip
    assert out.dtype == torch.float32
    assert torch.allclose(out.double(), ref, rtol=1e-5, atol=1e-5)
    # running statistics as BatchNorm1d updates them, from the same batch
    reference_norm(v.detach().float())
    for name in ("running_mean", "running_var"):
        assert torch.allclose(getattr(norm, name), getattr(reference_norm, name), atol=1e-6)
    assert int(norm.num_batches_tracked) == int(reference_norm.num_batches_tracked) == 1

    upstream = torch.randn(n, d)
    inputs = [a, norm.weight, norm.bias, *tables]
    got = torch.autograd.grad(out, inputs, upstream)
    a64 = a.detach().double().requires_grad_()
    params64 = [t.detach().double().requires_grad_() for t in (norm.weight, norm.bias, *tables)]
    ref64, _ = _reference(a64, params64[2:], codes, *params64[:2], norm.eps, keep, scale)
    want = torch.autograd.grad(ref64, [a64, *params64], upstream.double())
    for g, w in zip(got, want, strict=True):
        assert torch.allclose(g.double(), w, rtol=1e-4, atol=1e-4 * (1 + w.abs().max().item()))


def test_frozen_tables_get_no_gradient_and_the_rest_still_does():
    # a frozen covariate table with a training norm (e.g. query mapping): the kernel must not
    # write a table gradient it was given no memory for (this crashed the process before)
    torch.manual_seed(2)
    n, d = 40, 24
    a = torch.randn(n, d, requires_grad=True)
    table, code = torch.randn(6, d), torch.randint(0, 6, (n,))
    norm = _norm(d)
    out = fused_hidden.hidden_step(a, [table], [code], norm, nn.Identity())
    upstream = torch.randn(n, d)
    got = torch.autograd.grad(out, [a, norm.weight, norm.bias], upstream)
    a64 = a.detach().double().requires_grad_()
    w64, b64 = (t.detach().double().requires_grad_() for t in (norm.weight, norm.bias))
    ref, _ = _reference(a64, [table], [code], w64, b64, norm.eps, torch.ones(n, d), 1.0)
    want = torch.autograd.grad(ref, [a64, w64, b64], upstream.double())
    for g, w in zip(got, want, strict=True):
        assert torch.allclose(g.double(), w, rtol=1e-4, atol=1e-4 * (1 + w.abs().max().item()))


def test_mlp_gives_the_torch_modules_results_in_training_and_eval():
    torch.manual_seed(2)
    fused = MLP(30, 40, n_layers=2, n_cats=[3, 1, 4], dropout_rate=0.0).train()
    plain = copy.deepcopy(fused)
    x, cats = torch.randn(50, 30), [torch.randint(0, k, (50,)) for k in (3, 1, 4)]
    out = fused(x, cats)
    out.square().sum().backward()
    cv.settings.native_kernels = False
    ref = plain(x, cats)
    ref.square().sum().backward()
    assert torch.allclose(out, ref, atol=1e-5)
    for (name, p), q in zip(fused.named_parameters(), plain.parameters(), strict=True):
        assert torch.allclose(p.grad, q.grad, rtol=1e-4, atol=1e-4), name
    for b, c in zip(fused.buffers(), plain.buffers(), strict=True):
        assert torch.allclose(b.float(), c.float(), atol=1e-6)
    fused.eval(), plain.eval()
    cv.settings.native_kernels = True
    assert torch.allclose(fused(x, cats), plain(x, cats), atol=1e-5)


class _ReplayedDropout(nn.Module):
    """Dropout with given keep masks, one per call, in order: the torch layers with the masks
    the kernel drew."""

    def __init__(self, masks, scale):
        super().__init__()
        self.masks, self.scale = list(masks), scale

    def forward(self, h):
        return h * self.masks.pop(0).to(h.dtype) * self.scale


def test_mlp_with_dropout_gives_the_torch_modules_results_with_the_kernels_masks():
    torch.manual_seed(2)
    n, d, p = 64, 40, 0.2
    fused = MLP(30, d, n_layers=2, n_cats=[3, 4], dropout_rate=p).train()
    plain = copy.deepcopy(fused)
    x, cats = torch.randn(n, 30), [torch.randint(0, k, (n,)) for k in (3, 4)]
    torch.manual_seed(8)
    out = fused(x, cats)
    assert out.grad_fn.name().startswith("_HiddenStep")
    out.square().sum().backward()
    # each layer draws one seed from torch's generator; its mask replayed from the definition
    torch.manual_seed(8)
    seeds = [int(torch.empty((), dtype=torch.int64).random_()) for _ in range(2)]
    threshold, scale = fused.dropout.keep_threshold, fused.dropout.scale
    masks = [hidden_mask_replay(n, d, seed, threshold) for seed in seeds]
    dropped = 1 - torch.stack(masks).float().mean().item()
    assert dropped == pytest.approx(p, abs=0.025)  # 5120 entries: sd 0.0056
    assert not torch.equal(masks[0], masks[1])  # a fresh mask per layer
    assert (out[~masks[1]] == 0).all()  # dropped entries are exactly 0
    plain.dropout = _ReplayedDropout(masks, scale)
    cv.settings.native_kernels = False
    ref = plain(x, cats)
    assert not ref.grad_fn.name().startswith("_HiddenStep")
    ref.square().sum().backward()
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    for (name, a), b in zip(fused.named_parameters(), plain.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-4, msg=name)
    for a, b in zip(fused.buffers(), plain.buffers(), strict=True):
        torch.testing.assert_close(a.float(), b.float(), rtol=1e-5, atol=1e-6)


def test_used_only_where_it_applies():
    h, norm, dropout = torch.randn(8, 4), _norm(4), Dropout(0.1)
    assert fused_hidden.applies(h, norm, dropout)
    assert fused_hidden.applies(h.bfloat16(), norm, dropout)
    assert not fused_hidden.applies(h.double(), norm, dropout)
    assert not fused_hidden.applies(h[:1], norm, dropout)  # BatchNorm1d refuses one cell
    assert not fused_hidden.applies(h, nn.LayerNorm(4), dropout)
    assert not fused_hidden.applies(h, copy.deepcopy(norm).eval(), dropout)
    assert not fused_hidden.applies(h, norm, copy.deepcopy(dropout).eval())
    assert not fused_hidden.applies(h, nn.BatchNorm1d(4, momentum=None), dropout)
    hooked = copy.deepcopy(norm)
    hooked.register_forward_pre_hook(lambda module, args: None)  # must still run
    assert not fused_hidden.applies(h, hooked, dropout)
    cv.settings.native_kernels = False
    assert not fused_hidden.applies(h, norm, dropout)


def test_low_precision_input_gets_a_low_precision_gradient():
    torch.manual_seed(3)
    a = torch.randn(16, 32, dtype=torch.bfloat16, requires_grad=True)
    out = fused_hidden.hidden_step(a, [], [], _norm(32), Dropout(0.2))
    assert out.dtype == torch.float32
    out.sum().backward()
    assert a.grad.dtype == torch.bfloat16


def test_dropout_mask_rate_independence_and_seeding():
    n, d = 2000, 96
    dropout = Dropout(0.3)
    keep = fused_hidden.dropout_mask(n, d, 12345, dropout.keep_threshold).float()
    assert keep.mean().item() == pytest.approx(1 - 0.3, abs=5e-3)
    # neighbouring columns and rows uncorrelated
    assert torch.corrcoef(keep[:, :8].T)[~torch.eye(8, dtype=torch.bool)].abs().max() < 0.06
    assert torch.corrcoef(keep[:8])[~torch.eye(8, dtype=torch.bool)].abs().max() < 0.3
    rows = keep[:-1].flatten(), keep[1:].flatten()
    assert torch.corrcoef(torch.stack(rows))[0, 1].abs() < 0.01
    # the layer draws its seed from torch's generator
    a, norm = torch.randn(40, 24), _norm(24)
    torch.manual_seed(4)
    first = fused_hidden.hidden_step(a, [], [], norm, dropout)
    torch.manual_seed(4)
    assert torch.equal(first, fused_hidden.hidden_step(a, [], [], norm, dropout))
    assert not torch.equal(first, fused_hidden.hidden_step(a, [], [], norm, dropout))


def test_nan_propagates():
    a = torch.randn(10, 20)
    a[3, 4] = float("nan")
    torch.manual_seed(7)
    out = fused_hidden.hidden_step(a, [], [], _norm(20), Dropout(0.5))
    assert torch.isnan(out[:, 4]).all()  # the column's statistics are NaN, dropped or not
    assert not torch.isnan(out[:, 5]).any()


def test_one_cell_is_refused_like_batchnorm_does():
    with pytest.raises(ValueError, match="more than one cell"):
        fused_hidden.hidden_step(torch.randn(1, 8), [], [], _norm(8), Dropout(0.1))


def test_code_outside_its_table_is_an_error_and_changes_nothing():
    norm = _norm(8)
    before = copy.deepcopy(norm.state_dict())
    codes = torch.tensor([0, 1, 2, 1])
    with pytest.raises(IndexError, match="outside its embedding table"):
        fused_hidden.hidden_step(
            torch.randn(4, 8), [torch.randn(2, 8)], [codes], norm, Dropout(0.1)
        )
    with pytest.raises(IndexError, match="outside its embedding table"):
        fused_hidden.hidden_step(
            torch.randn(4, 8), [torch.randn(3, 8)], [-codes], norm, Dropout(0.1)
        )
    for name, value in norm.state_dict().items():
        assert torch.equal(value, before[name]), name
