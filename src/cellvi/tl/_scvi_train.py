"""``cv.tl.scvi_train``: train scVI on registered data, leave latent and model in the AnnData."""

from __future__ import annotations

import hashlib
import logging
import os
import time
import warnings
from collections.abc import Sequence
from typing import Any, Literal

import lightning.pytorch as pl
import numpy as np
import torch
from anndata import AnnData

from .._settings import settings
from ..data.backed import counts_on_disk
from ..data.loader import TensorData, train_validation_split
from ..data.registry import extract_registered_data, get_registry
from ..lifecycle.payload import encode
from ..models.scvi_codec import build_module
from ..train.checkpoint import CheckpointSetup, prepare_checkpoint
from ..train.interrupt import TrainingInterrupted, deferred_interrupt
from ..train.plan import NonFiniteLossError, TrainingPlan
from ..train.trainer import (
    default_kl_warmup,
    default_max_epochs,
    fit,
    resolve_devices,
    resolve_precision,
)
from ..utils.distributed import is_main_process
from ..utils.seeding import seed_everything
from ..utils.session import session_report, versions
from ._common import compute_latent
from ._evaluate import evaluate_module

logger = logging.getLogger("cellvi")


PRECISIONS = ("auto", "32-true", "bf16-mixed", "16-mixed")
#: Arguments that say how to run the training, not what to train: not recorded in ``params``.
RUN_OPTIONS = ("checkpoint_dir", "checkpoint_every", "resume", "callbacks")


def _check_training_args(
    max_epochs, batch_size, lr, train_size, n_epochs_kl_warmup, needs_validation, precision
) -> None:
    if needs_validation and train_size >= 1.0:
        raise ValueError(
            "early_stopping and reduce_lr_on_plateau need validation cells to watch the validation "
            "ELBO, but train_size=1.0 leaves none: use train_size < 1 (default 0.9)."
        )
    if max_epochs is not None and int(max_epochs) < 1:
        raise ValueError(
            f"max_epochs must be a positive integer (or None for the default "
            f"based on the number of cells), got {max_epochs}."
        )
    if int(batch_size) < 2:
        raise ValueError(f"batch_size must be at least 2 (BatchNorm), got {batch_size}.")
    if not lr > 0:
        raise ValueError(f"lr must be positive, got {lr}.")
    if not 0.0 < train_size <= 1.0:
        raise ValueError(f"train_size must be in (0, 1], got {train_size}.")
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r} is not valid; choose one of {list(PRECISIONS)}.")
    if n_epochs_kl_warmup is not None and n_epochs_kl_warmup < 0:
        raise ValueError(f"n_epochs_kl_warmup must be >= 0, got {n_epochs_kl_warmup}.")


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
    params = {k: v for k, v in locals().items() if k not in ("adata", "copy", *RUN_OPTIONS)}
    start = time.perf_counter()
    _check_training_args(
        max_epochs,
        batch_size,
        lr,
        train_size,
        n_epochs_kl_warmup,
        early_stopping or reduce_lr_on_plateau,
        precision,
    )
    resolve_devices(devices, strategy, num_nodes)
    if copy and counts_on_disk(adata):
        raise ValueError(
            "copy=True would load the whole matrix on disk into memory: train the backed AnnData "
            "itself (results go to its .obsm and .uns), or load it with `adata.to_memory()`."
        )
    registry = get_registry(adata)
    seed = settings.seed if seed is None else int(seed)
    generator = seed_everything(seed)
    # options are checked by building the module before anything is trained or written
    module = build_module(params, registry, adata.n_vars)
    registered = extract_registered_data(adata, registry)
    data = TensorData.from_registered(registered)
    module.library_log_means.copy_(torch.as_tensor(registry["library_log_means"]))
    module.library_log_vars.copy_(torch.as_tensor(registry["library_log_vars"]).clamp(min=1e-4))
    max_epochs = default_max_epochs(data.n_cells) if max_epochs is None else int(max_epochs)
    warmup = default_kl_warmup(max_epochs) if n_epochs_kl_warmup is None else n_epochs_kl_warmup
    precision = resolve_precision(precision, accelerator)
    params.update(
        max_epochs=max_epochs, n_epochs_kl_warmup=int(warmup), seed=seed, precision=precision
    )
    train_idx, val_idx = train_validation_split(data.n_cells, train_size, generator)
    checkpoint = _checkpoint_setup(
        checkpoint_dir, checkpoint_every, resume, params, adata, registry
    )
    logger.info(
        f"training scVI on {data.n_cells:,} cells x {data.n_vars:,} genes "
        f"({len(val_idx):,} held out for validation), {max_epochs} epochs"
    )
    plan = TrainingPlan(
        module,
        lr=lr,
        weight_decay=weight_decay,
        n_epochs_kl_warmup=int(warmup),
        reduce_lr_on_plateau=reduce_lr_on_plateau,
        gradient_clip_val=gradient_clip_val,
    )
    try:
        fit(
            plan,
            data,
            train_indices=train_idx,
            validation_indices=val_idx,
            batch_size=batch_size,
            max_epochs=max_epochs,
            generator=generator,
            early_stopping=early_stopping,
            early_stopping_patience=early_stopping_patience,
            check_val_every_n_epoch=check_val_every_n_epoch,
            accelerator=accelerator,
            devices=devices,
            progress_bar=settings.progress_bar,
            description=f"scVI ({key_added})",
            precision=precision,
            strategy=strategy,
            num_nodes=num_nodes,
            callbacks=callbacks,
            checkpoint=checkpoint,
        )
    except TrainingInterrupted:
        interrupted, partial = True, _keep_last_epoch(plan, "interrupted", max_epochs)
    except NonFiniteLossError as err:
        if plan.last_good_state is not None:  # the plan restored the last finite epoch's weights
            partial = {"reason": "non-finite loss", **_epochs(plan, max_epochs)}
            payload = _payload(plan, data, adata, registry, params, val_idx, start, partial)
            _attach(err, payload, key_added)
        raise
    else:
        interrupted, partial = False, None
    if not is_main_process():
        logger.info("    trained; results are kept by the process of global rank 0 only")
        return None
    module = plan.module.cpu().eval()
    latent = compute_latent(module, data)
    payload = _payload(plan, data, adata, registry, params, val_idx, start, partial)
    adata = adata.copy() if copy else adata
    with deferred_interrupt():  # both fields or neither, whatever the user presses
        adata.obsm[f"X_{key_added}"] = latent
        adata.uns[key_added] = payload
    logger.info(
        f"    finished in {time.perf_counter() - start:.1f}s: added 'X_{key_added}' "
        f"(adata.obsm) and the model (adata.uns[{key_added!r}])"
    )
    if interrupted:  # after writing what was kept, Ctrl-C still stops the caller's script
        _warn_partial(partial, key_added)
        raise KeyboardInterrupt
    return adata if copy else None


