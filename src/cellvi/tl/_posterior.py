"""Posterior predictive counts and the parameters of the count distribution of a trained model."""

from __future__ import annotations

import logging

import numpy as np
import scipy.sparse as sp
import torch
from anndata import AnnData

from ..lifecycle.sampling import (
    cells_per_pass,
    check_library_size,
    check_n_samples,
    decode,
    draw_counts,
    seeded,
)
from ._common import inference_device, load_model, minibatches, model_data
from ._scvi_apply import _batch_codes

logger = logging.getLogger("cellvi")


def single_batch_code(model, transform_batch: str | None) -> int | None:
    """Code of one batch of the model (``None`` keeps each cell's own batch)."""
    if transform_batch is not None and not isinstance(transform_batch, str):
        raise TypeError(
            f"transform_batch must be one batch name (str) or None, got {transform_batch!r}; "
            "to average over batches use cv.tl.scvi_normalize."
        )
    codes = _batch_codes(model, transform_batch)
    return None if codes is None else codes[0]


def _to_csr(draws: torch.Tensor) -> sp.csr_matrix:
    """``(n_samples, cells, genes)`` draws as one CSR ``(cells, n_samples * genes)`` block."""
    n_samples, n_cells, n_genes = draws.shape
    wide = draws.permute(1, 0, 2).reshape(n_cells, n_samples * n_genes)
    return sp.csr_matrix(wide.cpu().numpy().astype(np.float32, copy=False))


def posterior_predictive(
    adata: AnnData,
    *,
    key: str = "scvi",
    n_samples: int = 1,
    layer_added: str | None = None,
    transform_batch: str | None = None,
    library_size: float | str = "latent",
    seed: int | None = 0,
    batch_size: int = 1024,
    copy: bool = False,
) -> AnnData | None:
    """Draw counts from the posterior predictive distribution of the model in ``adata.uns[key]``.

    For every draw and cell a latent is sampled from ``q(z | x)`` and counts from ``p(x | z,
    l)`` with the model's likelihood (ZINB, NB or Poisson). Draws are made in minibatches and
    stored sparse.

    Parameters
    ----------
    adata
        Data with a trained model and the counts it was trained on.
    key
        Key of the model in ``.uns``.
    n_samples
        Draws per cell.
    layer_added
        Name of the result (default ``key + "_posterior_predictive"``).
    transform_batch
        Decode every cell as if it came from this batch (``None``: its own batch).
    library_size
        ``"latent"``: each cell's own library size; a number: counts per cell to draw at.
    seed
        Seed of the draws (``None``: torch's current random state).
    batch_size
        Cells per forward pass (fewer when ``n_samples`` draws would not fit).
    copy
        Return a copy instead of writing to ``adata``.

    Returns
    -------
    ``None`` or a copy. Sets, as a float32 CSR matrix of integer counts,

    ``adata.layers[layer_added]`` (``n_samples == 1``)
        ``(n_cells, n_genes)`` counts.
    ``adata.obsm[layer_added]`` (``n_samples > 1``)
        ``(n_cells, n_samples * n_genes)``: draw ``s`` in columns ``s * n_genes`` to
        ``(s + 1) * n_genes``; ``X[:, s * n_genes:(s + 1) * n_genes]`` is one draw and
        ``X.toarray().reshape(n_cells, n_samples, n_genes)`` all of them.

    ``adata.uns[layer_added]["params"]`` records the arguments.
    """
    n_samples = check_n_samples(n_samples)
    check_library_size(library_size)
    layer_added = layer_added or f"{key}_posterior_predictive"
    if isinstance(adata.uns.get(layer_added), dict) and "weights" in adata.uns[layer_added]:
        raise ValueError(
            f"layer_added={layer_added!r} names a trained model in adata.uns, which the draws' "
            "parameters would overwrite; choose another name."
        )
    model = load_model(adata, key)
    code = single_batch_code(model, transform_batch)
    data = model_data(adata, model)
    device = inference_device(model.module)
    module = model.module.to(device).eval()
    cells = cells_per_pass(n_samples, data.n_vars, batch_size)
    with torch.inference_mode(), seeded(seed, device):
        parts = [
            _to_csr(draw_counts(module, mb, n_samples, batch_code=code, library_size=library_size))
            for mb in minibatches(data, device, cells)
        ]
    result = sp.vstack(parts, format="csr")
    params = {
        "key": key,
        "n_samples": n_samples,
        "transform_batch": transform_batch or "",
        "library_size": library_size,
        "seed": -1 if seed is None else int(seed),
    }
    adata = adata.copy() if copy else adata
    where = "layers" if n_samples == 1 else "obsm"
    getattr(adata, where)[layer_added] = result
    adata.uns[layer_added] = {"params": params}
    logger.info(f"    added {layer_added!r} (adata.{where})")
    return adata if copy else None


