"""The stored form of a registry: its fields, format version, checks and comparison.

A registry holds only values that h5ad files store faithfully (str, int, numpy arrays and nested
dicts; never ``None``), so that it survives ``adata.write_h5ad`` / ``anndata.read_h5ad``. An
unregistered key is the empty string ``""``; lists of keys or categories are 1-D object arrays of
str, which h5ad stores as string arrays even when empty (they read back as empty object arrays).
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Mapping, Sequence

import numpy as np

REGISTRY_KEY = "cellvi_registry"
REGISTRY_FORMAT_VERSION = 1
FIELDS = (
    "format_version",
    "cellvi_version",
    "layer",
    "batch_key",
    "labels_key",
    "size_factor_key",
    "categorical_covariate_keys",
    "continuous_covariate_keys",
    "batch_categories",
    "labels_categories",
    "categorical_covariate_categories",
    "n_cells",
    "n_vars",
    "n_batch",
    "n_labels",
    "n_zero_count_cells",
    "library_log_means",
    "library_log_vars",
)
_RERUN = "re-run `cv.pp.setup_registry(adata, ...)` to rebuild it"


def cellvi_version() -> str:
    """Installed cellvi version (``"0.1.0"`` when running from a source tree)."""
    try:
        return importlib.metadata.version("cellvi")
    except importlib.metadata.PackageNotFoundError:
        return "0.1.0"


def str_array(values: Sequence[str]) -> np.ndarray:
    """A 1-D object array of str (an h5ad-safe list of names)."""
    array = np.empty(len(values), dtype=object)
    array[:] = [str(value) for value in values]
    return array


def str_list(values: np.ndarray) -> list[str]:
    """The names stored by :func:`str_array`, also after an h5ad round trip (bytes or str)."""
    return [value.decode() if isinstance(value, bytes) else str(value) for value in values]


def check_registry(registry: object, *, where: str) -> None:
    """Raise :class:`ValueError` if `registry` is not a complete registry this cellvi can read.

    Parameters
    ----------
    registry
        The candidate registry.
    where
        Where it came from, for messages (e.g. ``"adata.uns['cellvi_registry']"``).
    """
    if not isinstance(registry, Mapping):
        raise ValueError(f"{where} is not a cellvi registry (a dict); {_RERUN}.")
    version = registry.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int | np.integer) or version < 1:
        raise ValueError(f"{where} is corrupted (no valid format_version); {_RERUN}.")
    if version > REGISTRY_FORMAT_VERSION:
        raise ValueError(
            f"{where} has registry format {version} (written by cellvi "
            f"{registry.get('cellvi_version', 'unknown')}), but this cellvi reads format "
            f"{REGISTRY_FORMAT_VERSION} at most; upgrade cellvi (`pip install -U cellvi`)."
        )
    missing = [field for field in FIELDS if field not in registry]
    if missing:
        raise ValueError(f"{where} is corrupted (missing fields: {', '.join(missing)}); {_RERUN}.")


def registries_equal(first: object, second: object) -> bool:
    """Whether two registries (or registry values) hold the same content.

    Tolerates the type changes of an h5ad round trip: numpy vs Python scalars and str arrays
    read back with object dtype.
    """
    if isinstance(first, Mapping) or isinstance(second, Mapping):
        return (
            isinstance(first, Mapping)
            and isinstance(second, Mapping)
            and set(first) == set(second)
            and all(registries_equal(first[key], second[key]) for key in first)
        )
    if isinstance(first, np.ndarray) or isinstance(second, np.ndarray):
        first, second = np.asarray(first), np.asarray(second)
        if first.shape != second.shape:
            return False
        if first.dtype.kind in "OUS" or second.dtype.kind in "OUS":
            return str_list(first.ravel()) == str_list(second.ravel())
        return bool(np.array_equal(first, second, equal_nan=True))
    if isinstance(first, str) != isinstance(second, str):
        return False
    return bool(first == second)
