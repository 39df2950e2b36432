"""Using a trained totalVI model: embed cells, denoise RNA and proteins, evaluate the ELBO."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from ..data._mudata import is_mudata
from ..families import Capability
from ..lifecycle.minified import require_counts
from ..lifecycle.runtime import (
    LoadedModel,
    inference_device,
    minibatches,
    model_data,
    run_inference,
)
from ._evaluate import evaluate_module
from ._load import load_for, write_embedding
from ._scvi_apply import _batch_codes

logger = logging.getLogger("cellvi")


def totalvi_embed(mdata, *, model_from=None, key: str = "totalvi", key_added: str | None = None,
                  batch_size: int = 1024, copy: bool = False):  # fmt: skip
    """Write the joint latent of a trained totalVI model for the cells of ``mdata``.

    Parameters
    ----------
    mdata
        Cells to embed: a MuData (or AnnData with proteins in ``.obsm``) laid out like the
        training data, with the model's genes and proteins in the same order.
    model_from
        Object holding the model in ``.uns[key]`` (``None``: ``mdata`` itself).
    key
        Key of the model in ``.uns``.
    key_added
        Write ``.obsm["X_" + key_added]`` (default: ``key``).
    batch_size
        Cells per forward pass.
    copy
        Return a copy instead of writing to ``mdata``.

    Returns
    -------
    ``None`` or a copy; sets ``.obsm["X_" + key_added]`` (posterior means).
    """
    source = mdata if model_from is None else model_from
    model = load_for(source, key, Capability.EMBED, "cv.tl.totalvi_embed", family_verb=True)
    return write_embedding(
        mdata, model, key_added=key_added or key, batch_size=batch_size, copy=copy
    )


@torch.inference_mode()
def _denoise_batch(module, mb, codes, include_background: bool, library_size: float):
    inf = run_inference(module, mb, deterministic=True)
    rna = pro = fore = 0.0
    for code in codes or [None]:
        batch = mb["batch"] if code is None else torch.full_like(mb["batch"], code)
        gen = module.generative(
            inf["z"], inf["log_library"], batch, mb["labels"], mb["cat_covs"], mb["cont_covs"],
            deterministic=True,
        )  # fmt: skip
        rna = rna + torch.softmax(gen["scale_logits"].float(), -1) * library_size
        pro = pro + module.protein_mean(gen, include_background=include_background)
        fore = fore + module.foreground_probability(gen)
    n = len(codes or [None])
    return rna / n, pro / n, fore / n


def totalvi_denoise(
    mdata,
    *,
    key: str = "totalvi",
    transform_batch: str | Sequence[str] | None = None,
    include_background: bool = False,
    library_size: float = 1e4,
    batch_size: int = 1024,
    copy: bool = False,
):
    """Denoised RNA and protein values and the protein foreground probability.

    Decodes the posterior mean of each cell's latent (and of its protein background).

    Parameters
    ----------
    mdata
        Data with a trained totalVI model in ``.uns[key]``.
    key
        Key of the model in ``.uns``.
    transform_batch
        Decode every cell as if it came from this batch (or the average over these batches);
        ``None`` uses each cell's own batch.
    include_background
        Denoised protein = the whole mixture's mean (foreground and background), instead of
        the foreground part only.
    library_size
        Counts per cell of the denoised, normalised RNA.
    batch_size
        Cells per forward pass.
    copy
        Return a copy instead of writing to ``mdata``.

    Returns
    -------
    ``None`` or a copy. For a MuData, sets ``mdata[rna].layers[key + "_denoised"]`` (dense
    float32 cells x genes), ``mdata[prot].layers[key + "_denoised"]`` (expected protein
    counts) and ``mdata[prot].layers[key + "_foreground_prob"]``. For an AnnData with proteins
    in ``.obsm``: ``adata.layers[key + "_denoised"]`` and the DataFrames
    ``adata.obsm[key + "_denoised_protein"]`` and ``adata.obsm[key + "_foreground_prob"]``.
    """
    model = load_for(mdata, key, Capability.DENOISE_PROTEINS, "cv.tl.totalvi_denoise",
                     family_verb=True)  # fmt: skip
    return denoise(mdata, model, key=key, transform_batch=transform_batch,
                   include_background=include_background, library_size=library_size,
                   batch_size=batch_size, copy=copy)  # fmt: skip


def denoise(
    mdata,
    model: LoadedModel,
    *,
    key: str,
    transform_batch: str | Sequence[str] | None = None,
    include_background: bool = False,
    library_size: float = 1e4,
    batch_size: int = 1024,
    copy: bool = False,
):
    """:func:`totalvi_denoise` on a loaded model whose family denoises proteins."""
    if not (np.isfinite(library_size) and library_size > 0):
        raise ValueError(f"library_size must be a positive number, got {library_size!r}.")
    codes = _batch_codes(model, transform_batch)
    data = model_data(mdata, model)
    device = inference_device(model.module)
    module = model.module.to(device).eval()
    parts = [
        [t.float().cpu() for t in _denoise_batch(module, mb, codes, include_background,
                                                 float(library_size))]
        for mb in minibatches(data, device, batch_size)
    ]  # fmt: skip
    rna, pro, fore = (np.ascontiguousarray(torch.cat(p).numpy()) for p in zip(*parts, strict=True))
    mdata = mdata.copy() if copy else mdata
    _write_denoised(mdata, model, key, rna, pro, fore)
    return mdata if copy else None


def _write_denoised(mdata, model: LoadedModel, key: str, rna, pro, fore) -> None:
    spec = model.registry["protein"]
    if is_mudata(mdata):
        mdata.mod[str(spec["rna_modality"])].layers[f"{key}_denoised"] = rna
        prot = mdata.mod[str(spec["protein_modality"])]
        prot.layers[f"{key}_denoised"] = pro
        prot.layers[f"{key}_foreground_prob"] = fore
        logger.info(f"    added {key}_denoised (rna, prot layers), {key}_foreground_prob (prot)")
        return
    names = model.protein_names
    mdata.layers[f"{key}_denoised"] = rna
    mdata.obsm[f"{key}_denoised_protein"] = pd.DataFrame(pro, index=mdata.obs_names, columns=names)
    mdata.obsm[f"{key}_foreground_prob"] = pd.DataFrame(fore, index=mdata.obs_names, columns=names)
    logger.info(f"    added {key}_denoised (layers), {key}_denoised_protein, "
                f"{key}_foreground_prob (obsm)")  # fmt: skip


def totalvi_evaluate(
    mdata, *, model_from=None, key: str = "totalvi", seed: int = 0, batch_size: int = 1024
) -> dict[str, float]:
    """Evaluate a trained totalVI model on the cells of ``mdata``.

    ``mdata`` needs no registry of its own: the model's registry is applied to it. The ELBO is
    the full normalised one (every constant of both likelihoods included), with one seeded
    sample of the latent and of the protein background per cell, so it is comparable with
    other implementations of the same model.

    Parameters
    ----------
    mdata
        Cells to evaluate, with the model's genes and proteins in the same order.
    model_from
        Object holding the trained model in ``.uns[key]``; ``None`` uses ``mdata`` itself.
    key
        Key of the model in ``.uns``.
    seed
        Seed of the single posterior sample drawn per cell.
    batch_size
        Cells per forward pass.

    Returns
    -------
    Per-cell means: ``elbo`` (higher is better), ``reconstruction_error`` (RNA + protein),
    ``reconstruction_error_rna``, ``reconstruction_error_protein``, ``kl`` (latent + protein
    background), ``kl_z``, ``kl_background``; and ``n_cells``.
    """
    require_counts(mdata, key, "cv.tl.totalvi_evaluate")
    source = mdata if model_from is None else model_from
    model = load_for(source, key, Capability.EVALUATE, "cv.tl.totalvi_evaluate", family_verb=True)
    return evaluate_module(model.module, model_data(mdata, model), seed=seed, batch_size=batch_size)
