"""The full, normalised ELBO of a trained model on some cells."""

from __future__ import annotations

import numpy as np
import torch
from anndata import AnnData

from ..data.loader import MinibatchLoader, TensorData
from ..families import Capability
from ..lifecycle.minified import require_counts
from ..lifecycle.runtime import inference_device, load_model, model_data


@torch.inference_mode()
def evaluate_module(
    module,
    data: TensorData,
    *,
    indices: np.ndarray | None = None,
    seed: int = 0,
    batch_size: int = 1024,
) -> dict[str, float]:
    """Per-cell means of ``elbo``, ``reconstruction_error`` and ``kl`` (one seeded z sample).

    Every term of the log-likelihood is included (also ``log x!``), so the ELBO is a proper
    lower bound on ``log p(x)`` and comparable across implementations.
    """
    device = inference_device(module)
    module.to(device).eval()
    indices = np.arange(data.n_cells) if indices is None else np.asarray(indices)
    loader = MinibatchLoader(data, indices, batch_size=batch_size)
    rec = kl = 0.0
    parts: dict[str, float] = {}
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        for mb in loader:
            mb = {k: v.to(device) for k, v in mb.items()}
            terms = module(mb, kl_weight=1.0)
            rec += float(terms.reconstruction.double().sum())
            kl += float((terms.kl_z + terms.kl_library).double().sum())
            # models with several terms (e.g. RNA and protein) also report them apart
            for name, value in getattr(terms, "parts", {}).items():
                parts[name] = parts.get(name, 0.0) + float(value.double().sum())
    n = max(len(indices), 1)
    return {
        "elbo": -(rec + kl) / n,
        "reconstruction_error": rec / n,
        "kl": kl / n,
        **{name: value / n for name, value in parts.items()},
        "n_cells": int(len(indices)),
    }


def scvi_evaluate(
    adata: AnnData,
    *,
    model_from: AnnData | None = None,
    key: str = "scvi",
    seed: int = 0,
    batch_size: int = 1024,
) -> dict[str, float]:
    """Evaluate a trained scVI model on the cells of ``adata``.

    ``adata`` needs no registry of its own: the model's registry is applied to it, and its
    genes must be the model's genes in the same order.

    Parameters
    ----------
    adata
        Cells to evaluate (raw counts in the layer the model was trained on).
    model_from
        AnnData holding the trained model in ``.uns[key]``; ``None`` uses ``adata`` itself.
    key
        Key of the model in ``.uns``.
    seed
        Seed of the single latent sample drawn per cell.
    batch_size
        Cells per forward pass.

    Returns
    -------
    A dict with per-cell means: ``elbo`` (a lower bound on ``log p(x)``, higher is better),
    ``reconstruction_error`` (``-E_q[log p(x | z)]``), ``kl`` (KL divergence of the posterior
    from the prior, latent and library), and ``n_cells``.
    """
    require_counts(adata, key, "cv.tl.scvi_evaluate")
    source = adata if model_from is None else model_from
    model = load_model(source, key)
    model.family.require_verb("cv.tl.scvi_evaluate", Capability.EVALUATE, key=key)
    return evaluate_module(model.module, model_data(adata, model), seed=seed, batch_size=batch_size)