def _attach(err: NonFiniteLossError, payload: dict[str, Any], key_added: str) -> None:
    """Hand the model of the last finite epoch to the caller on the error."""
    err.payload = payload
    err.args = (
        f"{err.args[0]} The model of that epoch is attached to this error: "
        f"`adata.uns[{key_added!r}] = err.payload` stores it (marked partial).",
    )


def _warn_partial(partial: dict | None, key_added: str) -> None:
    if partial is not None:
        done, total = partial["epochs_completed"], partial["max_epochs"]
        warnings.warn(
            f"Training was interrupted after {done} of {total} epochs; the model of epoch "
            f"{done} is in adata.uns[{key_added!r}], marked partial.",
            UserWarning,
            stacklevel=3,
        )


def _payload(plan, data, adata, registry, params, val_idx, start, partial) -> dict[str, Any]:
    """The ``.uns`` payload of the trained (or partially trained) module."""
    module = plan.module.cpu().eval()
    extra = {
        "registry": registry,
        "var_names": np.asarray(adata.var_names, dtype=str),
        "history": {k: np.asarray(v, dtype=np.float64) for k, v in plan.history.items()},
        "validation_indices": val_idx.astype(np.int64),
        "metrics": _final_metrics(module, data, val_idx, params["seed"]),
        "training_time_s": float(time.perf_counter() - start),
        "versions": versions(),
        "session_info": session_report(),
        "partial": partial,  # None (left out) for a complete training
    }
    return encode("scvi", module, params=params, extra=extra)


def _epochs(plan: TrainingPlan, max_epochs: int) -> dict[str, int]:
    return {"epochs_completed": len(plan.history.get("epoch", [])), "max_epochs": max_epochs}


def _keep_last_epoch(plan: TrainingPlan, reason: str, max_epochs: int) -> dict | None:
    """After Ctrl-C: back to the weights of the last completed epoch, or re-raise if none."""
    epochs = _epochs(plan, max_epochs)
    if epochs["epochs_completed"] >= max_epochs:
        return None  # Ctrl-C came after the last step: the model is complete
    if plan.last_good_state is None:
        raise KeyboardInterrupt  # no epoch finished: nothing worth keeping, adata unchanged
    plan.module.load_state_dict(plan.last_good_state)
    return {"reason": reason, **epochs}


def _checkpoint_setup(
    checkpoint_dir, checkpoint_every, resume, params, adata, registry
) -> CheckpointSetup | None:
    if checkpoint_dir is None:
        if resume:
            raise ValueError("resume=True needs checkpoint_dir=<the folder of the checkpoint>.")
        return None
    digest = hashlib.sha1(usedforsecurity=False)
    for values in (adata.var_names, registry["batch_categories"], registry["library_log_means"]):
        digest.update(repr(np.asarray(values).tolist()).encode())
    run = dict(params, n_cells=int(adata.n_obs), data_sha1=digest.hexdigest())
    return prepare_checkpoint(
        checkpoint_dir, every_n_epochs=checkpoint_every, resume=resume, run=run
    )


def _final_metrics(module, data: TensorData, val_idx: np.ndarray, seed: int) -> dict[str, Any]:
    """Full (normalised) per-cell ELBO on the validation cells, when there are any."""
    if len(val_idx) == 0:
        return {}
    result = evaluate_module(module, data, indices=val_idx, seed=seed)
    return {f"{k}_validation": v for k, v in result.items()}
