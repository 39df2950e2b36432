"""``cv.tl.train``: the one training path of every model family.

The family-named training verbs (``cv.tl.scvi_train`` and that of any registered family)
are this function with the family's name and its options spelled out. Every option here works for
every family: checkpoints with exact resume, Lightning strategies and nodes, a partial model on
Ctrl-C, the model of the last finite epoch on a NaN loss, early stopping, LR on plateau, KL
warm-up, precision and seed. What differs per family is asked of the family (its ``read``,
``prepare`` and ``make_plan`` hooks, see :class:`cellvi.families.ModelFamily`).
"""

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
from anndata import AnnData

from .._settings import settings
from ..data.backed import counts_on_disk
from ..data.loader import train_validation_split
from ..families import ModelFamily, TrainingData, get_family
from ..families._rna import rna_training_data
from ..families.registry import register_shared_trainer
from ..lifecycle.payload import encode
from ..lifecycle.runtime import compute_latent, load_model
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
from ..utils.native import take_used
from ..utils.seeding import seed_everything
from ..utils.session import session_report, versions
from ._evaluate import evaluate_module

logger = logging.getLogger("cellvi")

PRECISIONS = ("auto", "32-true", "bf16-mixed", "16-mixed")
#: Arguments that say how to run the training, not what to train: not recorded in ``params``.
RUN_OPTIONS = ("checkpoint_dir", "checkpoint_every", "resume", "callbacks")
#: Options every family takes from the shared path (a family's own options come on top).
SHARED_OPTIONS = (
    "key_added", "max_epochs", "batch_size", "lr", "weight_decay", "n_epochs_kl_warmup",
    "train_size", "early_stopping", "early_stopping_patience", "reduce_lr_on_plateau",
    "check_val_every_n_epoch", "gradient_clip_val", "seed", "precision", "accelerator",
    "devices", "strategy", "num_nodes",
)  # fmt: skip


def check_training_args(
    max_epochs, batch_size, lr, train_size, n_epochs_kl_warmup, needs_validation, precision
) -> None:
    """Refuse invalid shared options before anything is built or written."""
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


def train(
    data,
    *,
    model: str,
    key_added: str | None = None,
    max_epochs: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
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
    **options: Any,
):
    """Train a model of any registered family; store its latent and the model in ``data``.

    Needs :func:`cellvi.pp.setup_registry` first. ``cv.tl.train(adata, model="scvi")`` is
    ``cv.tl.scvi_train(adata)``; a family you register (see the families guide) trains the same
    way, with every option below.

    Parameters
    ----------
    data
        What the family reads (an AnnData for an RNA model; a MuData with RNA and protein for
        an RNA + protein model).
    model
        The family's registered name (``cv.families.family_names()``).
    key_added
        Where results go: ``.obsm["X_" + key_added]`` and ``.uns[key_added]`` (``None``: the
        family's default, e.g. ``"scvi"``).
    max_epochs, batch_size, lr, weight_decay, n_epochs_kl_warmup, train_size
        As in :func:`cellvi.tl.scvi_train` (``None`` for ``batch_size`` and ``lr``: the family's
        defaults).
    early_stopping, early_stopping_patience, reduce_lr_on_plateau, check_val_every_n_epoch
        Validation-driven stopping and learning-rate schedule, as in :func:`cellvi.tl.scvi_train`.
    gradient_clip_val, seed, precision, accelerator, devices, strategy, num_nodes
        As in :func:`cellvi.tl.scvi_train`.
    checkpoint_dir, checkpoint_every, resume
        Epoch checkpoints and exact resume, as in :func:`cellvi.tl.scvi_train`.
    callbacks
        Extra Lightning callbacks (not recorded in ``params``).
    copy
        Return a trained copy instead of writing to ``data``.
    **options
        The family's own options (``cv.families.get_family(model).hyperparameters``); the ones
        not given take the family's defaults. All are recorded in ``.uns[key_added]["params"]``.

    Returns
    -------
    ``None``, or a copy when ``copy=True``. Sets ``.obsm["X_" + key_added]`` (the latent
    posterior means) and ``.uns[key_added]`` (the model payload; with ``partial`` when training
    stopped early on Ctrl-C, and ``KeyboardInterrupt`` raised after it is written).
    """
    family = get_family(model)
    unknown = set(options) - set(family.hyperparameters)
    if unknown:
        raise TypeError(
            f"cv.tl.train(model={model!r}) got unknown options {sorted(unknown)}; the "
            f"{family.title} family takes {sorted(set(family.hyperparameters) | set(SHARED_OPTIONS))}."
        )
    defaults = family.defaults()
    params = {**defaults, **options}
    given = locals()
    params.update({k: given[k] for k in SHARED_OPTIONS})
    params["key_added"] = key_added or family.key_added
    params["lr"] = defaults.get("lr", 1e-3) if lr is None else lr
    params["batch_size"] = defaults.get("batch_size", 128) if batch_size is None else batch_size
    run = {"checkpoint_dir": checkpoint_dir, "checkpoint_every": checkpoint_every,
           "resume": resume, "callbacks": callbacks}  # fmt: skip
    return train_family(family, data, params, run, copy=copy)


