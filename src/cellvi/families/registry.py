"""The one registry of model families, and the training verbs registered for them."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

from .contract import ModelFamily

_FAMILIES: dict[str, ModelFamily] = {}
_TRAINERS: dict[str, Callable[..., Any]] = {}
#: ``(data, *, model, **options)``: trains any family (``cv.tl.train``, registered by ``cv.tl``).
_SHARED_TRAINER: list[Callable[..., Any]] = []


def register_family(family: ModelFamily, *, replace: bool = False) -> ModelFamily:
    """Make ``family`` known to every tool; returns it (usable as a module-level statement).

    A name already registered by another family is refused unless ``replace=True``.
    """
    if not isinstance(family, ModelFamily):
        raise TypeError(f"register_family takes a ModelFamily, got {type(family).__name__}.")
    if family.name in _FAMILIES and _FAMILIES[family.name] is not family and not replace:
        raise ValueError(
            f"a model family named {family.name!r} is already registered; pick another name "
            "or pass replace=True."
        )
    _FAMILIES[family.name] = family
    return family


def unregister_family(name: str) -> None:
    """Forget a family (for tests and notebooks that redefine one)."""
    _FAMILIES.pop(name, None)
    _TRAINERS.pop(name, None)


def family_names() -> list[str]:
    return sorted(_FAMILIES)


def families() -> list[ModelFamily]:
    return [_FAMILIES[n] for n in family_names()]


def get_family(name: str) -> ModelFamily:
    """The family registered as ``name``, or an error listing the known ones."""
    try:
        return _FAMILIES[str(name)]
    except KeyError:
        raise KeyError(
            f"No model family {name!r} is registered in this version of cellvi (known: "
            f"{family_names()}); a custom family must be registered with "
            "`cv.families.register_family` before its models are used."
        ) from None


def family_of(payload: Mapping[str, Any]) -> ModelFamily:
    """The family of a stored model payload (its ``model`` field)."""
    return get_family(str(payload["model"]))


def register_trainer(name: str, train: Callable[..., Any]) -> None:
    """Register the training function of family ``name`` (``cv.tl`` registers its verbs here,
    so that lower layers such as tuning can train a family without importing ``cv.tl``)."""
    get_family(name)
    _TRAINERS[name] = train


def register_shared_trainer(train: Callable[..., Any]) -> None:
    """Register the training path shared by every family, ``train(data, *, model, ...)``
    (``cv.tl.train``): a family without a verb of its own trains through it."""
    _SHARED_TRAINER[:] = [train]


def trainer(name: str) -> Callable[..., Any]:
    """The training function of family ``name``: its registered verb, or the shared training
    path with ``model=name``."""
    family = get_family(name)
    if name in _TRAINERS:
        return _TRAINERS[name]
    if not _SHARED_TRAINER:
        raise KeyError(
            f"No training function is registered for the {family.title} family; import "
            "cellvi.tl (it registers cv.tl.train for every family) or register one with "
            "`cv.families.register_trainer`."
        )
    shared = _SHARED_TRAINER[0]

    def train(data, **options):
        return shared(data, model=name, **options)

    train.__name__ = train.__qualname__ = f"train_{name}"
    train.__signature__ = _signature(shared, family)
    return train


def _signature(shared: Callable[..., Any], family: ModelFamily) -> inspect.Signature:
    """The shared path's signature for one family: no ``model``, and the family's options as
    keyword-only arguments with its declared defaults (what tuning reads as tunable)."""
    signature = inspect.signature(shared)
    declared = family.hyperparameters
    keyword = inspect.Parameter.KEYWORD_ONLY
    params = [
        p.replace(default=declared[n].default) if n in declared else p
        for n, p in signature.parameters.items()
        if n != "model" and p.kind is not inspect.Parameter.VAR_KEYWORD
    ]
    shown = {p.name for p in params}
    params += [inspect.Parameter(n, keyword, default=h.default) for n, h in declared.items()
               if n not in shown]  # fmt: skip
    return signature.replace(parameters=params)
