"""``cv.tl.scvi_train``: train scVI on registered data, leave latent and model in the AnnData
(the shared training path of :mod:`cellvi.tl._train` with scVI's options spelled out)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Literal

import lightning.pytorch as pl
from anndata import AnnData

from ..families import get_family, register_trainer
from ._train import RUN_OPTIONS, train_family


def scvi_train(
    adata: AnnData,
    *,
    key_added: str = "scvi",
    n_hidden: int = 128,
    n_latent: int = 10,
    n_layers: int = 1,
    dropout_rate: float = 0.1,
    dispersion: Literal["gene", "gene-batch", "gene-label", "gene-cell"] = "gene",
    gene_likelihood: Literal["zinb", "nb", "poisson"] = "zinb",
    latent_distribution: Literal["normal", "ln"] = "normal",
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
    """Train an scVI model and store its latent space and the model itself in ``adata``.

    Needs :func:`cellvi.pp.setup_registry` first. The model (weights, parameters, registry,
    gene names, training history, versions) is stored in ``adata.uns[key_added]`` as plain
    arrays and strings, so ``adata.write_h5ad`` saves data and model together.

    Parameters
    ----------
    adata
        Annotated data matrix with a cellvi registry.
    key_added
        Where results go: ``adata.obsm["X_" + key_added]`` and ``adata.uns[key_added]``.
    n_hidden, n_latent, n_layers, dropout_rate
        Network shape: hidden width, latent dimension, hidden layers, encoder dropout.
    dispersion
        One inverse dispersion per gene, per gene and batch, per gene and label, or per gene
        and cell.
    gene_likelihood
        Count distribution: zero-inflated negative binomial, negative binomial or Poisson.
    latent_distribution
        ``"normal"`` or ``"ln"`` (logistic normal).
    use_observed_lib_size
        Use each cell's total counts (or the registered size factor) as its library size.
        ``False`` learns it, with a log-normal prior per batch.
    encode_covariates
        Also give the batch and covariates to the encoder.
    deeply_inject_covariates
        Inject covariates into every hidden layer (matters for ``n_layers > 1``).
    batch_representation, batch_embedding_dim
        Batch as a one-hot code or as a learned embedding of this dimension.
    use_batch_norm, use_layer_norm
        Where BatchNorm / LayerNorm are used.
    max_epochs
        Passes over the training cells. ``None``: about 5 million cell passes,
        ``ceil(5e6 / n_cells)`` clipped to [20, 400] (400 up to 12,500 cells).
    batch_size, lr, weight_decay
        Minibatch size and Adam settings (``eps=0.01``).
    n_epochs_kl_warmup
        Epochs over which the KL weight rises from 0 to 1. ``None``: the first quarter of
        ``max_epochs``, so warm-up always ends before training does.
    train_size
        Fraction of cells used for training; the rest are for validation (recorded with the
        model).
    early_stopping, early_stopping_patience
        Stop when the validation ELBO has not improved for this many epochs.
    reduce_lr_on_plateau
        Lower the learning rate when the validation ELBO plateaus.
    check_val_every_n_epoch
        Record the validation ELBO every this many epochs (``None``: only at the end, unless
        early stopping or LR-on-plateau need it every epoch).
    gradient_clip_val
        Clip gradient norms to this value.
    seed
        Random seed (``None``: ``cv.settings.seed``). Same seed and data on CPU give an
        identical model and latent.
    precision
        Numeric precision of training, a Lightning precision string. ``"auto"``: on CPUs with
        native bfloat16 matrix instructions (AVX512-BF16 or AMX), ``"bf16-mixed"`` (matrix
        products in bfloat16 with float32 accumulation, about 4x faster there; weights,
        likelihood, KL and all evaluation stay float32; held-out ELBO measured equal to
        float32 training to 4 digits), elsewhere and on GPUs ``"32-true"``. The value used is
        recorded in ``params``; pass ``"32-true"`` for float32 throughout.
    accelerator, devices, strategy, num_nodes
        Passed to :class:`lightning.pytorch.Trainer` (``accelerator="auto"`` uses a GPU when
        present; ``devices="auto"`` means one device). With several devices or nodes, each
        process trains on its own share of the cells with Lightning's DDP:
        ``strategy="ddp_spawn"`` (what ``"auto"`` picks then) starts the processes from this
        one, also in a notebook, and brings the trained model back here; ``"ddp"`` suits
        scripts, ``torchrun`` and ``srun``, where every process runs the script and only the
        process of global rank 0 writes results (see :func:`cellvi.utils.is_main_process`).
        See the scaling guide.
    checkpoint_dir
        Folder for a training checkpoint (``None``: none). Every `checkpoint_every` epochs and
        after the last one, the weights, optimizer state, epoch, history and random number
        generator states are written there as one safetensors file (no pickle).
    checkpoint_every
        Epochs between checkpoints.
    resume
        Continue from the checkpoint in `checkpoint_dir` (same arguments and data required);
        start from scratch when there is none. A resumed run gives the same model as an
        uninterrupted one. Without `resume`, an existing checkpoint is an error.
    callbacks
        Extra :class:`lightning.pytorch.Callback` objects for the trainer (e.g. the pruning
        callback of :func:`cellvi.tl.tune`). They are not recorded in ``params``.
    copy
        Return a trained copy instead of writing to ``adata``.

    Returns
    -------
    ``None``, or a copy when ``copy=True``. Sets

    ``adata.obsm["X_" + key_added]``
        Posterior mean of the latent, ``(n_cells, n_latent)``.
    ``adata.uns[key_added]``
        The model payload: ``params``, ``registry``, ``var_names``, ``weights``
        (safetensors bytes), ``history``, ``validation_indices``, ``metrics``, ``versions``,
        ``session_info`` and the format version (see the payload specification). A model
        whose training was stopped by Ctrl-C also has ``partial`` (reason, epochs completed);
        it holds the weights of the last completed epoch, and ``KeyboardInterrupt`` is raised
        after it is written.
    """
    given = locals()
    params = {k: v for k, v in given.items() if k not in ("adata", "copy", *RUN_OPTIONS)}
    run = {k: given[k] for k in RUN_OPTIONS}
    return train_family(get_family("scvi"), adata, params, run, copy=copy)


register_trainer("scvi", scvi_train)
