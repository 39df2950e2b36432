"""``config.json`` of a model folder: payload values as plain JSON and back."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

# JSON cannot tell the dtype of an empty list; these fields are numeric even when empty
# (every other empty list is an empty list of names, as `h5ad_safe` writes it).
_EMPTY_INT_FIELDS = {("validation_indices",)}
_EMPTY_FLOAT_PREFIXES = {
    ("history",),
    ("registry", "library_log_means"),
    ("registry", "library_log_vars"),
}


def to_json(value: Any, path: tuple[str, ...] = ()) -> Any:
    """Payload values as plain JSON values: arrays to lists, numpy scalars to Python ones."""
    if isinstance(value, Mapping):
        return {str(k): to_json(v, (*path, str(k))) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return [to_json(v, path) for v in value.tolist()]
    if isinstance(value, list | tuple):
        return [to_json(v, path) for v in value]
    if isinstance(value, np.generic):
        return to_json(value.item(), path)
    if isinstance(value, bytes):
        return value.decode()
    if value is None or isinstance(value, str | bool | int | float):
        return value
    raise TypeError(
        f"The model field {'/'.join(path)!r} holds a {type(value).__name__}, which cannot be "
        "written to config.json; the payload was modified."
    )


def from_json(value: Any, path: tuple[str, ...] = ()) -> Any:
    """Inverse of :func:`to_json`: lists back to numpy arrays (names as object arrays of str)."""
    if isinstance(value, dict):
        return {k: from_json(v, (*path, k)) for k, v in value.items()}
    if isinstance(value, list):
        return _list_to_array(value, path)
    return value


def _list_to_array(values: list, path: tuple[str, ...]) -> np.ndarray:
    if not values:
        if path in _EMPTY_INT_FIELDS:
            return np.zeros(0, dtype=np.int64)
        if any(path[: len(prefix)] == prefix for prefix in _EMPTY_FLOAT_PREFIXES):
            return np.zeros(0, dtype=np.float64)
        return np.empty(0, dtype=object)
    if all(isinstance(v, str) for v in values):
        array = np.empty(len(values), dtype=object)  # how h5ad gives string arrays back
        array[:] = values
        return array
    if all(isinstance(v, bool) for v in values):
        return np.asarray(values, dtype=bool)
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return np.asarray(values, dtype=np.int64)
    if all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
        return np.asarray(values, dtype=np.float64)
    if all(isinstance(v, list) and v for v in values):
        # a matrix (e.g. a protein batch mask): rows of one shape and numeric type
        rows = [_list_to_array(v, path) for v in values]
        if len({(r.shape, r.dtype) for r in rows}) == 1 and rows[0].dtype != object:
            return np.stack(rows)
    raise ValueError(
        f"config.json field {'/'.join(path)!r} is a list of mixed or nested values, which no "
        "cellvi model has; the file is corrupted or was modified."
    )
