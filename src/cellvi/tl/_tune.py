"""``cv.tl.tune``: hyperparameter search with optuna; the summary goes to ``adata.uns``."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from typing import Any

import optuna
from anndata import AnnData

from .._settings import settings
from ..tune._models import get_metric, get_model
from ..tune._objective import TRIAL_ERRORS, IntegrationCells, Objective
from ..tune._results import summarize
from ..tune._space import SearchSpace, tunable_arguments
from ..tune._study import (
    default_pruner,
    open_study,
    param_importances,
    quiet_trials,
    resolve_storage,
)

logger = logging.getLogger("cellvi")


def _check_fixed(train_kwargs, allowed, space: SearchSpace, model: str) -> dict[str, Any]:
    fixed = dict(train_kwargs or {})
    unknown = [k for k in fixed if k not in allowed]
    if unknown:
        raise ValueError(
            f"train_kwargs {unknown} are not arguments of the {model} training function "
            f"that can be set; choose from {sorted(allowed)}."
        )
    both = sorted(set(fixed) & set(space.names))
    if both:
        raise ValueError(f"{both} are both searched and fixed in train_kwargs; keep one.")
    return fixed


def _objective(adata, *, model, search_space, metric, train_kwargs, n_cells_integration, seed):
    """Check every option against the data and build the objective (nothing trained yet)."""
    entry, metric = get_model(model), get_metric(metric)
    if not metric.needs_validation and not entry.integration:
        raise ValueError(
            f"metric={metric.name!r} is not available for model={model!r}; use "
            "'elbo_validation' or 'reconstruction_validation'."
        )
    allowed = tunable_arguments(entry.train)
    if search_space is None:  # the default space, less what the caller fixes
        fixed_names = set(train_kwargs)
        search_space = {k: v for k, v in entry.default_search_space.items() if k not in fixed_names}
    space = SearchSpace.parse(search_space, allowed=allowed, model=model)
    fixed = _check_fixed(train_kwargs, allowed, space, model)
    registry = entry.registry(adata)
    integration, overrides = None, {}
    if metric.needs_validation:
        if float(fixed.get("train_size", 0.9)) >= 1.0:
            raise ValueError(f"metric={metric.name!r} needs validation cells: use train_size < 1.")
        overrides["check_val_every_n_epoch"] = 1  # a value to report (and prune on) every epoch
    else:
        if not str(registry["labels_key"]) or int(registry["n_batch"]) < 2:
            raise ValueError(
                "metric='integration' scores batch mixing and label conservation: register a "
                "batch_key with 2+ batches and a labels_key with `cv.pp.setup_registry`."
            )
        integration = IntegrationCells.build(
            adata, registry, n_cells=n_cells_integration, seed=seed
        )
    return Objective(adata, entry, model, space, metric, fixed, integration, overrides)


def tune(
    adata: AnnData,
    *,
    model: str = "scvi",
    n_trials: int = 40,
    search_space: Mapping[str, tuple] | None = None,
    metric: str = "elbo_validation",
    max_epochs: int = 100,
    storage: str | os.PathLike | optuna.storages.BaseStorage | None = None,
    study_name: str | None = None,
    sampler: optuna.samplers.BaseSampler | None = None,
    pruner: optuna.pruners.BasePruner | None = None,
    train_kwargs: Mapping[str, Any] | None = None,
    n_cells_integration: int = 2000,
    timeout: float | None = None,
    seed: int | None = None,
    train_best: bool = False,
    best_key_added: str | None = None,
    key_added: str | None = None,
    copy: bool = False,
) -> AnnData | None:
    """Search the hyperparameters of a model with optuna, pruning unpromising trials.

    Each trial trains the model with the trial's values (plus ``train_kwargs``) on ``adata``'s
    registered data (shared, not copied; nothing of a trial is written to ``adata``) and
    reports the metric after every epoch, so the pruner can stop it early. Trials whose loss
    becomes NaN/inf or that run out of memory are recorded as failed and the study goes on.
    Several processes or machines given the same ``storage`` and ``study_name`` share one
    study (see ``docs/tuning.md``). Needs :func:`cellvi.pp.setup_registry` first.

    Parameters
    ----------
    adata
        Annotated data matrix with a cellvi registry.
    model
        Name of the model family to tune (e.g. ``"scvi"``); a family that reads proteins
        needs RNA + protein data.
    n_trials
        Trials this call runs (with a shared storage: per worker).
    search_space
        Argument name of the training function -> ``("int", low, high)``,
        ``("int_log", low, high)``, ``("float", low, high)``, ``("float_log", low, high)``
        or ``("cat", [choices])``. ``None``: the model's default (``docs/tuning.md``) without
        the arguments fixed in ``train_kwargs``.
    metric
        ``"elbo_validation"`` (maximised), ``"reconstruction_validation"`` (minimised), or
        ``"integration"`` (maximised; an scIB-style score, needs a batch and a labels key).
    max_epochs
        Epochs per trial (pruned trials stop earlier).
    storage
        ``None`` (in memory), a journal file path (one machine or a shared file system), an
        RDB URL such as ``"postgresql://user:password@host/db"``, or an optuna storage.
    study_name
        Name of the study in ``storage``; an existing one is joined. ``None``:
        ``"cellvi-{model}-{metric}"``.
    sampler, pruner
        Any optuna sampler and pruner. ``None``: ``TPESampler(seed=seed)`` and a
        ``MedianPruner`` that starts after 5 finished trials and ``max_epochs // 5`` epochs.
    train_kwargs
        Fixed arguments of the training function for every trial (e.g. ``batch_size``).
    n_cells_integration
        Size of the cell subsample the integration score is computed on.
    timeout
        Stop starting new trials after this many seconds.
    seed
        Seed of the default sampler, the subsample and every trial's training (``None``:
        ``cv.settings.seed``). Give each worker of a shared study its own seed.
    train_best
        Retrain the best hyperparameters on ``adata``, as the training function would.
    best_key_added
        ``key_added`` of that model (``None``: the model name, e.g. ``"scvi"``).
    key_added
        Key of the results in ``.uns`` (``None``: ``"{model}_tune"``).
    copy
        Return a copy with the results instead of writing to ``adata``.

    Returns
    -------
    ``None``, or a copy when ``copy=True``. Sets ``adata.uns[key_added]``, a dict with

    ``best_params``, ``best_value``, ``best_trial``
        Best searched values, their metric value and trial number.
    ``metric``, ``direction``, ``study_name``, ``storage``
        What was optimised and where the study lives (URL passwords masked).
    ``n_trials``
        Number of trials per state (``complete``, ``pruned``, ``fail``, ...).
    ``trials``
        Per-trial columns: ``number``, ``state``, ``value``, ``duration_s``, ``epochs``,
        ``param_<name>`` and, for ``"integration"``, the score's terms.
    ``param_importances``
        fANOVA importance of each searched parameter.
    ``search_space``, ``fixed_params``, ``params``
        The space searched, the settings every trial shared, and this call's options.

    With ``train_best=True``, also what the training function writes, under ``best_key_added``.
    """
    params = {k: v for k, v in locals().items() if k not in ("adata", "copy")}
    start = time.perf_counter()
    if int(n_trials) < 1 or int(max_epochs) < 1:
        raise ValueError(f"n_trials and max_epochs must be >= 1, got {n_trials}, {max_epochs}.")
    reserved = sorted({"max_epochs", "seed"} & set(train_kwargs or {}))
    if reserved:
        raise ValueError(f"set {reserved} with tune's own arguments, not in train_kwargs.")
    seed = settings.seed if seed is None else int(seed)
    objective = _objective(
        adata,
        model=model,
        search_space=search_space,
        metric=metric,
        train_kwargs={**(train_kwargs or {}), "max_epochs": int(max_epochs), "seed": seed},
        n_cells_integration=n_cells_integration,
        seed=seed,
    )
    storage, storage_text = resolve_storage(storage)
    logger.info(f"tuning {model} ({objective.metric.direction} {metric}): {n_trials} trials")
    with quiet_trials() as progress_bar:
        study = open_study(
            storage,
            study_name=study_name or f"cellvi-{model}-{metric}",
            direction=objective.metric.direction,
            sampler=sampler or optuna.samplers.TPESampler(seed=seed),
            pruner=pruner or default_pruner(int(max_epochs)),
            tags={"cellvi_model": model, "cellvi_metric": metric},
        )
        # no gc_after_trial: a full collection costs about a second with torch loaded, and
        # a finished trial's tensors are freed by reference counting
        study.optimize(
            objective,
            n_trials=int(n_trials),
            timeout=timeout,
            catch=TRIAL_ERRORS,
            show_progress_bar=progress_bar,
        )
    results = _results(study, objective, storage_text, params, seed)
    adata = adata.copy() if copy else adata
    if train_best:
        _retrain(adata, objective, results["best_params"], best_key_added or model)
    key_added = key_added or f"{model}_tune"
    adata.uns[key_added] = results
    logger.info(
        f"    finished in {time.perf_counter() - start:.1f}s: best {metric} "
        f"{results['best_value']:.6g} (trial {results['best_trial']}); added "
        f"adata.uns[{key_added!r}]"
    )
    return adata if copy else None


def _results(study, objective: Objective, storage_text: str, params, seed) -> dict[str, Any]:
    states = [t.state for t in study.get_trials(deepcopy=False)]
    if optuna.trial.TrialState.COMPLETE not in states:
        raise RuntimeError(
            f"No trial of study {study.study_name!r} completed ({len(states)} trials: "
            f"{sorted({s.name.lower() for s in states})}); see the warnings above for why. "
            "Nothing was written to adata."
        )
    # the space and fixed settings are stored in full beside; objects by their class name
    recorded = {k: v for k, v in params.items() if k not in ("search_space", "train_kwargs")}
    recorded.update(
        storage=storage_text,
        study_name=study.study_name,
        seed=seed,
        sampler=type(study.sampler).__name__,
        pruner=type(study.pruner).__name__,
    )
    extra = {
        "storage": storage_text,
        "model": objective.model_name,
        "search_space": objective.space.describe(),
        "fixed_params": objective.train_kwargs,
        "params": recorded,
    }
    return summarize(
        study,
        metric=objective.metric.name,
        names=objective.space.names,
        importances=param_importances(study, seed),
        extra=extra,
    )


def _retrain(adata: AnnData, objective: Objective, best_params: dict, key: str) -> None:
    logger.info(f"training {objective.model_name} with the best hyperparameters")
    objective.model.train(adata, key_added=key, **objective.train_kwargs, **best_params)