def _parameters(module, mb, n_samples, code, library_size) -> dict[str, torch.Tensor]:
    """Mean over ``n_samples`` decodings (1: the posterior mean) of mu, theta and pi."""
    total: dict[str, torch.Tensor] = {}
    for _ in range(n_samples):
        _, dist = decode(
            module, mb, deterministic=n_samples == 1, batch_code=code, library_size=library_size
        )
        values = {"mean": dist.mu}
        if hasattr(dist, "theta"):
            values["dispersion"] = dist.theta
        if hasattr(dist, "zi_logits"):
            values["dropout"] = torch.sigmoid(dist.zi_logits)
        for name, value in values.items():
            total[name] = total.get(name, 0.0) + value
    return {name: (value / n_samples).float().cpu() for name, value in total.items()}


def likelihood_parameters(
    adata: AnnData,
    *,
    key: str = "scvi",
    n_samples: int = 1,
    key_added: str | None = None,
    transform_batch: str | None = None,
    library_size: float | str = "latent",
    seed: int | None = 0,
    batch_size: int = 1024,
    copy: bool = False,
) -> AnnData | None:
    """Parameters of the count distribution ``p(x | z, l)`` for every cell and gene.

    Parameters
    ----------
    adata
        Data with a trained model and the counts it was trained on.
    key
        Key of the model in ``.uns``.
    n_samples
        ``1`` decodes the posterior mean of the latent; more averages the parameters over that
        many posterior samples.
    key_added
        Prefix of the layers written (default ``key``).
    transform_batch
        Decode every cell as if it came from this batch (``None``: its own batch).
    library_size
        ``"latent"``: each cell's own library size; a number: the counts per cell the means
        are scaled to.
    seed
        Seed of the posterior samples when ``n_samples > 1``.
    batch_size
        Cells per forward pass.
    copy
        Return a copy instead of writing to ``adata``.

    Returns
    -------
    ``None`` or a copy. Sets dense float32 ``(n_cells, n_genes)`` layers:

    ``adata.layers[key_added + "_mean"]``
        Mean ``mu`` of the negative binomial (before zero-inflation) or Poisson rate.
    ``adata.layers[key_added + "_dispersion"]``
        Inverse dispersion ``theta`` (variance ``mu + mu**2 / theta``); not for Poisson.
    ``adata.layers[key_added + "_dropout"]``
        Probability of an extra zero (zero-inflation); ZINB only.

    ``adata.uns[key_added + "_likelihood"]["params"]`` records the arguments.
    """
    n_samples = check_n_samples(n_samples)
    check_library_size(library_size)
    model = load_model(adata, key)
    code = single_batch_code(model, transform_batch)
    data = model_data(adata, model)
    device = inference_device(model.module)
    module = model.module.to(device).eval()
    with torch.inference_mode(), seeded(seed if n_samples > 1 else None, device):
        parts = [
            _parameters(module, mb, n_samples, code, library_size)
            for mb in minibatches(data, device, batch_size)
        ]
    key_added = key_added or key
    adata = adata.copy() if copy else adata
    for name in parts[0]:
        layer = np.ascontiguousarray(torch.cat([p[name] for p in parts]).numpy())
        adata.layers[f"{key_added}_{name}"] = layer
    adata.uns[f"{key_added}_likelihood"] = {
        "params": {
            "key": key,
            "n_samples": n_samples,
            "transform_batch": transform_batch or "",
            "library_size": library_size,
            "gene_likelihood": str(model.params.get("gene_likelihood", "zinb")),
        }
    }
    names = ", ".join(f"'{key_added}_{n}'" for n in parts[0])
    logger.info(f"    added {names} (adata.layers)")
    return adata if copy else None
