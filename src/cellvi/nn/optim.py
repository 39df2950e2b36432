"""The Adam optimiser that training and the module-level fits (scANVI's classifier pre-fit) step
with: torch's, fused where it can be."""

from __future__ import annotations

from collections.abc import Iterable

import torch


def adam(
    params: Iterable[torch.nn.Parameter],
    *,
    lr: float,
    weight_decay: float = 0.0,
    eps: float = 1e-8,
    fusable: bool = True,
) -> torch.optim.Adam:
    """``torch.optim.Adam``, fused (every parameter updated in one pass: several times cheaper
    per step) when ``fusable`` and every parameter lies on a CPU or CUDA device."""
    params = list(params)
    fused = fusable and all(p.device.type in ("cpu", "cuda") for p in params)
    return torch.optim.Adam(params, lr=lr, eps=eps, weight_decay=weight_decay, fused=fused)
