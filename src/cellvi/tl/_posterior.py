"""Posterior predictive counts and the parameters of the count distribution of a trained model."""

from __future__ import annotations

import logging

import numpy as np
import scipy.sparse as sp
import torch
from anndata import AnnData

from ..lifecycle.modalities import (
    check_protein_obsm_name,
    is_multimodal,
    rna_target,
    write_protein,
)
from ..lifecycle.runtime import inference_device, load_model, minibatches, model_data
from ..lifecycle.sampling import (
    cells_per_pass,
    check_library_size,
    check_n_samples,
    decode,
    draw_modalities,
    has_proteins,
    seeded,
)
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
    stored sparse. For a model of RNA + protein counts each draw also samples the protein
    background from its posterior and protein counts from the background/foreground negative
    binomial mixture, from the same latent as the RNA of that draw.

    Parameters
    ----------
    adata
        Data with a trained model and the counts it was trained on: an AnnData (RNA model), or
        for an RNA + protein model a MuData or an AnnData with the protein counts in ``.obsm``.
    key
        Key of the model in ``.uns``.
    n_samples
        Draws per cell.
    layer_added
        Name of the result (default ``key + "_posterior_predictive"``).
    transform_batch
        Decode every cell as if it came from this batch (``None``: its own batch).
    library_size
        ``"latent"``: each cell's own library size; a number: counts per cell to draw the RNA
        at. Proteins are not rescaled: their background is a latent of its own.
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

    For an RNA + protein model on a MuData these RNA draws go to ``mdata[rna]`` and the
    protein draws, laid out the same way with ``n_proteins`` columns per draw, to
    ``mdata[prot].layers[layer_added]`` (``n_samples == 1``) or ``mdata[prot].obsm
    [layer_added]``. On an AnnData
    with proteins in ``.obsm``, the protein draws (either ``n_samples``) are
    ``adata.obsm[layer_added + "_protein"]``. Draw ``s`` of both modalities comes from the
    same latent.

    ``adata.uns[layer_added]["params"]`` (``mdata.uns`` for a MuData) records the arguments.
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
    check_protein_obsm_name(adata, model, f"{layer_added}_protein")
    results = _draw(model, model_data(adata, model), n_samples, code, library_size, seed,
                    batch_size)  # fmt: skip
    params = {
        "key": key,
        "n_samples": n_samples,
        "transform_batch": transform_batch or "",
        "library_size": library_size,
        "seed": -1 if seed is None else int(seed),
    }
    adata = adata.copy() if copy else adata
    where = "layers" if n_samples == 1 else "obsm"
    getattr(rna_target(adata, model), where)[layer_added] = results["rna"]
    written = [f"{layer_added!r} (RNA .{where})"]
    if "protein" in results:
        written.append(
            write_protein(adata, model, results["protein"], name=layer_added,
                          obsm_name=f"{layer_added}_protein", where=where)
        )  # fmt: skip
    adata.uns[layer_added] = {"params": params}
    logger.info(f"    added {', '.join(written)}")
    return adata if copy else None


def _draw(model, data, n_samples, code, library_size, seed, batch_size) -> dict:
    """All cells' draws per modality (``"rna"``, ``"protein"``), each one CSR matrix."""
    device = inference_device(model.module)
    module = model.module.to(device).eval()
    n_features = data.n_vars + (data.n_proteins if has_proteins(module) else 0)
    cells = cells_per_pass(n_samples, n_features, batch_size)
    parts: dict[str, list] = {}
    with torch.inference_mode(), seeded(seed, device):
        for mb in minibatches(data, device, cells):
            draws = draw_modalities(
                module, mb, n_samples, batch_code=code, library_size=library_size
            )
            for name, values in draws.items():
                parts.setdefault(name, []).append(_to_csr(values))
    return {name: sp.vstack(blocks, format="csr") for name, blocks in parts.items()}


def _protein_parameters(dist) -> dict[str, torch.Tensor]:
    """The protein mixture's parameters, named as written (``protein_`` + layer suffix)."""
    return {
        "protein_background_mean": dist.mu1,
        "protein_foreground_mean": dist.mu2,
        "protein_dispersion": dist.theta1,
        "protein_foreground_prob": 1.0 - dist.mixture_probs,
    }


