"""Reading the fields a registry refers to (count matrix, ``adata.obs`` columns) with checks."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd
from anndata import AnnData

_MAX_LISTED = 20
_CONTINUOUS_FIX = (
    "Fill them, e.g. with the mean of the finite values (`values = adata.obs[{key}].replace("
    "[np.inf, -np.inf], np.nan)`, then `adata.obs[{key}] = values.fillna(values.mean())`), or "
    "remove those cells."
)
_SIZE_FACTOR_FIX = (
    "Size factors must be positive and finite: recompute them (after removing zero-count cells "
    "with `sc.pp.filter_cells(adata, min_counts=1)`), or leave size_factor_key=None so that the "
    "model uses library sizes."
)


def quoted_list(values: Iterable, *, limit: int = _MAX_LISTED) -> str:
    """``'a', 'b', 'c'`` with at most `limit` items, then how many more there are."""
    values = [str(value) for value in values]
    listed = ", ".join(repr(value) for value in values[:limit])
    if len(values) > limit:
        listed += f", … ({len(values) - limit:,} more)"
    return listed or "(none)"


def obs_column(adata: AnnData, key: str, *, role: str) -> pd.Series:
    """The column `key` of ``adata.obs``; a missing column raises an error suggesting names."""
    if not isinstance(key, str):
        raise TypeError(f"{role} must be the name (str) of an adata.obs column, got {key!r}.")
    if key in adata.obs.columns:
        return adata.obs[key]
    columns = [str(column) for column in adata.obs.columns]
    lowered = {column.lower(): column for column in columns}
    close = difflib.get_close_matches(key, columns, n=3, cutoff=0.6)
    if key.lower() in lowered and lowered[key.lower()] not in close:
        close.insert(0, lowered[key.lower()])
    suggestion = f" Did you mean {quoted_list(close)}?" if close else ""
    raise KeyError(
        f"{role} {key!r} is not a column of adata.obs.{suggestion} "
        f"Available columns: {quoted_list(columns)}."
    )


def _as_categorical(column: pd.Series, *, key: str, role: str) -> pd.Categorical:
    """The column as a categorical; missing values raise an error that explains how to fill them."""
    if isinstance(column.dtype, pd.CategoricalDtype):
        categorical = column.array
        fill = f"adata.obs[{key!r}].cat.add_categories('unknown').fillna('unknown')"
    else:
        # pandas sorts the unique values in their natural order (numbers numerically).
        categorical = pd.Categorical(column)
        fill = f"adata.obs[{key!r}].fillna('unknown')"
    n_missing = int(np.count_nonzero(categorical.codes < 0))
    if n_missing:
        raise ValueError(
            f"{role} {key!r} is missing (NaN) in {n_missing:,} of {len(column):,} cells. Give "
            f"them their own category with `adata.obs[{key!r}] = {fill}`, or drop them with "
            f"`adata = adata[adata.obs[{key!r}].notna()].copy()`."
        )
    return categorical


def categories_of(column: pd.Series, *, key: str, role: str) -> np.ndarray:
    """The categories present in `column`, as strings in categorical order.

    A categorical column keeps its category order (unused categories are dropped); other columns
    use their sorted unique values.
    """
    categorical = _as_categorical(column, key=key, role=role)
    names = categorical.remove_unused_categories().categories.astype(str)
    if names.has_duplicates:
        duplicated = names[names.duplicated()].unique()
        raise ValueError(
            f"{role} {key!r} has distinct values that read the same as text "
            f"({quoted_list(duplicated)}); make the values unique strings, e.g. "
            f"`adata.obs[{key!r}] = adata.obs[{key!r}].astype(str)`."
        )
    return np.asarray(names, dtype=object)


def encode_categories(
    column: pd.Series, categories: np.ndarray, *, key: str, role: str
) -> np.ndarray:
    """Integer codes (int64) of `column` following the registered `categories`."""
    categorical = _as_categorical(column, key=key, role=role)
    known = pd.Index(np.asarray(categories).astype(str))
    # Map each of the column's own categories once, then index by code: fast for many cells.
    lookup = known.get_indexer(categorical.categories.astype(str))
    codes = lookup[categorical.codes]
    unknown = codes < 0
    if unknown.any():
        names = categorical.categories.astype(str)[np.unique(categorical.codes[unknown])]
        raise ValueError(
            f"{role} {key!r} has values that were not registered: {quoted_list(names)} "
            f"({int(np.count_nonzero(unknown)):,} cells). Registered categories: "
            f"{quoted_list(known)}. Map those cells to a registered category or remove them."
        )
    return codes.astype(np.int64, copy=False)


def numeric_column(
    column: pd.Series, *, key: str, role: str, fix: str, positive: bool = False
) -> np.ndarray:
    """The column as float64, checked to be numeric and finite (and positive if asked).

    `fix` is appended to error messages; ``{key}`` in it is replaced by the quoted key.
    """
    if not pd.api.types.is_numeric_dtype(column.dtype):
        raise TypeError(
            f"{role} {key!r} has dtype {column.dtype}, but must be numeric; convert it with "
            f"`adata.obs[{key!r}] = pd.to_numeric(adata.obs[{key!r}])`."
        )
    values = column.to_numpy(dtype=np.float64, na_value=np.nan)
    finite = np.isfinite(values)
    bad = ~finite | (values <= 0) if positive else ~finite
    if bad.any():
        problems = {
            "NaN": np.count_nonzero(np.isnan(values)),
            "infinite": np.count_nonzero(np.isinf(values)),
            "zero or negative": np.count_nonzero(finite & (values <= 0)) if positive else 0,
        }
        found = ", ".join(f"{count:,} {kind}" for kind, count in problems.items() if count)
        raise ValueError(
            f"{role} {key!r} has invalid values in {np.count_nonzero(bad):,} of {values.size:,} "
            f"cells ({found}). " + fix.format(key=repr(key))
        )
    return values


def check_anndata(adata: object) -> None:
    """Raise :class:`TypeError` unless `adata` is an :class:`~anndata.AnnData`."""
    if isinstance(adata, AnnData):
        return
    # Compare by name so that mudata need not be imported just to give a better message.
    if type(adata).__name__ == "MuData" or type(adata).__module__.startswith("mudata"):
        raise TypeError(
            "MuData is not yet supported; pass one modality, e.g. `mdata.mod['rna']`, instead."
        )
    raise TypeError(f"Expected an AnnData, got {type(adata).__name__}.")


def count_matrix(adata: AnnData, layer: str | None) -> object:
    """``adata.layers[layer]``, or ``adata.X`` when `layer` is ``None`` or ``""``."""
    if not layer:
        return adata.X
    if not isinstance(layer, str):
        raise TypeError(f"layer must be the name (str) of a layer or None, got {layer!r}.")
    if layer not in adata.layers:
        hint = "pass layer=None to use adata.X" if not adata.layers else "pass one of those"
        raise KeyError(
            f"Layer {layer!r} not found; available layers: {quoted_list(adata.layers)} ({hint})."
        )
    return adata.layers[layer]


def category_codes(adata: AnnData, key: str, categories: np.ndarray, *, role: str) -> np.ndarray:
    """Codes (int64) of column `key` following `categories`; all zeros when `key` is ``""``."""
    if not key:
        return np.zeros(adata.n_obs, dtype=np.int64)
    return encode_categories(obs_column(adata, key, role=role), categories, key=key, role=role)


def continuous_values(adata: AnnData, keys: Sequence[str]) -> np.ndarray:
    """The continuous covariates as a float32 ``(n_cells, len(keys))`` array."""
    role = "continuous covariate"
    columns = [
        numeric_column(obs_column(adata, key, role=role), key=key, role=role, fix=_CONTINUOUS_FIX)
        for key in keys
    ]
    if not columns:
        return np.zeros((adata.n_obs, 0), dtype=np.float32)
    return np.column_stack(columns).astype(np.float32)


def size_factor_values(adata: AnnData, key: str) -> np.ndarray:
    """The size factors in column `key` as float64, checked to be positive and finite."""
    role = "size_factor_key"
    column = obs_column(adata, key, role=role)
    return numeric_column(column, key=key, role=role, fix=_SIZE_FACTOR_FIX, positive=True)
