"""Denoising RNA and proteins with a loaded model whose family generates protein counts.

Decodes the posterior mean of each cell's latent (and of its protein background) into
normalised RNA, expected protein counts and the protein foreground probability. The protein
layers go to the protein modality of a MuData, or to ``.obsm`` DataFrames of an AnnData.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from ..data._mudata import is_mudata
from ..lifecycle.runtime import (
    LoadedModel,
    inference_device,
    minibatches,
    model_data,
    run_inference,
)
from ._scvi_apply import _batch_codes

logger = logging.getLogger("cellvi")


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
    """Denoised RNA and protein values and the protein foreground probability, from a loaded
    model whose family denoises proteins.

    Returns ``None`` or a copy. On a MuData, sets ``key + "_denoised"`` layers on the RNA and
    protein modalities and ``key + "_foreground_prob"`` on the protein one; on an AnnData with
    proteins in ``.obsm``, ``adata.layers[key + "_denoised"]`` and the DataFrames
    ``adata.obsm[key + "_denoised_protein"]`` and ``adata.obsm[key + "_foreground_prob"]``.
    """
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