def train_family(
    family: ModelFamily, data, params: dict[str, Any], run: dict[str, Any], *, copy: bool
):
    """The training path itself: ``params`` are the options recorded with the model (the
    family's and the shared ones), ``run`` the :data:`RUN_OPTIONS`."""
    params = dict(params)
    start = time.perf_counter()
    key_added = params["key_added"]
    check_training_args(
        params["max_epochs"], params["batch_size"], params["lr"], params["train_size"],
        params["n_epochs_kl_warmup"],
        params["early_stopping"] or params["reduce_lr_on_plateau"], params["precision"],
    )  # fmt: skip
    resolve_devices(params["devices"], params["strategy"], params["num_nodes"])
    if copy and isinstance(data, AnnData) and counts_on_disk(data):
        raise ValueError(
            "copy=True would load the whole matrix on disk into memory: train the backed AnnData "
            "itself (results go to its .obsm and .uns), or load it with `adata.to_memory()`."
        )
    seed = settings.seed if params["seed"] is None else int(params["seed"])
    params["seed"] = seed
    generator = seed_everything(seed)
    training = (family.read or rna_training_data)(data)
    training.init_model = _warm_start(family, data, params)
    # options are checked by building the module before anything is trained or written
    module = family.build(params, training.registry, len(training.var_names))
    tensors = training.tensors
    # the split first: what prepare fits from the data must not see the validation cells
    train_idx, val_idx = train_validation_split(tensors.n_cells, params["train_size"], generator)
    training.train_indices = train_idx
    if family.prepare is not None:
        params.update(family.prepare(module, training, params))
    max_epochs = params["max_epochs"]
    max_epochs = default_max_epochs(tensors.n_cells) if max_epochs is None else int(max_epochs)
    warmup = params["n_epochs_kl_warmup"]
    warmup = default_kl_warmup(max_epochs) if warmup is None else warmup
    params.update(
        max_epochs=max_epochs, n_epochs_kl_warmup=int(warmup),
        precision=resolve_precision(params["precision"], params["accelerator"]),
    )  # fmt: skip
    checkpoint = _checkpoint_setup(run, params, training, tensors.n_cells)
    companion = None if family.companion is None else family.companion(training, params, train_idx)
    logger.info(
        f"training {family.title} on {tensors.n_cells:,} cells x {len(training.var_names):,} "
        f"genes{training.summary} ({len(val_idx):,} held out for validation), {max_epochs} epochs"
    )
    plan = _make_plan(family, module, params, training.registry)
    take_used()  # the payload records the kernels this training uses, not earlier calls'
    try:
        fit(
            plan, tensors, train_indices=train_idx, validation_indices=val_idx,
            batch_size=int(params["batch_size"]), max_epochs=max_epochs, generator=generator,
            early_stopping=params["early_stopping"],
            early_stopping_patience=params["early_stopping_patience"],
            check_val_every_n_epoch=params["check_val_every_n_epoch"],
            accelerator=params["accelerator"], devices=params["devices"],
            progress_bar=settings.progress_bar, description=f"{family.title} ({key_added})",
            precision=params["precision"], strategy=params["strategy"],
            num_nodes=params["num_nodes"], callbacks=run["callbacks"], checkpoint=checkpoint,
            companion=companion,
        )  # fmt: skip
    except TrainingInterrupted:
        interrupted, partial = True, _keep_last_epoch(plan, "interrupted", max_epochs)
    except NonFiniteLossError as err:
        if plan.last_good_state is not None:  # the plan restored the last finite epoch's weights
            partial = {"reason": "non-finite loss", **_epochs(plan, max_epochs)}
            payload = _payload(family, plan, training, params, val_idx, start, partial)
            _attach(err, payload, key_added)
        raise
    else:
        interrupted, partial = False, None
    if not is_main_process():
        logger.info("    trained; results are kept by the process of global rank 0 only")
        return None
    module = plan.module.cpu().eval()
    latent = compute_latent(module, tensors)
    results = family.results(module, tensors, training.var_names, key_added)
    payload = _payload(family, plan, training, params, val_idx, start, partial)
    data = data.copy() if copy else data
    with deferred_interrupt():  # every field or none, whatever the user presses
        data.obsm[f"X_{key_added}"] = latent
        write_results(data, results)
        data.uns[key_added] = payload
    logger.info(
        f"    finished in {time.perf_counter() - start:.1f}s: added 'X_{key_added}' "
        f"(.obsm){describe_results(results)} and the model (.uns[{key_added!r}])"
    )
    if interrupted:  # after writing what was kept, Ctrl-C still stops the caller's script
        _warn_partial(partial, key_added)
        raise KeyboardInterrupt
    return data if copy else None


