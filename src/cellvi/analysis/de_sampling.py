"""Posterior draws of normalised expression for groups of cells, for differential expression.

A large group is subsampled before any forward pass: ``n_samples`` draws are spread over at
most ``n_samples`` of its cells, so the encoder runs on a bounded number of cells per group
whatever the group's size. Only the encoder's output is kept per draw (a few numbers per cell);
expression is decoded chunk by chunk when a comparison needs it, so memory stays at a few
``n_samples x n_genes`` arrays however many groups there are.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..data.loader import TensorData
from ..models.scvi import SCVIModule
from .posterior import draw_gaussian, encode, log_scale, to_latent

COVARIATES = ("batch", "labels", "cat_covs", "cont_covs")


@dataclass
class GroupDraws:
    """Encoder outputs for the draws of one group: row ``i`` is draw ``i``'s cell."""

    qz_m: torch.Tensor
    qz_v: torch.Tensor
    covariates: dict[str, torch.Tensor]

    @property
    def n(self) -> int:
        return int(self.qz_m.shape[0])


def cells_for_draws(rows: np.ndarray, n_samples: int, rng: np.random.Generator) -> np.ndarray:
    """Cell of each of ``n_samples`` draws: distinct cells when the group has enough of them,
    otherwise every cell as evenly as possible (a random remainder gets one draw more)."""
    rows = np.asarray(rows)
    if rows.size == 0:
        raise ValueError("a group has no cells")
    if rows.size >= n_samples:
        return rng.choice(rows, size=n_samples, replace=False)
    repeats, remainder = divmod(n_samples, rows.size)
    extra = rng.choice(rows, size=remainder, replace=False)
    return rng.permutation(np.concatenate([np.repeat(rows, repeats), extra]))


@torch.inference_mode()
def encode_draws(
    module: SCVIModule,
    data: TensorData,
    cells: np.ndarray,
    device: torch.device,
    batch_size: int = 1024,
) -> GroupDraws:
    """Run the encoder once per distinct cell and expand the result to one row per draw."""
    unique, inverse = np.unique(cells, return_inverse=True)
    parts: dict[str, list[torch.Tensor]] = {}
    for start in range(0, unique.size, batch_size):
        rows = torch.as_tensor(unique[start : start + batch_size], dtype=torch.long)
        mb = {k: v.to(device) for k, v in data.gather(rows).items()}
        post = encode(module, mb)
        for name in ("qz_m", "qz_v"):
            parts.setdefault(name, []).append(post[name])
        for name in COVARIATES:
            parts.setdefault(name, []).append(mb[name])
    index = torch.as_tensor(inverse.reshape(-1), dtype=torch.long, device=device)
    full = {k: torch.cat(v).index_select(0, index) for k, v in parts.items()}
    return GroupDraws(full["qz_m"], full["qz_v"], {k: full[k] for k in COVARIATES})


def concat_draws(groups: Sequence[GroupDraws]) -> GroupDraws:
    """One pool of the draws of several groups."""
    return GroupDraws(
        torch.cat([g.qz_m for g in groups]),
        torch.cat([g.qz_v for g in groups]),
        {k: torch.cat([g.covariates[k] for g in groups]) for k in COVARIATES},
    )


@torch.inference_mode()
def decode_draws(
    module: SCVIModule,
    draws: GroupDraws,
    index: torch.Tensor,
    batch_codes: Sequence[int] | None,
    chunk: int = 2048,
) -> torch.Tensor:
    """Log normalised expression for the draws at ``index``, ``(len(index), n_genes)``.

    Each call draws a fresh latent sample from ``q(z | x)`` for every row.
    """
    out = []
    for start in range(0, len(index), chunk):
        rows = index[start : start + chunk]
        u = draw_gaussian(draws.qz_m[rows], draws.qz_v[rows])
        covs = {k: v[rows] for k, v in draws.covariates.items()}
        out.append(log_scale(module, to_latent(module, u), covs, batch_codes))
    return torch.cat(out)
