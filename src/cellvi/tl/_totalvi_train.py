"""``cv.tl.totalvi_train``: train totalVI on RNA + protein counts, leave latent and model in
the MuData (or AnnData with proteins in ``.obsm``)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Literal

import lightning.pytorch as pl

from ..families import get_family, register_trainer
from ._train import RUN_OPTIONS, train_family


def totalvi_train(
    mdata,
    *,
    key_added: str = "totalvi",
    n_hidden: int = 256,
    n_latent: int = 20,
    n_layers_encoder: int = 2,
    n_layers_decoder: int = 1,
    dropout_rate: float = 0.2,
    gene_dispersion: Literal["gene", "gene-batch", "gene-label"] = "gene",
    protein_dispersion: Literal["protein", "protein-batch", "protein-label"] = "protein",
    gene_likelihood: Literal["nb", "zinb"] = "nb",
    latent_distribution: Literal["normal", "ln"] = "normal",
    encode_covariates: bool = True,
    deeply_inject_covariates: bool = True,
    use_batch_norm: Literal["both", "encoder", "decoder", "none"] = "both",
    use_layer_norm: Literal["both", "encoder", "decoder", "none"] = "none",
    empirical_protein_background_prior: bool | None = None,
    adversarial_classifier: bool | None = None,
    max_epochs: int | None = None,
    batch_size: int = 256,
    lr: float = 4e-3,
    weight_decay: float = 1e-6,
    n_epochs_kl_warmup: int | None = None,
    train_size: float = 0.9,
    early_stopping: bool = False,
    early_stopping_patience: int = 45,
    reduce_lr_on_plateau: bool = False,
    check_val_every_n_epoch: int | None = None,
    gradient_clip_val: float | None = None,
    seed: int | None = None,
    precision: Literal["auto", "32-true", "bf16-mixed", "16-mixed"] = "auto",
    accelerator: str = "auto",
    devices: int | str = "auto",
    strategy: str = "auto",
    num_nodes: int = 1,
    checkpoint_dir: str | os.PathLike | None = None,
    checkpoint_every: int = 1,
    resume: bool = False,
    callbacks: Sequence[pl.Callback] | None = None,
    copy: bool = False,
):
    """Train a totalVI model on RNA and protein counts; store its joint latent and the model.

    Needs :func:`cellvi.pp.setup_registry` first, on a MuData with RNA and protein modalities
    or on an AnnData with protein counts in ``.obsm``. The model (weights, parameters,
    registry, gene and protein names, history, versions) goes to ``.uns[key_added]`` as plain
    arrays and strings, so ``write_h5mu`` / ``write_h5ad`` saves data and model together.

    Parameters
    ----------
    mdata
        MuData (or AnnData with proteins in ``.obsm``) with a cellvi registry.
    key_added
        Where results go: ``.obsm["X_" + key_added]`` and ``.uns[key_added]``.
    n_hidden, n_latent, n_layers_encoder, n_layers_decoder, dropout_rate
        Network shape: hidden width, latent dimension, encoder and decoder depth, dropout.
    gene_dispersion, protein_dispersion
        Inverse dispersion per feature, per feature and batch, or per feature and label.
    gene_likelihood
        RNA count distribution: negative binomial or zero-inflated negative binomial.
    latent_distribution
        ``"normal"`` or ``"ln"`` (logistic normal).
    encode_covariates, deeply_inject_covariates
        Give the encoder the batch and covariates; inject covariates in every hidden layer.
    use_batch_norm, use_layer_norm
        Where BatchNorm / LayerNorm are used.
    empirical_protein_background_prior
        Initialise the background prior of each protein and batch from a two-component fit
        of its ``log1p`` counts. ``None``: on when there are more than 10 proteins.
    adversarial_classifier
        Train a batch classifier on the latent adversarially. ``None``: on when some protein
        was not measured in some batch.
    max_epochs
        Passes over the training cells (``None``: ``ceil(5e6 / n_cells)`` clipped to
        [20, 400]).
    batch_size, lr, weight_decay
        Minibatch size and Adam settings (``eps=0.01``).
    n_epochs_kl_warmup
        Epochs over which the weight of the latent's KL rises from 0 to 1 (``None``: the first
        quarter of ``max_epochs``). The protein likelihood and background KL keep weight 1.
    train_size
        Fraction of cells used for training; the rest are for validation.
    early_stopping, early_stopping_patience, reduce_lr_on_plateau, check_val_every_n_epoch
        Validation-driven stopping and learning-rate schedule, as in
        :func:`cellvi.tl.scvi_train`.
    gradient_clip_val
        Clip gradient norms to this value.
    seed
        Random seed (``None``: ``cv.settings.seed``).
    precision, accelerator, devices, strategy, num_nodes
        As in :func:`cellvi.tl.scvi_train` (several devices or nodes train with DDP).
    checkpoint_dir, checkpoint_every, resume
        Epoch checkpoints and exact resume, as in :func:`cellvi.tl.scvi_train`.
    callbacks
        Extra Lightning callbacks for the trainer (e.g. pruning in :func:`cellvi.tl.tune`).
    copy
        Return a trained copy instead of writing to ``mdata``.

    Returns
    -------
    ``None``, or a copy when ``copy=True``. Sets

    ``.obsm["X_" + key_added]``
        Posterior mean of the joint latent, ``(n_cells, n_latent)``.
    ``.uns[key_added]``
        The model payload: ``params``, ``registry``, ``var_names`` (genes),
        ``protein_names``, ``weights``, ``history``, ``validation_indices``, ``metrics``,
        ``versions``, ``session_info`` and the format version. A model whose training was
        stopped by Ctrl-C also has ``partial``, as in :func:`cellvi.tl.scvi_train`.
    """
    given = locals()
    params = {k: v for k, v in given.items() if k not in ("mdata", "copy", *RUN_OPTIONS)}
    run = {k: given[k] for k in RUN_OPTIONS}
    return train_family(get_family("totalvi"), mdata, params, run, copy=copy)


register_trainer("totalvi", totalvi_train)
