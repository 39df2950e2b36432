"""``cv.tl.scanvi_train``: annotate cells from a few labelled ones with scANVI (the shared
training path of :mod:`cellvi.tl._train` with scANVI's options spelled out)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Literal

import lightning.pytorch as pl
from anndata import AnnData

from ..families import get_family, register_trainer
from ._train import RUN_OPTIONS, train_family


def scanvi_train(
    adata: AnnData,
    *,
    unlabeled_category: str = "Unknown",
    scvi_key: str | None = "scvi",
    key_added: str = "scanvi",
    classification_ratio: float = 50.0,
    linear_classifier: bool = False,
    label_prior: Literal["uniform", "frequency"] = "uniform",
    balance_labels: bool = False,
    n_steps_classifier_prefit: int | None = None,
    n_hidden: int = 128,
    n_latent: int = 10,
    n_layers: int = 1,
    dropout_rate: float = 0.1,
    dispersion: Literal["gene", "gene-batch", "gene-cell"] = "gene",
    gene_likelihood: Literal["zinb", "nb", "poisson"] = "zinb",
    use_observed_lib_size: bool = True,
    encode_covariates: bool = False,
    deeply_inject_covariates: bool = True,
    batch_representation: Literal["one-hot", "embedding"] = "one-hot",
    batch_embedding_dim: int = 5,
    use_batch_norm: Literal["both", "encoder", "decoder", "none"] = "both",
    use_layer_norm: Literal["both", "encoder", "decoder", "none"] = "none",
    max_epochs: int | None = None,
    batch_size: int = 128,
    lr: float = 1e-3,
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
) -> AnnData | None:
    """Train scANVI: predict the label of every cell from the labelled ones.

    Needs :func:`cellvi.pp.setup_registry` with a ``labels_key`` whose unlabelled cells carry
    ``unlabeled_category``. By default the model starts from the trained scVI model in
    ``adata.uns[scvi_key]`` (its encoder, decoder and dispersion; as scvi-tools'
    ``SCANVI.from_scvi_model``), which must have been trained on the same registry.

    Parameters
    ----------
    adata
        Annotated data matrix with a cellvi registry that has a labels column.
    unlabeled_category
        The category of the labels column that marks cells without a label. A reference in
        which every cell is labelled is valid.
    scvi_key
        ``.uns`` key of the trained scVI model to start from; ``None`` trains from scratch.
        Started from scVI, the network options (``n_hidden``, ``n_latent``, ...) are the scVI
        model's; a different value given here is an error.
    key_added
        Where results go: ``obsm["X_" + key_added]``, ``uns[key_added]`` and the prediction
        fields below.
    classification_ratio
        Weight of the classifier's cross-entropy on labelled cells (the peer's default, 50).
    linear_classifier
        A single linear layer from the latent to the class logits.
    label_prior
        ``p(y)`` of the generative model: uniform, or the labelled cells' class frequencies.
    balance_labels
        Draw, with every minibatch, ``batch_size`` labelled cells with each label equally
        likely, for the classification loss. ``False`` (default): the loss sees the labelled
        cells that the minibatch happens to hold, in the labels' proportions. Balancing did not
        help on the benchmark data (see the scANVI guide in the docs), so it is an option.
    n_steps_classifier_prefit
        Started from scVI, the classifier is first trained alone for this many steps
        (minibatches of ``batch_size``, Adam with ``lr`` and ``weight_decay``) on the scVI
        latent of the labelled training cells, then the whole model is fine-tuned. ``None``:
        200 when starting from scVI, none from scratch; ``0``: none (scvi-tools' way). Without
        it the untrained classifier steers the unlabelled cells' latent in the first epochs; on
        the benchmark data the pre-fit raised accuracy by 0.02-0.05 (see the scANVI guide).
    n_hidden, n_latent, n_layers, dropout_rate
        Network shape, as in :func:`cellvi.tl.scvi_train` (taken from the scVI model when
        starting from one, as are the options below up to ``use_layer_norm``).
    dispersion, gene_likelihood, use_observed_lib_size
        Likelihood, as in :func:`cellvi.tl.scvi_train`.
    encode_covariates, deeply_inject_covariates
        Covariate injection, as in :func:`cellvi.tl.scvi_train`.
    batch_representation, batch_embedding_dim
        Batch representation, as in :func:`cellvi.tl.scvi_train`.
    use_batch_norm, use_layer_norm
        Normalisation layers, as in :func:`cellvi.tl.scvi_train`.
    max_epochs
        Passes over the training cells. ``None``: 10 when starting from scVI (a fine-tune, as
        the peer), else the rule of :func:`cellvi.tl.scvi_train`.
    batch_size, lr, weight_decay, train_size
        As in :func:`cellvi.tl.scvi_train`.
    n_epochs_kl_warmup
        KL warm-up epochs. ``None``: none when starting from scVI (its KL is warmed up), else
        the first quarter of ``max_epochs``.
    early_stopping, early_stopping_patience
        As in :func:`cellvi.tl.scvi_train`.
    reduce_lr_on_plateau, check_val_every_n_epoch, gradient_clip_val
        As in :func:`cellvi.tl.scvi_train`.
    seed, precision, accelerator, devices
        As in :func:`cellvi.tl.scvi_train`.
    strategy, num_nodes
        As in :func:`cellvi.tl.scvi_train`.
    checkpoint_dir, checkpoint_every, resume, callbacks
        As in :func:`cellvi.tl.scvi_train`.
    copy
        Return a trained copy instead of writing to ``adata``.

    Returns
    -------
    ``None``, or a copy when ``copy=True``. Sets

    ``adata.obsm["X_" + key_added]``
        Posterior mean of the latent ``z1``, ``(n_cells, n_latent)``.
    ``adata.obs[key_added + "_prediction"]``
        The most probable label (categorical with the registry's label categories, without
        ``unlabeled_category``), for every cell, labelled ones included.
    ``adata.obs[key_added + "_confidence"]``
        Its probability under the classifier.
    ``adata.obsm[key_added + "_probabilities"]``
        All class probabilities, ``(n_cells, n_classes)``; the columns' labels are
        ``adata.uns[key_added + "_probabilities_columns"]``.
    ``adata.uns[key_added]``
        The model payload, as in :func:`cellvi.tl.scvi_train`.
    """
    given = locals()
    params = {k: v for k, v in given.items() if k not in ("adata", "copy", *RUN_OPTIONS)}
    run = {k: given[k] for k in RUN_OPTIONS}
    return train_family(get_family("scanvi"), adata, params, run, copy=copy)


register_trainer("scanvi", scanvi_train)
