"""Fully connected blocks with covariate injection.

Injecting a categorical covariate is written as a learned per-category bias added to the layer's
pre-activation. That is exactly a linear layer applied to a one-hot encoding concatenated to the
input, without ever building the one-hot matrix.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from . import fused_hidden
from .dropout import Dropout

BATCH_REPRESENTATIONS = ("one-hot", "embedding")


def without_autocast(t: torch.Tensor):
    """A region where mixed precision is off, for layers too small to gain from it.

    Under autocast every linear layer casts its weight, bias and input to the low precision and
    its gradients back, at every step; for the tiny latent-side layers that costs more than the
    low-precision product saves.
    """
    return torch.autocast(t.device.type, enabled=False)


class CovariateInjection(nn.Module):
    """Adds the contribution of categorical and continuous covariates to a layer's output.

    Parameters
    ----------
    n_out
        Width of the layer the covariates are added to.
    n_cats
        Number of categories of each categorical covariate; covariates with one category are
        skipped since they carry no information.
    n_cont
        Number of continuous covariates.
    """

    def __init__(self, n_out: int, n_cats: Sequence[int], n_cont: int) -> None:
        super().__init__()
        self.n_cats = [int(n) for n in n_cats]
        self.categorical = nn.ModuleList(
            nn.Embedding(n, n_out) if n > 1 else nn.Identity() for n in self.n_cats
        )
        for emb in self.categorical:
            if isinstance(emb, nn.Embedding):
                # same scale as the input weights of a linear layer on a one-hot encoding
                nn.init.uniform_(emb.weight, -(n_out**-0.5), n_out**-0.5)
        self.continuous = nn.Linear(n_cont, n_out, bias=False) if n_cont > 0 else None

    def forward(
        self, h: torch.Tensor, cats: Sequence[torch.Tensor], cont: torch.Tensor | None
    ) -> torch.Tensor:
        for emb, n, codes in zip(self.categorical, self.n_cats, cats, strict=True):
            if n > 1:
                h = h + emb(codes)
        return self.add_continuous(h, cont)

    def add_continuous(self, h: torch.Tensor, cont: torch.Tensor | None) -> torch.Tensor:
        """``h`` plus the continuous covariates' contribution (``h`` when there is none)."""
        if self.continuous is not None and cont is not None:
            h = h + self.continuous(cont)
        return h

    def tables(self, cats: Sequence[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """The embedding weights of the informative categorical covariates and their codes."""
        pairs = zip(self.categorical, self.n_cats, cats, strict=True)
        used = [(emb.weight, codes) for emb, n, codes in pairs if n > 1]
        return [w for w, _ in used], [c for _, c in used]


class MLP(nn.Module):
    """Stack of ``Linear -> covariates -> norm -> ReLU -> dropout`` layers.

    Parameters
    ----------
    n_in, n_out
        Input and output widths (``n_out`` is the width of every hidden layer).
    n_layers
        Number of layers.
    n_cats, n_cont
        Categorical covariates (category counts) and number of continuous covariates injected.
    inject_all_layers
        Inject covariates into every layer, not only the first.
    dropout_rate, use_batch_norm, use_layer_norm
        Regularisation of each layer.
    """

    def __init__(
        self,
        n_in: int,
        n_out: int,
        *,
        n_layers: int = 1,
        n_cats: Sequence[int] = (),
        n_cont: int = 0,
        inject_all_layers: bool = True,
        dropout_rate: float = 0.1,
        use_batch_norm: bool = True,
        use_layer_norm: bool = False,
    ) -> None:
        super().__init__()
        if n_layers < 1:
            raise ValueError(f"n_layers must be at least 1, got {n_layers}.")
        self.linears = nn.ModuleList()
        self.injections = nn.ModuleList()
        self.norms = nn.ModuleList()
        for i in range(n_layers):
            self.linears.append(nn.Linear(n_in if i == 0 else n_out, n_out))
            inject = i == 0 or inject_all_layers
            self.injections.append(
                CovariateInjection(n_out, n_cats, n_cont) if inject else nn.Identity()
            )
            if use_batch_norm:
                self.norms.append(nn.BatchNorm1d(n_out, momentum=0.01, eps=1e-3))
            elif use_layer_norm:
                self.norms.append(nn.LayerNorm(n_out, elementwise_affine=False))
            else:
                self.norms.append(nn.Identity())
        self.dropout = Dropout(dropout_rate) if dropout_rate > 0 else nn.Identity()

    def forward(
        self,
        x: torch.Tensor,
        cats: Sequence[torch.Tensor] = (),
        cont: torch.Tensor | None = None,
        *,
        rows: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The last layer's output.

        ``rows`` (integer indices into ``x``): the input stands for ``x[rows]``, each row with
        its own covariates (``cats`` and ``cont`` have ``len(rows)`` rows); the first layer's
        product is computed once per row of ``x``.
        """
        h = x
        for i, (linear, inject, norm) in enumerate(
            zip(self.linears, self.injections, self.norms, strict=True)
        ):
            h = linear(h)
            if i == 0 and rows is not None:
                h = h.index_select(0, rows)
            if fused_hidden.applies(h, norm, self.dropout):
                tables, codes = [], []
                if isinstance(inject, CovariateInjection):
                    tables, codes = inject.tables(cats)
                    h = inject.add_continuous(h, cont)
                h = fused_hidden.hidden_step(h, tables, codes, norm, self.dropout)
                continue
            if isinstance(inject, CovariateInjection):
                h = inject(h, cats, cont)
            h = self.dropout(torch.relu(norm(h)))
        return h
