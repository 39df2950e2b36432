"""Which model families each analysis function supports, with one clear error otherwise."""

from __future__ import annotations

from ._common import LoadedModel


def require_model(model: LoadedModel, supported: tuple[str, ...], what: str) -> str:
    """The model family of ``model``; an error naming the supported ones if it is not one."""
    kind = str(model.payload["model"])
    if kind not in supported:
        raise NotImplementedError(
            f"{what} is not available for {kind!r} models yet (model at .uns[{model.key!r}]); "
            f"supported: {list(supported)}."
        )
    return kind
