"""Hyperparameter declarations read off a module's keyword-only constructor options."""

from __future__ import annotations

import inspect
from collections.abc import Mapping

from .contract import Hyperparameter

#: Constructor arguments fixed by the registered data, never chosen by a user.
DATA_SHAPE_ARGS = ("n_batch", "n_labels", "n_cats_per_cov", "n_cont")

#: The learning rate, an option of every family trained by the shared training path.
LR = Hyperparameter(1e-3, ("float_log", 1e-4, 1e-2))


def module_options(cls: type) -> tuple[str, ...]:
    """The keyword-only options of ``cls.__init__`` a user chooses."""
    return tuple(
        name
        for name, p in inspect.signature(cls.__init__).parameters.items()
        if p.kind is inspect.Parameter.KEYWORD_ONLY and name not in DATA_SHAPE_ARGS
    )


def hyperparameters(
    cls: type, search: Mapping[str, tuple], training: Mapping[str, Hyperparameter]
) -> dict[str, Hyperparameter]:
    """Every module option with its default (and search range where ``search`` has one), then
    the training options."""
    params = inspect.signature(cls.__init__).parameters
    out = {
        name: Hyperparameter(params[name].default, search.get(name)) for name in module_options(cls)
    }
    out.update(training)
    unknown = set(search) - set(out)
    if unknown:
        raise ValueError(f"search ranges for unknown options {sorted(unknown)} of {cls.__name__}")
    return out


def data_shape(registry: Mapping, n_vars: int) -> dict:
    """The module arguments fixed by the registered data."""
    cat_keys = list(registry["categorical_covariate_keys"])
    cats = registry.get("categorical_covariate_categories", {})
    return {
        "n_input": int(n_vars),
        "n_batch": int(registry["n_batch"]),
        "n_labels": int(registry["n_labels"]),
        "n_cats_per_cov": [len(cats[k]) for k in cat_keys],
        "n_cont": len(registry["continuous_covariate_keys"]),
    }
