"""``cv.tl.latent_posterior``: variances and draws of the latent posterior ``q(z | x)``."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np
import torch
from anndata import AnnData

from .._settings import settings
from ..analysis.posterior import draw_gaussian, encode, to_latent
from ..families import Capability
from ..lifecycle.runtime import inference_device, load_model, minibatches, model_data

if TYPE_CHECKING:
    from mudata import MuData

logger = logging.getLogger("cellvi")


def latent_posterior(
    adata: AnnData | MuData,
    *,
    key: str = "scvi",
    model_from: AnnData | None = None,
    n_samples: int = 0,
    seed: int | None = None,
    key_added: str | None = None,
    batch_size: int = 1024,
    copy: bool = False,
) -> AnnData | MuData | None:
    """Uncertainty of each cell's latent position: posterior variances and draws.

    ``q(z | x)`` is a diagonal Gaussian on the encoder's output; for a logistic-normal latent
    (``latent_distribution="ln"``) the latent is the softmax of a draw from it, and the
    variances describe the Gaussian before the softmax. For an RNA + protein model it is
    the joint ``q(z | x, y)`` of RNA and proteins, and everything is written to the MuData (or the
    AnnData with proteins in ``.obsm``). On minified data (``cv.hub.load_data``) the stored
    posterior is used.

    Parameters
    ----------
    adata
        Cells (raw counts in the layer the model was trained on): an AnnData, or for an RNA +
        protein model a MuData (or an AnnData with proteins in ``.obsm``) laid out like the
        training data.
    key
        Key of the model in ``.uns``.
    model_from
        AnnData holding the model (``None``: ``adata`` itself).
    n_samples
        Posterior draws of the latent per cell (``0``: variances only).
    seed
        Seed of the draws (``None``: ``cv.settings.seed``).
    key_added
        Prefix of the keys written (default ``key``).
    batch_size
        Cells per forward pass.
    copy
        Return a copy instead of writing to ``adata``.

    Returns
    -------
    ``None`` or a copy; sets

    ``adata.obsm["X_" + key_added + "_var"]``
        Variance of ``q(z | x)``, ``(n_cells, n_latent)`` float32 (``mdata.obsm`` for a
        MuData, as are the other fields). Its mean is ``obsm["X_" + key]`` of
        ``cv.tl.embed`` (or the family's own embedding verb).
    ``adata.obsm["X_" + key_added + "_samples"]``
        When ``n_samples > 0``: draws of the latent, ``(n_cells, n_samples, n_latent)`` float32.
    ``adata.obs[key_added + "_log_library_mean"]``, ``adata.obs[key_added + "_log_library_var"]``
        When the model learns the library size (scVI only): mean and variance of
        ``q(log l | x)``.
    """
    if int(n_samples) < 0:
        raise ValueError(f"n_samples must be >= 0, got {n_samples}.")
    model = load_model(adata if model_from is None else model_from, key)
    model.require(Capability.EMBED, "cv.tl.latent_posterior")
    data = model_data(adata, model)
    seed = settings.seed if seed is None else int(seed)
    result = _posterior(model.module, data, int(n_samples), seed, batch_size)
    prefix = key_added or key
    adata = adata.copy() if copy else adata
    adata.obsm[f"X_{prefix}_var"] = result["qz_v"]
    written = [f"'X_{prefix}_var' (adata.obsm)"]
    if "samples" in result:
        adata.obsm[f"X_{prefix}_samples"] = result["samples"]
        written.append(f"'X_{prefix}_samples' (adata.obsm)")
    if "ql_m" in result:
        adata.obs[f"{prefix}_log_library_mean"] = result["ql_m"]
        adata.obs[f"{prefix}_log_library_var"] = result["ql_v"]
        written.append(f"'{prefix}_log_library_mean/var' (adata.obs)")
    logger.info(f"    added {', '.join(written)}")
    return adata if copy else None


@torch.inference_mode()
def _posterior(module, data, n_samples: int, seed: int, batch_size: int) -> dict[str, np.ndarray]:
    device = inference_device(module)
    module.to(device).eval()
    parts: dict[str, list[torch.Tensor]] = {}
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        for mb in minibatches(data, device, batch_size):
            post = encode(module, mb)
            found = {k: post[k] for k in ("qz_v", "ql_m", "ql_v") if k in post}
            if n_samples:
                draws = [draw_gaussian(post["qz_m"], post["qz_v"]) for _ in range(n_samples)]
                found["samples"] = to_latent(module, torch.stack(draws, dim=1))
            for name, value in found.items():
                parts.setdefault(name, []).append(value.float().cpu())
    return {k: np.ascontiguousarray(torch.cat(v).numpy()) for k, v in parts.items()}
