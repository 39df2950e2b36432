"""A finished study as h5ad-safe ``.uns`` content: numbers, strings, arrays and dicts only."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import optuna

from ..lifecycle.payload import h5ad_safe


def _column(values: list[Any]) -> np.ndarray:
    """A typed column; missing entries (``None``) become NaN (numbers) or ``""`` (strings)."""
    present = [v for v in values if v is not None]
    if present and all(isinstance(v, bool | np.bool_) for v in present):
        if len(present) == len(values):
            return np.asarray(values, dtype=bool)
    elif present and all(isinstance(v, int | np.integer) for v in present):
        if len(present) == len(values):
            return np.asarray(values, dtype=np.int64)
        return np.asarray([np.nan if v is None else v for v in values], dtype=np.float64)
    elif present and all(isinstance(v, int | float | np.number) for v in present):
        return np.asarray([np.nan if v is None else v for v in values], dtype=np.float64)
    return np.asarray(["" if v is None else str(v) for v in values], dtype=str)


def trials_table(trials: Sequence[optuna.trial.FrozenTrial], names: Sequence[str]):
    """One column per field: ``number``, ``state``, ``value``, ``duration_s``, ``epochs``
    (last reported epoch; 0 when none), then the parameters and numeric user attributes."""
    params = list(names) + sorted({p for t in trials for p in t.params} - set(names))
    attrs = sorted(
        {
            name
            for t in trials
            for name, v in t.user_attrs.items()
            if isinstance(v, int | float) and not isinstance(v, bool)
        }
    )
    table: dict[str, np.ndarray] = {
        "number": np.asarray([t.number for t in trials], dtype=np.int64),
        "state": np.asarray([t.state.name for t in trials], dtype=str),
        "value": np.asarray(
            [np.nan if t.value is None else t.value for t in trials], dtype=np.float64
        ),
        "duration_s": np.asarray(
            [np.nan if t.duration is None else t.duration.total_seconds() for t in trials],
            dtype=np.float64,
        ),
        "epochs": np.asarray([max(t.intermediate_values, default=0) for t in trials], np.int64),
    }
    for name in params:
        table[f"param_{name}"] = _column([t.params.get(name) for t in trials])
    for name in attrs:
        table[name] = _column([t.user_attrs.get(name) for t in trials])
    return table


def summarize(
    study: optuna.Study,
    *,
    metric: str,
    names: Sequence[str],
    importances: dict[str, float],
    extra: dict[str, Any],
) -> dict[str, Any]:
    """The results dict stored in ``.uns``; ``study`` must have a completed trial."""
    trials = study.get_trials(deepcopy=False)
    counts = {
        state.name.lower(): int(sum(t.state == state for t in trials))
        for state in optuna.trial.TrialState
    }
    best = study.best_trial
    return h5ad_safe(
        {
            "best_params": dict(best.params),
            "best_value": float(best.value),
            "best_trial": int(best.number),
            "metric": metric,
            "direction": study.direction.name.lower(),
            "study_name": study.study_name,
            "n_trials": counts,
            "trials": trials_table(trials, names),
            "param_importances": importances,
            **extra,
        }
    )
