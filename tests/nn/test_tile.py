"""``rows``: a first-layer product computed once per row stands for indexed copies of the input."""

import pytest
import torch

from cellvi.nn import GaussianEncoder
from cellvi.nn.layers import MLP


@pytest.mark.parametrize("train", [False, True])
def test_tiled_mlp_equals_repeated_input(train):
    torch.manual_seed(0)
    mlp = MLP(10, 32, n_layers=2, n_cats=[4], dropout_rate=0.0).train(train)
    x = torch.randn(6, 10, requires_grad=True)
    ys = torch.arange(4).repeat_interleave(6)
    tiled = mlp(x, [ys], rows=torch.arange(6).repeat(4))
    repeated = mlp(x.repeat(4, 1), [ys])
    torch.testing.assert_close(tiled, repeated)
    (g_tiled,) = torch.autograd.grad(tiled.square().sum(), x)
    (g_repeated,) = torch.autograd.grad(repeated.square().sum(), x)
    torch.testing.assert_close(g_tiled, g_repeated)


def test_gaussian_heads_are_the_mean_and_log_var_layers():
    torch.manual_seed(0)
    enc = GaussianEncoder(12, 3, n_hidden=16).eval()
    x = torch.randn(5, 12)
    mean, var = enc(x)
    h = enc.body(x)
    torch.testing.assert_close(mean, enc.mean(h))
    torch.testing.assert_close(var, torch.exp(enc.log_var(h)) + 1e-4)


def test_tiled_encoder_matches_repeated_rows():
    torch.manual_seed(1)
    enc = GaussianEncoder(8, 2, n_hidden=16, n_cats=[3]).eval()
    x = torch.randn(7, 8)
    ys = torch.arange(3).repeat_interleave(7)
    for a, b in zip(
        enc(x, [ys], rows=torch.arange(7).repeat(3)), enc(x.repeat(3, 1), [ys]), strict=True
    ):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("train", [False, True])
def test_rows_stand_for_indexed_input(train):
    """``rows``: any selection of input rows, repeated or left out, like ``x[rows]``."""
    torch.manual_seed(2)
    mlp = MLP(10, 32, n_layers=2, n_cats=[4], dropout_rate=0.0).train(train)
    x = torch.randn(6, 10, requires_grad=True)
    rows = torch.tensor([5, 0, 0, 3, 1, 5, 2, 2, 2])  # cell 4 left out, others repeated
    ys = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3, 0])
    indexed = mlp(x, [ys], rows=rows)
    gathered = mlp(x[rows], [ys])
    torch.testing.assert_close(indexed, gathered)
    (g_indexed,) = torch.autograd.grad(indexed.square().sum(), x)
    (g_gathered,) = torch.autograd.grad(gathered.square().sum(), x)
    torch.testing.assert_close(g_indexed, g_gathered)
    assert g_indexed[4].abs().sum() == 0
