"""``cv.tl.totalvi_train``: train totalVI on RNA + protein counts, leave latent and model in
the MuData (or AnnData with proteins in ``.obsm``)."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any, Literal

import lightning.pytorch as pl
import numpy as np
import torch

from .._settings import settings
from ..data._mudata import get_protein_registry, protein_names_of, rna_anndata
from ..data._protein_loader import ProteinTensorData, protein_tensor_data
from ..data.loader import train_validation_split
from ..data.registry import REGISTRY_KEY
from ..lifecycle.payload import encode
from ..models._protein_prior import EMPIRICAL_PRIOR_MIN_PROTEINS, empirical_background_prior
from ..models.totalvi import DEFAULT_PRIOR_MEAN, DEFAULT_PRIOR_STD, TOTALVIModule
from ..models.totalvi_codec import build_module
from ..train.adversarial import AdversarialTrainingPlan
from ..train.plan import TrainingPlan
from ..train.trainer import default_kl_warmup, default_max_epochs, fit, resolve_precision
from ..utils.seeding import seed_everything
from ..utils.session import session_report, versions
from ._common import compute_latent
from ._evaluate import evaluate_module
from ._scvi_train import _check_training_args

logger = logging.getLogger("cellvi")


def _init_protein_prior(
    module: TOTALVIModule, data: ProteinTensorData, mask: np.ndarray, empirical: bool, seed: int
) -> None:
    module.protein_batch_mask.copy_(torch.as_tensor(mask, dtype=torch.float32))
    if not empirical:
        return
    means, stds = empirical_background_prior(
        data.protein.numpy(),
        data.batch.numpy(),
        mask,
        default_mean=DEFAULT_PRIOR_MEAN,
        default_std=DEFAULT_PRIOR_STD,
        seed=seed,
    )
    module.prior_back_mean.data.copy_(torch.as_tensor(means, dtype=torch.float32))
    module.prior_back_log_std.data.copy_(torch.as_tensor(np.log(stds), dtype=torch.float32))


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
    precision, accelerator, devices
        As in :func:`cellvi.tl.scvi_train`.
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
        ``versions``, ``session_info`` and the format version.
    """
    params = {k: v for k, v in locals().items() if k not in ("mdata", "copy", "callbacks")}
    start = time.perf_counter()
    _check_training_args(
        max_epochs, batch_size, lr, train_size, n_epochs_kl_warmup,
        early_stopping or reduce_lr_on_plateau, precision,
    )  # fmt: skip
    registry = get_protein_registry(mdata, REGISTRY_KEY)
    seed = settings.seed if seed is None else int(seed)
    generator = seed_everything(seed)
    var_names = np.asarray(rna_anndata(mdata, registry).var_names, dtype=str)
    module = build_module(params, registry, len(var_names))
    data = protein_tensor_data(mdata, registry, protein_names=protein_names_of(registry))
    mask = np.asarray(registry["protein"]["protein_batch_mask"], dtype=np.uint8)
    empirical = empirical_protein_background_prior
    if empirical is None:
        empirical = data.n_proteins > EMPIRICAL_PRIOR_MIN_PROTEINS
    adversarial = bool(adversarial_classifier)
    if adversarial_classifier is None:
        adversarial = bool((mask == 0).any()) and int(registry["n_batch"]) > 1
    _init_protein_prior(module, data, mask, bool(empirical), seed)
    max_epochs = default_max_epochs(data.n_cells) if max_epochs is None else int(max_epochs)
    warmup = default_kl_warmup(max_epochs) if n_epochs_kl_warmup is None else n_epochs_kl_warmup
    params.update(
        max_epochs=max_epochs, n_epochs_kl_warmup=int(warmup), seed=seed,
        precision=resolve_precision(precision, accelerator),
        empirical_protein_background_prior=bool(empirical), adversarial_classifier=adversarial,
    )  # fmt: skip
    train_idx, val_idx = train_validation_split(data.n_cells, train_size, generator)
    logger.info(
        f"training totalVI on {data.n_cells:,} cells x {data.n_vars:,} genes + "
        f"{data.n_proteins} proteins ({len(val_idx):,} held out), {max_epochs} epochs"
    )
    plan = _make_plan(module, params, adversarial, int(registry["n_batch"]))
    fit(
        plan, data, train_indices=train_idx, validation_indices=val_idx,
        batch_size=batch_size, max_epochs=max_epochs, generator=generator,
        early_stopping=early_stopping, early_stopping_patience=early_stopping_patience,
        check_val_every_n_epoch=check_val_every_n_epoch, accelerator=accelerator,
        devices=devices, progress_bar=settings.progress_bar,
        description=f"totalVI ({key_added})", precision=params["precision"],
        callbacks=callbacks,
    )  # fmt: skip
    module = plan.module.cpu().eval()
    latent = compute_latent(module, data)
    metrics = {}
    if len(val_idx):
        result = evaluate_module(module, data, indices=val_idx, seed=seed)
        metrics = {f"{k}_validation": v for k, v in result.items()}
    payload = encode(
        "totalvi",
        module.cpu(),
        params=params,
        extra={
            "registry": registry,
            "var_names": var_names,
            "protein_names": np.asarray(protein_names_of(registry), dtype=str),
            "history": {k: np.asarray(v, dtype=np.float64) for k, v in plan.history.items()},
            "validation_indices": val_idx.astype(np.int64),
            "metrics": metrics,
            "training_time_s": float(time.perf_counter() - start),
            "versions": versions(),
            "session_info": session_report(),
        },
    )
    mdata = mdata.copy() if copy else mdata
    mdata.obsm[f"X_{key_added}"] = latent
    mdata.uns[key_added] = payload
    logger.info(
        f"    finished in {time.perf_counter() - start:.1f}s: added 'X_{key_added}' (.obsm) "
        f"and the model (.uns[{key_added!r}])"
    )
    return mdata if copy else None


def _make_plan(module, params: dict[str, Any], adversarial: bool, n_batch: int) -> TrainingPlan:
    options = {
        "lr": params["lr"],
        "weight_decay": params["weight_decay"],
        "n_epochs_kl_warmup": params["n_epochs_kl_warmup"],
        "reduce_lr_on_plateau": params["reduce_lr_on_plateau"],
        "gradient_clip_val": params["gradient_clip_val"],
    }
    if adversarial:
        return AdversarialTrainingPlan(module, n_batch=n_batch, **options)
    return TrainingPlan(module, **options)
