"""Search spaces: ``{"name": ("kind", ...)}`` specs, checked once, then asked of each trial.

Kinds: ``("int", low, high)``, ``("int_log", low, high)``, ``("float", low, high)``,
``("float_log", low, high)`` (bounds inclusive; ``*_log`` samples on a log scale) and
``("cat", [choice, ...])``. ``int`` and ``float`` take an optional fourth element, the step.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import optuna

KINDS = ("int", "int_log", "float", "float_log", "cat")

#: Arguments of a training function that a search space or fixed settings may never set.
RESERVED = ("adata", "mdata", "key_added", "callbacks", "copy")


@dataclass(frozen=True)
class Dimension:
    """One searched hyperparameter."""

    name: str
    kind: str
    low: float | None = None
    high: float | None = None
    step: float | None = None
    choices: tuple = ()

    def suggest(self, trial: optuna.Trial) -> Any:
        if self.kind == "cat":
            return trial.suggest_categorical(self.name, list(self.choices))
        log = self.kind.endswith("_log")
        if self.kind.startswith("int"):
            step = int(self.step or 1)
            return trial.suggest_int(self.name, int(self.low), int(self.high), step=step, log=log)
        return trial.suggest_float(self.name, self.low, self.high, step=self.step, log=log)

    def describe(self) -> dict[str, Any]:
        """h5ad-safe description (stored with the results)."""
        if self.kind == "cat":
            return {"kind": "cat", "choices": np.asarray([str(c) for c in self.choices])}
        out = {"kind": self.kind, "low": self.low, "high": self.high}
        return out if self.step is None else {**out, "step": self.step}


def _bounded(name: str, kind: str, spec: Sequence) -> Dimension:
    if len(spec) not in (3, 4):
        raise ValueError(
            f"search_space[{name!r}] = {tuple(spec)!r}: a {kind!r} range needs (kind, low, high) "
            "or (kind, low, high, step)."
        )
    cast = int if kind.startswith("int") else float
    try:
        low, high = cast(spec[1]), cast(spec[2])
        step = None if len(spec) == 3 else cast(spec[3])
    except (TypeError, ValueError):
        raise ValueError(
            f"search_space[{name!r}] = {tuple(spec)!r}: bounds must be numbers."
        ) from None
    if not low <= high:
        raise ValueError(f"search_space[{name!r}]: low ({low}) must not exceed high ({high}).")
    if kind.endswith("_log") and (low <= 0 or step is not None):
        raise ValueError(
            f"search_space[{name!r}]: a log range needs low > 0 and no step, got {tuple(spec)!r}."
        )
    if step is not None and step <= 0:
        raise ValueError(f"search_space[{name!r}]: step must be positive, got {step}.")
    return Dimension(name, kind, low, high, step)


def parse_dimension(name: str, spec: Any) -> Dimension:
    """One ``(kind, ...)`` entry as a :class:`Dimension`, or a clear error."""
    if isinstance(spec, str) or not isinstance(spec, Sequence) or not spec:
        raise ValueError(
            f"search_space[{name!r}] = {spec!r}: expected a tuple such as ('int', 5, 30), "
            "('float_log', 1e-4, 1e-2) or ('cat', ['nb', 'zinb'])."
        )
    kind = spec[0]
    if kind not in KINDS:
        raise ValueError(f"search_space[{name!r}]: unknown kind {kind!r}; use one of {KINDS}.")
    if kind != "cat":
        return _bounded(name, kind, spec)
    if len(spec) != 2 or isinstance(spec[1], str) or not isinstance(spec[1], Sequence):
        raise ValueError(f"search_space[{name!r}] = {tuple(spec)!r}: use ('cat', [choice, ...]).")
    choices = tuple(spec[1])
    if not choices:
        raise ValueError(f"search_space[{name!r}]: the list of choices is empty.")
    if any(not isinstance(c, bool | int | float | str) for c in choices):
        raise ValueError(
            f"search_space[{name!r}]: choices must be numbers, booleans or strings (None and "
            f"objects cannot be stored in .uns), got {list(choices)!r}."
        )
    return Dimension(name, "cat", choices=choices)


def tunable_arguments(train: Callable) -> tuple[str, ...]:
    """Keyword arguments of a training function that may be searched or fixed."""
    return tuple(
        name
        for name, p in inspect.signature(train).parameters.items()
        if p.kind is inspect.Parameter.KEYWORD_ONLY and name not in RESERVED
    )


@dataclass(frozen=True)
class SearchSpace:
    """The checked search space of one tuning run."""

    dimensions: tuple[Dimension, ...]

    @classmethod
    def parse(cls, spec: Mapping[str, Any], *, allowed: Sequence[str], model: str) -> SearchSpace:
        if not isinstance(spec, Mapping) or not spec:
            raise ValueError(
                "search_space must be a non-empty dict of argument name -> (kind, ...), "
                "e.g. {'n_latent': ('int', 5, 30)}; None uses the model's default."
            )
        unknown = [name for name in spec if name not in allowed]
        if unknown:
            raise ValueError(
                f"search_space names {unknown} are not arguments of the {model} training "
                f"function that can be tuned; choose from {sorted(allowed)}."
            )
        return cls(tuple(parse_dimension(name, s) for name, s in spec.items()))

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(d.name for d in self.dimensions)

    def suggest(self, trial: optuna.Trial) -> dict[str, Any]:
        return {d.name: d.suggest(trial) for d in self.dimensions}

    def describe(self) -> dict[str, dict[str, Any]]:
        return {d.name: d.describe() for d in self.dimensions}
