"""Verbs that take any family's model: ``embed``, ``normalize``, ``evaluate``.

Each asks the model's family (:mod:`cellvi.families`) whether it can do what is asked; the
family-named verbs (``scvi_embed``, ``scvi_normalize``, ...) are the same implementations with
a check that the model is of their family.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..families import Capability
from ..lifecycle.minified import require_counts
from ..lifecycle.runtime import model_data
from ._evaluate import evaluate_module
from ._load import load_for, write_embedding
from ._protein_apply import denoise
from ._scvi_apply import normalized_expression


def embed(
    data,
    *,
    key: str = "scvi",
    model_from=None,
    key_added: str | None = None,
    batch_size: int = 1024,
    copy: bool = False,
):
    """Write the latent representation of any family's trained model for the cells of ``data``.

    Parameters
    ----------
    data
        Cells laid out like the model's training data: an AnnData for an RNA model; a MuData
        (or an AnnData with proteins in ``.obsm``) for an RNA + protein model.
    key
        Key of the model in ``.uns``.
    model_from
        Object holding the model in ``.uns[key]`` (``None``: ``data`` itself).
    key_added
        Write ``.obsm["X_" + key_added]`` (default: ``key``).
    batch_size
        Cells per forward pass.
    copy
        Return a copy instead of writing to ``data``.

    Returns
    -------
    ``None`` or a copy; sets ``.obsm["X_" + key_added]`` (posterior means; on a MuData, the
    joint ``mdata.obsm``).
    """
    source = data if model_from is None else model_from
    model = load_for(source, key, Capability.EMBED, "cv.tl.embed", family_verb=False)
    return write_embedding(
        data, model, key_added=key_added or key, batch_size=batch_size, copy=copy
    )


def evaluate(
    data, *, key: str = "scvi", model_from=None, seed: int = 0, batch_size: int = 1024
) -> dict[str, float]:
    """The full, normalised ELBO of any family's trained model on the cells of ``data``.

    Parameters
    ----------
    data
        Cells to evaluate (raw counts as the model was trained on; no registry needed).
    key
        Key of the model in ``.uns``.
    model_from
        Object holding the model in ``.uns[key]`` (``None``: ``data`` itself).
    seed
        Seed of the single posterior sample drawn per cell.
    batch_size
        Cells per forward pass.

    Returns
    -------
    A dict of per-cell means, ``elbo`` first (higher is better), then
    ``reconstruction_error``, ``kl``, the family's own terms (e.g.
    ``reconstruction_error_protein``) and ``n_cells``.
    """
    require_counts(data, key, "cv.tl.evaluate")
    source = data if model_from is None else model_from
    model = load_for(source, key, Capability.EVALUATE, "cv.tl.evaluate", family_verb=False)
    return evaluate_module(model.module, model_data(data, model), seed=seed, batch_size=batch_size)


def normalize(
    data,
    *,
    key: str = "scvi",
    transform_batch: str | Sequence[str] | None = None,
    library_size: float = 1e4,
    batch_size: int = 1024,
    copy: bool = False,
    **kwargs,
):
    """Denoised, normalised expression from any family's trained model.

    For an RNA model this is ``cv.tl.scvi_normalize`` (``adata.layers[key + "_normalized"]``;
    its further options, ``layer_added``, ``n_samples``, ``seed``, pass through ``kwargs``).
    For a family that also denoises proteins it is that family's denoising verb: denoised RNA
    and background-free proteins with their foreground probability (on a MuData, layers
    ``key + "_denoised"`` of both modalities and ``key + "_foreground_prob"`` of the protein
    one; on an AnnData with proteins in ``.obsm``, ``adata.layers[key + "_denoised"]`` and the
    ``.obsm`` DataFrames ``key + "_denoised_protein"`` and ``key + "_foreground_prob"``);
    ``include_background`` passes through ``kwargs``.

    Parameters
    ----------
    data
        Data holding the trained model in ``.uns[key]``.
    key
        Key of the model in ``.uns``.
    transform_batch
        Decode every cell as if from this batch (or the mean over these batches).
    library_size
        Counts per cell of the normalised expression.
    batch_size
        Cells per forward pass.
    copy
        Return a copy instead of writing to ``data``.
    **kwargs
        The options of the verb that does the work (see above).

    Returns
    -------
    ``None`` or a copy, with the layers the family's verb writes.
    """
    model = load_for(data, key, Capability.NORMALIZE, "cv.tl.normalize", family_verb=False)
    if model.family.can(Capability.DENOISE_PROTEINS):
        return denoise(data, model, key=key, transform_batch=transform_batch,
                       library_size=library_size, batch_size=batch_size, copy=copy, **kwargs)  # fmt: skip
    return normalized_expression(data, model, key=key, transform_batch=transform_batch,
                                 library_size=library_size, batch_size=batch_size, copy=copy,
                                 **kwargs)  # fmt: skip
