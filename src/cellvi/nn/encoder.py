"""Gaussian encoders: an MLP followed by mean and variance heads."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .layers import MLP, without_autocast

VAR_EPS = 1e-4  # floor on the posterior variance, keeps log-variances finite


class GaussianEncoder(nn.Module):
    """Maps inputs (and covariates) to a diagonal Gaussian ``q(z | x)``.

    Parameters
    ----------
    n_in, n_out
        Input width and latent dimension.
    n_hidden, n_layers, dropout_rate, use_batch_norm, use_layer_norm
        Shape and regularisation of the hidden MLP.
    n_cats, n_cont, inject_all_layers
        Covariates injected into the MLP (empty when covariates are not encoded).
    """

    def __init__(
        self,
        n_in: int,
        n_out: int,
        *,
        n_hidden: int = 128,
        n_layers: int = 1,
        n_cats: Sequence[int] = (),
        n_cont: int = 0,
        inject_all_layers: bool = True,
        dropout_rate: float = 0.1,
        use_batch_norm: bool = True,
        use_layer_norm: bool = False,
    ) -> None:
        super().__init__()
        self.body = MLP(
            n_in,
            n_hidden,
            n_layers=n_layers,
            n_cats=n_cats,
            n_cont=n_cont,
            inject_all_layers=inject_all_layers,
            dropout_rate=dropout_rate,
            use_batch_norm=use_batch_norm,
            use_layer_norm=use_layer_norm,
        )
        self.mean = nn.Linear(n_hidden, n_out)
        self.log_var = nn.Linear(n_hidden, n_out)

    def forward(
        self,
        x: torch.Tensor,
        cats: Sequence[torch.Tensor] = (),
        cont: torch.Tensor | None = None,
        *,
        rows: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior mean and variance (``rows``: as in :meth:`MLP.forward`)."""
        h = self.body(x, cats, cont, rows=rows)
        with without_autocast(h):  # n_hidden -> n_latent: too small to gain from low precision
            # both heads in one product: half the (narrow, overhead-bound) matrix products
            weight = torch.cat([self.mean.weight, self.log_var.weight])
            bias = torch.cat([self.mean.bias, self.log_var.bias])
            mean, log_var = F.linear(h.float(), weight, bias).split(self.mean.out_features, -1)
            return mean, torch.exp(log_var) + VAR_EPS
