"""Opening (or joining) an optuna study: storage, sampler, pruner, and run-time quiet."""

from __future__ import annotations

import logging
import os
import re
from contextlib import contextmanager

import optuna
from optuna.storages import BaseStorage, JournalStorage
from optuna.storages.journal import JournalFileBackend

from .._settings import settings

#: Number of completed trials before the default median pruner starts pruning.
PRUNER_STARTUP_TRIALS = 5


def resolve_storage(storage: str | os.PathLike | BaseStorage | None):
    """The optuna storage and its description (stored with the results).

    A string containing ``://`` is an RDB URL (``sqlite:///tune.db``,
    ``postgresql://user:password@host/db``); any other string or path is a journal file
    (created if missing). The password of a URL is masked in the description.
    """
    if storage is None:
        return None, ""
    if isinstance(storage, BaseStorage):
        return storage, type(storage).__name__
    if isinstance(storage, str | os.PathLike):
        text = os.fspath(storage)
        if "://" in text:
            return text, re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", text)
        return JournalStorage(JournalFileBackend(text)), f"journal file {text}"
    raise TypeError(
        f"storage must be None, an RDB URL, a journal file path or an optuna storage, "
        f"got {type(storage).__name__}."
    )


def default_pruner(max_epochs: int) -> optuna.pruners.BasePruner:
    """Median pruning once 5 trials finished, not during the first fifth of training."""
    return optuna.pruners.MedianPruner(
        n_startup_trials=PRUNER_STARTUP_TRIALS, n_warmup_steps=max(1, max_epochs // 5)
    )


def open_study(
    storage,
    *,
    study_name: str,
    direction: str,
    sampler: optuna.samplers.BaseSampler,
    pruner: optuna.pruners.BasePruner,
    tags: dict[str, str],
) -> optuna.Study:
    """Create the study or join the one of that name in ``storage``; ``tags`` must agree.

    ``tags`` (model, metric) are stored as study attributes so that a worker started with a
    different model or metric cannot add its trials to the study.
    """
    study = optuna.create_study(
        storage=storage,
        study_name=study_name,
        direction=direction,
        sampler=sampler,
        pruner=pruner,
        load_if_exists=True,
    )
    if study.direction.name.lower() != direction:
        raise ValueError(
            f"study {study_name!r} in this storage is set to {study.direction.name.lower()}; "
            f"the metric needs {direction}. Use another study_name."
        )
    for name, value in tags.items():
        existing = study.user_attrs.get(name)
        if existing is None:
            study.set_user_attr(name, value)
        elif existing != value:
            raise ValueError(
                f"study {study_name!r} in this storage was created with {name}={existing!r}, "
                f"not {value!r}. Use another study_name or the same {name}."
            )
    return study


@contextmanager
def quiet_trials():
    """One progress bar over trials; no per-trial epoch bars or training log lines.

    Optuna's per-trial INFO lines stay on at verbosity 3 (debug); warnings (failed trials)
    always show.
    """
    loggers = [logging.getLogger("cellvi"), logging.getLogger("optuna")]
    levels = [lg.level for lg in loggers]
    progress = settings.progress_bar
    if settings.verbosity < 3:
        for lg in loggers:
            lg.setLevel(logging.WARNING)
    settings.progress_bar = False
    try:
        yield progress
    finally:
        settings.progress_bar = progress
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def param_importances(study: optuna.Study, seed: int) -> dict[str, float]:
    """fANOVA importances of the searched parameters (empty with fewer than 2 results)."""
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if len(complete) < 2:
        return {}
    evaluator = optuna.importance.FanovaImportanceEvaluator(seed=seed)
    try:
        importances = optuna.importance.get_param_importances(study, evaluator=evaluator)
    except (RuntimeError, ValueError):  # e.g. no parameter varies among completed trials
        return {}
    return {name: float(value) for name, value in importances.items()}