def _parameters(module, mb, n_samples, code, library_size) -> dict[str, torch.Tensor]:
    """Mean over ``n_samples`` decodings (1: the posterior mean) of mu, theta and pi."""
    total: dict[str, torch.Tensor] = {}
    for _ in range(n_samples):
        gen, dist = decode(
            module, mb, deterministic=n_samples == 1, batch_code=code, library_size=library_size
        )
        values = {"mean": dist.mu}
        if hasattr(dist, "theta"):
            values["dispersion"] = dist.theta
        if hasattr(dist, "zi_logits"):
            values["dropout"] = torch.sigmoid(dist.zi_logits)
        if has_proteins(module):
            values.update(_protein_parameters(module.protein_distribution(gen)))
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

    For a model of protein counts, also those of the protein distribution: a mixture of a background
    and a foreground negative binomial with a shared inverse dispersion.

    Parameters
    ----------
    adata
        Data with a trained model and the counts it was trained on: an AnnData (RNA model), or
        for an RNA + protein model a MuData or an AnnData with the protein counts in ``.obsm``.
    key
        Key of the model in ``.uns``.
    n_samples
        ``1`` decodes the posterior mean of the latent (and of the log protein
        background, if any); more averages the parameters over that many posterior samples.
    key_added
        Prefix of the layers written (default ``key``).
    transform_batch
        Decode every cell as if it came from this batch (``None``: its own batch).
    library_size
        ``"latent"``: each cell's own library size; a number: the counts per cell the RNA
        means are scaled to (the protein parameters do not depend on it).
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

    For an RNA + protein model on a MuData these RNA layers go to ``mdata[rna]``, and dense
    float32 ``(n_cells, n_proteins)`` layers to ``mdata[prot]``:

    ``mdata[prot].layers[key_added + "_background_mean"]``
        Mean of the background negative binomial, ``exp(b)``.
    ``mdata[prot].layers[key_added + "_foreground_mean"]``
        Mean of the foreground negative binomial (always above the background's).
    ``mdata[prot].layers[key_added + "_dispersion"]``
        Inverse dispersion of both components.
    ``mdata[prot].layers[key_added + "_foreground_prob"]``
        Weight of the foreground component; the protein mean is ``p * foreground + (1 - p)
        * background``.

    On an AnnData with proteins in ``.obsm`` the same four are DataFrames (proteins as
    columns) ``adata.obsm[key_added + "_protein_background_mean"]``,
    ``..._protein_foreground_mean``, ``..._protein_dispersion`` and
    ``..._protein_foreground_prob``.

    ``adata.uns[key_added + "_likelihood"]["params"]`` (``mdata.uns`` for a MuData) records
    the arguments, with ``protein_likelihood="nb_mixture"`` for a model of protein counts.
    """
    n_samples = check_n_samples(n_samples)
    check_library_size(library_size)
    model = load_model(adata, key)
    code = single_batch_code(model, transform_batch)
    for name in ("background_mean", "foreground_mean", "dispersion", "foreground_prob"):
        check_protein_obsm_name(adata, model, f"{key_added or key}_protein_{name}")
    data = model_data(adata, model)
    device = inference_device(model.module)
    module = model.module.to(device).eval()
    with torch.inference_mode(), seeded(seed if n_samples > 1 else None, device):
        parts = [
            _parameters(module, mb, n_samples, code, library_size)
            for mb in minibatches(data, device, batch_size)
        ]
    key_added = key_added or key
    layers = {name: np.ascontiguousarray(torch.cat([p[name] for p in parts]).numpy())
              for name in parts[0]}  # fmt: skip
    params = {
        "key": key,
        "n_samples": n_samples,
        "transform_batch": transform_batch or "",
        "library_size": library_size,
        "gene_likelihood": str(model.params.get("gene_likelihood", "zinb")),
    }
    if is_multimodal(model):
        params["protein_likelihood"] = "nb_mixture"
    adata = adata.copy() if copy else adata
    written = _write_parameters(adata, model, key_added, layers)
    adata.uns[f"{key_added}_likelihood"] = {"params": params}
    logger.info(f"    added {', '.join(written)}")
    return adata if copy else None


def _write_parameters(adata, model, key_added: str, layers: dict[str, np.ndarray]) -> list[str]:
    """RNA layers on the RNA AnnData, protein ones through :func:`write_protein`."""
    rna, written = rna_target(adata, model), []
    for name, layer in layers.items():
        if not name.startswith("protein_"):
            rna.layers[f"{key_added}_{name}"] = layer
            written.append(f"'{key_added}_{name}' (RNA .layers)")
            continue
        where = write_protein(
            adata, model, layer, name=f"{key_added}_{name.removeprefix('protein_')}",
            obsm_name=f"{key_added}_{name}",
        )  # fmt: skip
        written.append(where)
    return written
