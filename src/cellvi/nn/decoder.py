"""The scVI decoder: latent -> expression proportions, dispersion and zero-inflation logits."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .layers import MLP, without_autocast


class CountDecoder(nn.Module):
    """Decodes a latent vector into the parameters of a count distribution per gene.

    Parameters
    ----------
    n_latent, n_genes
        Input and output widths.
    n_hidden, n_layers, dropout_rate, use_batch_norm, use_layer_norm
        Shape and regularisation of the hidden MLP (no dropout on the decoder by default).
    n_cats, n_cont, inject_all_layers
        Covariates injected into the MLP.
    zero_inflation
        Add a head for zero-inflation logits.
    cell_dispersion
        Add a head for a per-cell, per-gene log-dispersion.
    """

    def __init__(
        self,
        n_latent: int,
        n_genes: int,
        *,
        n_hidden: int = 128,
        n_layers: int = 1,
        n_cats: Sequence[int] = (),
        n_cont: int = 0,
        inject_all_layers: bool = True,
        dropout_rate: float = 0.0,
        use_batch_norm: bool = True,
        use_layer_norm: bool = False,
        zero_inflation: bool = True,
        cell_dispersion: bool = False,
    ) -> None:
        super().__init__()
        self.body = MLP(
            n_latent,
            n_hidden,
            n_layers=n_layers,
            n_cats=n_cats,
            n_cont=n_cont,
            inject_all_layers=inject_all_layers,
            dropout_rate=dropout_rate,
            use_batch_norm=use_batch_norm,
            use_layer_norm=use_layer_norm,
        )
        self.scale_logits = nn.Linear(n_hidden, n_genes)
        self.zi_logits = nn.Linear(n_hidden, n_genes) if zero_inflation else None
        self.log_theta = nn.Linear(n_hidden, n_genes) if cell_dispersion else None

    def forward(
        self,
        z: torch.Tensor,
        log_library: torch.Tensor,
        cats: Sequence[torch.Tensor] = (),
        cont: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Expression logits (``softmax`` gives proportions), the library and optional heads."""
        with without_autocast(z):  # n_latent -> n_hidden: too small to gain from low precision
            h = self.body(z.float(), cats, cont)
        out = {"scale_logits": self.scale_logits(h), "log_library": log_library}
        if self.zi_logits is not None:
            out["zi_logits"] = self.zi_logits(h)
        if self.log_theta is not None:
            out["log_theta"] = self.log_theta(h)
        return out