def _warm_start(family: ModelFamily, data, params: dict[str, Any]):
    """The trained model a warm-started family starts from (``None``: from scratch); its
    values of the options the family inherits are copied into ``params``."""
    key = family.warm_start_key(params)
    if key is None:
        return None
    if key not in data.uns:
        raise KeyError(
            f"{family.title} starts from the trained model at .uns[{key!r}], which is not "
            f"there: train it first (e.g. `cv.tl.scvi_train(adata, key_added={key!r})`), or "
            "start from scratch by passing None for that key."
        )
    source = load_model(data, key)
    defaults = family.defaults()
    for name in family.inherits:
        if name not in source.params:
            continue
        given, inherited = params.get(name), source.params[name]
        if given != inherited and given != defaults.get(name):
            raise ValueError(
                f"{name}={given!r} differs from the {source.family.title} model at "
                f".uns[{key!r}] ({inherited!r}); a model started from it keeps its {name}: "
                f"leave {name} out, or start from scratch."
            )
        params[name] = inherited
    return source


def write_results(data, results: dict[str, dict[str, Any]]) -> None:
    """Write what a family's ``outputs`` hook returned (``{attribute: {name: value}}``)."""
    for attribute, entries in results.items():
        target = getattr(data, attribute)
        for name, value in entries.items():
            target[name] = value


def describe_results(results: dict[str, dict[str, Any]]) -> str:
    """``", 'X' (.varm)"`` for the log line."""
    return "".join(
        f", {', '.join(repr(n) for n in entries)} (.{attribute})"
        for attribute, entries in results.items()
        if entries
    )


def _make_plan(family: ModelFamily, module, params: dict[str, Any], registry) -> TrainingPlan:
    options = {
        "lr": params["lr"],
        "weight_decay": params["weight_decay"],
        "n_epochs_kl_warmup": params["n_epochs_kl_warmup"],
        "reduce_lr_on_plateau": params["reduce_lr_on_plateau"],
        "gradient_clip_val": params["gradient_clip_val"],
    }
    if family.make_plan is not None:
        return family.make_plan(module, params, registry, **options)
    return TrainingPlan(module, **options)


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
            f"{done} is in .uns[{key_added!r}], marked partial.",
            UserWarning,
            stacklevel=4,
        )


def _payload(family, plan, training: TrainingData, params, val_idx, start, partial) -> dict:
    """The ``.uns`` payload of the trained (or partially trained) module."""
    module = plan.module.cpu().eval()
    extra = {
        "registry": training.registry,
        "var_names": np.asarray(training.var_names, dtype=str),
        **training.extra,
        "history": {k: np.asarray(v, dtype=np.float64) for k, v in plan.history.items()},
        "validation_indices": val_idx.astype(np.int64),
        "metrics": _final_metrics(module, training.tensors, val_idx, params["seed"]),
        "training_time_s": float(time.perf_counter() - start),
        "versions": versions(),
        "session_info": session_report(),
        "partial": partial,  # None (left out) for a complete training
    }
    return encode(family.name, module, params=params, extra=extra)


def _epochs(plan: TrainingPlan, max_epochs: int) -> dict[str, int]:
    return {"epochs_completed": len(plan.history.get("epoch", [])), "max_epochs": max_epochs}


def _keep_last_epoch(plan: TrainingPlan, reason: str, max_epochs: int) -> dict | None:
    """After Ctrl-C: back to the weights of the last completed epoch, or re-raise if none."""
    epochs = _epochs(plan, max_epochs)
    if epochs["epochs_completed"] >= max_epochs:
        return None  # Ctrl-C came after the last step: the model is complete
    if plan.last_good_state is None:
        raise KeyboardInterrupt  # no epoch finished: nothing worth keeping, data unchanged
    plan.module.load_state_dict(plan.last_good_state)
    return {"reason": reason, **epochs}


def _checkpoint_setup(run, params, training: TrainingData, n_cells: int) -> CheckpointSetup | None:
    if run["checkpoint_dir"] is None:
        if run["resume"]:
            raise ValueError("resume=True needs checkpoint_dir=<the folder of the checkpoint>.")
        return None
    digest = hashlib.sha1(usedforsecurity=False)
    registry = training.registry
    described = [training.var_names, registry["batch_categories"]]
    described += [registry[k] for k in ("library_log_means",) if k in registry]
    described += [v for _, v in sorted(training.extra.items())]
    for values in described:
        digest.update(repr(np.asarray(values).tolist()).encode())
    recorded = dict(params, n_cells=int(n_cells), data_sha1=digest.hexdigest())
    return prepare_checkpoint(
        run["checkpoint_dir"], every_n_epochs=run["checkpoint_every"], resume=run["resume"],
        run=recorded,
    )  # fmt: skip


def _final_metrics(module, tensors, val_idx: np.ndarray, seed: int) -> dict[str, Any]:
    """Full (normalised) per-cell ELBO on the validation cells, when there are any."""
    if len(val_idx) == 0:
        return {}
    result = evaluate_module(module, tensors, indices=val_idx, seed=seed)
    return {f"{k}_validation": v for k, v in result.items()}


register_shared_trainer(train)
