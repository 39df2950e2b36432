"""``cv.tl.marginal_ll``: ``log p(x)`` per cell by importance sampling."""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING

import numpy as np
import torch
from anndata import AnnData

from .._settings import settings
from ..analysis.posterior import log_importance_weights
from ..data.loader import MinibatchLoader
from ..families import Capability
from ..lifecycle.minified import require_counts
from ..lifecycle.runtime import inference_device, load_model, model_data

if TYPE_CHECKING:
    from mudata import MuData

logger = logging.getLogger("cellvi")


def marginal_ll(
    adata: AnnData | MuData,
    *,
    key: str = "scvi",
    model_from: AnnData | None = None,
    n_mc_samples: int = 1000,
    seed: int | None = None,
    batch_size: int = 256,
    key_added: str | None = None,
) -> float:
    """Marginal log-likelihood ``log p(x)`` of each cell (``log p(x, y)`` with the protein
    counts ``y`` for an RNA + protein model), by importance sampling.

    The proposal is the encoder's posterior ``q(z | x)`` (and ``q(l | x)`` when the library
    size is learned). For draws ``z_1..z_K`` the estimate is the log-mean-exp of
    ``log p(x | z_k, l) + log p(z_k) - log q(z_k | x)`` (plus ``log p(l_k) - log q(l_k | x)``
    for a learned library). It is a lower bound on ``log p(x)`` in expectation, at least as
    tight as the ELBO and tighter as ``n_mc_samples`` grows. All terms of the count likelihood
    are included (also ``log x!``), so values compare across implementations.

    For an RNA + protein model the proposal is ``q(z | x, y)`` and, per protein, the model's
    own posterior of the log protein background given ``z``, against its prior per protein and
    batch; proteins not measured in a cell's batch are left out, as in training. One sample is
    then an unbiased estimate of the ELBO of ``cv.tl.evaluate``.

    Parameters
    ----------
    adata
        Cells to score (raw counts in the layer the model was trained on): an AnnData, or for an
        RNA + protein model a MuData (or an AnnData with the proteins in ``.obsm``) laid out like
        the training data.
    key
        Key of the model in ``.uns``.
    model_from
        AnnData holding the model (``None``: ``adata`` itself), e.g. to score held-out cells.
    n_mc_samples
        Importance samples per cell.
    seed
        Seed of the draws (``None``: ``cv.settings.seed``).
    batch_size
        Cells per forward pass.
    key_added
        ``adata.obs`` column for the per-cell values (default ``key + "_marginal_ll"``).

    Returns
    -------
    The mean over cells of ``log p(x)`` (nats per cell). Sets ``adata.obs[key_added]``, the
    per-cell estimate (float64; ``mdata.obs`` for a MuData).
    """
    if int(n_mc_samples) < 1:
        raise ValueError(f"n_mc_samples must be >= 1, got {n_mc_samples}.")
    model = load_model(adata if model_from is None else model_from, key)
    model.require(Capability.MARGINAL_LL, "cv.tl.marginal_ll")
    require_counts(adata, key, "cv.tl.marginal_ll")
    data = model_data(adata, model)
    seed = settings.seed if seed is None else int(seed)
    values = _per_cell(model.module, data, int(n_mc_samples), seed, batch_size)
    column = key_added or f"{key}_marginal_ll"
    adata.obs[column] = values
    logger.info(f"    added {column!r} (adata.obs)")
    return float(values.mean())


@torch.inference_mode()
def _per_cell(module, data, n_mc: int, seed: int, batch_size: int) -> np.ndarray:
    device = inference_device(module)
    module.to(device).eval()
    loader = MinibatchLoader(data, np.arange(data.n_cells), batch_size=batch_size)
    parts = []
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        for mb in loader:
            mb = {k: v.to(device) for k, v in mb.items()}
            log_w = log_importance_weights(module, mb, n_mc).double()
            parts.append((torch.logsumexp(log_w, 0) - math.log(n_mc)).cpu())
    return torch.cat(parts).numpy()
