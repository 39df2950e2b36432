"""Using a trained totalVI model: embed cells, denoise RNA and proteins, evaluate the ELBO."""

from __future__ import annotations

from collections.abc import Sequence

from ..families import Capability
from ..lifecycle.minified import require_counts
from ..lifecycle.runtime import model_data
from ._evaluate import evaluate_module
from ._load import load_for, write_embedding
from ._protein_apply import denoise


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
