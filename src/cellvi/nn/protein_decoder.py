"""The protein decoder of an RNA + protein model: latent -> background, foreground and mixing
parameters."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .decoder import CountDecoder
from .layers import MLP, without_autocast

STD_EPS = 1e-4  # floor on the background's posterior scale


class ProteinDecoder(nn.Module):
    """Decodes a latent vector into the protein background/foreground mixture of each cell.

    Three small MLPs (background, foreground, mixing) read the latent and covariates:

    - ``back_mean``, ``back_std``: the Gaussian posterior of the log background mean;
    - ``log_fore_ratio``: ``log(foreground / background) > 0``, i.e. the foreground mean is
      ``background * (1 + softplus(h))``, always above the background;
    - ``background_logits``: logit of the probability that a count is background.

    Parameters
    ----------
    n_latent, n_proteins
        Input and output widths.
    n_hidden, n_layers, dropout_rate, use_batch_norm, use_layer_norm
        Shape and regularisation of each MLP.
    n_cats, n_cont, inject_all_layers
        Covariates injected into the MLPs.
    """

    def __init__(
        self,
        n_latent: int,
        n_proteins: int,
        *,
        n_hidden: int = 256,
        n_layers: int = 1,
        n_cats: Sequence[int] = (),
        n_cont: int = 0,
        inject_all_layers: bool = True,
        dropout_rate: float = 0.0,
        use_batch_norm: bool = True,
        use_layer_norm: bool = False,
    ) -> None:
        super().__init__()
        shape = {
            "n_layers": n_layers,
            "n_cats": n_cats,
            "n_cont": n_cont,
            "inject_all_layers": inject_all_layers,
            "dropout_rate": dropout_rate,
            "use_batch_norm": use_batch_norm,
            "use_layer_norm": use_layer_norm,
        }
        self.background_body = MLP(n_latent, n_hidden, **shape)
        self.foreground_body = MLP(n_latent, n_hidden, **shape)
        self.mixing_body = MLP(n_latent, n_hidden, **shape)
        self.back_mean = nn.Linear(n_hidden, n_proteins)
        self.back_std = nn.Linear(n_hidden, n_proteins)
        self.fore_ratio = nn.Linear(n_hidden, n_proteins)
        self.background_logits = nn.Linear(n_hidden, n_proteins)

    def forward(
        self, z: torch.Tensor, cats: Sequence[torch.Tensor] = (), cont: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """The mixture's parameters, float32, each ``(n_cells, n_proteins)``."""
        # all layers here are latent- or protein-sized: too small to gain from low precision
        with without_autocast(z):
            z = z.float()
            h_back = self.background_body(z, cats, cont)
            h_fore = self.foreground_body(z, cats, cont)
            h_mix = self.mixing_body(z, cats, cont)
            return {
                "back_mean": self.back_mean(h_back),
                "back_std": F.softplus(self.back_std(h_back)) + STD_EPS,
                "log_fore_ratio": torch.log1p(F.softplus(self.fore_ratio(h_fore)) + 1e-8),
                "background_logits": self.background_logits(h_mix),
            }


class SkipCountDecoder(CountDecoder):
    """:class:`CountDecoder` whose output heads read the hidden layer *and* the latent.

    The skip connection lets the latent reach the gene means directly, as in the published RNA +
    protein decoder (Gayoso et al., 2021); the options are those of :class:`CountDecoder`.
    """

    def __init__(self, n_latent: int, n_genes: int, *, n_hidden: int = 128, **options) -> None:
        super().__init__(n_latent, n_genes, n_hidden=n_hidden, **options)
        n_head = n_hidden + n_latent
        self.scale_logits = nn.Linear(n_head, n_genes)
        if self.zi_logits is not None:
            self.zi_logits = nn.Linear(n_head, n_genes)
        if self.log_theta is not None:
            self.log_theta = nn.Linear(n_head, n_genes)

    def forward(self, z, log_library, cats=(), cont=None) -> dict[str, torch.Tensor]:
        """As :meth:`CountDecoder.forward`, with ``[h, z]`` fed to the heads."""
        with without_autocast(z):
            z = z.float()
            h = torch.cat([self.body(z, cats, cont), z], dim=-1)
        out = {"scale_logits": self.scale_logits(h), "log_library": log_library}
        if self.zi_logits is not None:
            out["zi_logits"] = self.zi_logits(h)
        if self.log_theta is not None:
            out["log_theta"] = self.log_theta(h)
        return out
