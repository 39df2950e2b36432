"""Using a trained scVI model: embed cells, normalised expression."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np
import torch
from anndata import AnnData

from ..families import Capability
from ..lifecycle.runtime import (
    LoadedModel,
    inference_device,
    minibatches,
    model_data,
    run_inference,
)
from ..lifecycle.sampling import check_library_size
from ._load import load_for, write_embedding

logger = logging.getLogger("cellvi")


def scvi_embed(
    adata: AnnData,
    *,
    model_from: AnnData | None = None,
    key: str = "scvi",
    key_added: str | None = None,
    batch_size: int = 1024,
    copy: bool = False,
) -> AnnData | None:
    """Write the latent representation of a trained scVI model for the cells of ``adata``.

    Parameters
    ----------
    adata
        Cells to embed: the model's genes in the same order, known batch categories.
    model_from
        AnnData holding the model in ``.uns[key]`` (``None``: ``adata`` itself).
    key
        Key of the model in ``.uns``.
    key_added
        Write ``adata.obsm["X_" + key_added]`` (default: ``key``).
    batch_size
        Cells per forward pass.
    copy
        Return a copy instead of writing to ``adata``.

    Returns
    -------
    ``None`` or a copy; sets ``adata.obsm["X_" + key_added]`` (posterior means).
    """
    source = adata if model_from is None else model_from
    model = load_for(source, key, Capability.EMBED, "cv.tl.scvi_embed", family_verb=True)
    return write_embedding(
        adata, model, key_added=key_added or key, batch_size=batch_size, copy=copy
    )


def _batch_codes(model, transform_batch: str | Sequence[str] | None) -> list[int] | None:
    if transform_batch is None:
        return None
    names = [transform_batch] if isinstance(transform_batch, str) else list(transform_batch)
    if not names:
        raise ValueError("transform_batch is empty; pass a batch name, a list of them, or None.")
    known = [str(c) for c in model.registry["batch_categories"]]
    unknown = [n for n in names if str(n) not in known]
    if unknown:
        raise ValueError(
            f"transform_batch {unknown} are not batches of the model; known batches: {known}."
        )
    return [known.index(str(n)) for n in names]


@torch.inference_mode()
def _normalized(module, mb, codes, library_size, n_samples) -> torch.Tensor:
    total = torch.zeros_like(mb["x"])
    for _ in range(n_samples):
        # one sample: the posterior mean; several: that many posterior samples
        inf = run_inference(module, mb, deterministic=n_samples == 1)
        log_lib = (
            inf["log_library"].unsqueeze(-1)
            if library_size == "latent"
            else math.log(float(library_size))
        )
        for code in codes or [None]:
            batch = mb["batch"] if code is None else torch.full_like(mb["batch"], code)
            gen = module.generative(
                inf["z"], inf["log_library"], batch, mb["labels"], mb["cat_covs"], mb["cont_covs"]
            )
            total += torch.exp(module.log_scale(gen) + log_lib)
    return total / (n_samples * len(codes or [None]))


def scvi_normalize(
    adata: AnnData,
    *,
    key: str = "scvi",
    layer_added: str | None = None,
    transform_batch: str | Sequence[str] | None = None,
    library_size: float | str = 1e4,
    n_samples: int = 1,
    batch_size: int = 1024,
    seed: int = 0,
    copy: bool = False,
) -> AnnData | None:
    """Denoised, normalised expression from the scVI model in ``adata.uns[key]``.

    Parameters
    ----------
    adata
        Data with a trained model (e.g. freshly read from an ``.h5ad``).
    key
        Key of the model in ``.uns``.
    layer_added
        Layer to write (default ``key + "_normalized"``).
    transform_batch
        Decode every cell as if it came from this batch (or the average over these batches);
        ``None`` uses each cell's own batch.
    library_size
        Scale of the expression proportions (counts per cell); ``"latent"`` uses the model's
        library size for each cell.
    n_samples
        ``1`` decodes the posterior mean of the latent (deterministic); more averages over that
        many posterior samples.
    batch_size
        Cells per forward pass.
    seed
        Seed of the posterior samples (``n_samples > 1``), so that repeated calls agree; the
        global random state is left as it was.
    copy
        Return a copy instead of writing to ``adata``.

    Returns
    -------
    ``None`` or a copy; sets ``adata.layers[layer_added]``, a dense float32
    ``(n_cells, n_genes)`` array.
    """
    model = load_for(adata, key, Capability.NORMALIZE, "cv.tl.scvi_normalize", family_verb=True)
    return normalized_expression(adata, model, key=key, layer_added=layer_added,
                                 transform_batch=transform_batch, library_size=library_size,
                                 n_samples=n_samples, batch_size=batch_size, seed=seed, copy=copy)  # fmt: skip


def normalized_expression(
    adata: AnnData,
    model: LoadedModel,
    *,
    key: str,
    layer_added: str | None = None,
    transform_batch: str | Sequence[str] | None = None,
    library_size: float | str = 1e4,
    n_samples: int = 1,
    batch_size: int = 1024,
    seed: int = 0,
    copy: bool = False,
) -> AnnData | None:
    """:func:`scvi_normalize` on a loaded model (any family whose module decodes RNA scales
    with ``log_scale``)."""
    if int(n_samples) < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}.")
    check_library_size(library_size)
    codes = _batch_codes(model, transform_batch)
    data = model_data(adata, model)
    device = inference_device(model.module)
    module = model.module.to(device).eval()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        parts = [
            _normalized(module, mb, codes, library_size, int(n_samples)).float().cpu()
            for mb in minibatches(data, device, batch_size)
        ]
    layer_added = layer_added or f"{key}_normalized"
    adata = adata.copy() if copy else adata
    adata.layers[layer_added] = np.ascontiguousarray(torch.cat(parts).numpy())
    logger.info(f"    added {layer_added!r} (adata.layers)")
    return adata if copy else None
