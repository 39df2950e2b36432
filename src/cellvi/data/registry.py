"""The data registry: which parts of an AnnData a model reads, checked and recorded in ``.uns``.

:func:`build_registry` validates the counts and ``adata.obs`` columns a model will use and
describes them in a dict that ``cv.pp.setup_registry`` stores in ``adata.uns["cellvi_registry"]``.
The dict only holds h5ad-safe values (see :mod:`cellvi.data._format`), with these fields:

``format_version``, ``cellvi_version``
    Registry format (int) and the cellvi version that wrote it (str).
``layer``, ``batch_key``, ``labels_key``, ``size_factor_key``
    Registered layer and obs columns (str; ``""`` = not registered, for ``layer``: ``adata.X``).
``categorical_covariate_keys``, ``continuous_covariate_keys``
    Registered covariate columns (1-D str arrays, possibly empty).
``batch_categories``, ``labels_categories``
    Categories in code order (str arrays); ``["_all"]`` when no column is registered.
``categorical_covariate_categories``
    Dict of covariate column -> its categories in code order.
``n_cells``, ``n_vars``, ``n_batch``, ``n_labels``, ``n_zero_count_cells``
    Sizes (int).
``library_log_means``, ``library_log_vars``
    Per batch, mean and variance of the log total counts of its cells (float64 arrays of length
    ``n_batch``); zero-count cells count as total 1, i.e. log 0.

A model's registry (in ``.uns[key]["registry"]``) may also hold

``unlabeled_category``
    For models that learn from partly labelled cells (scANVI): the labels category a cell
    without a label carries (str). Data without the labels column then reads as all cells
    unlabelled, and a label the model does not know is refused with this category as the fix.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import numpy as np
from anndata import AnnData

from ._extract import RegisteredData, extract_registered_data
from ._fields import (
    categories_of,
    category_codes,
    check_anndata,
    continuous_values,
    count_matrix,
    obs_column,
    quoted_list,
    size_factor_values,
)
from ._format import (
    FIELDS,
    REGISTRY_FORMAT_VERSION,
    REGISTRY_KEY,
    cellvi_version,
    check_registry,
    registries_equal,
    str_array,
)
from .backed import BackedCounts, backed_count_stats, is_backed
from .validation import (
    cell_totals,
    count_zero_genes,
    matrix_source,
    user_stacklevel,
    validate_counts,
    warn_zero_count_cells,
    warn_zero_genes,
)

__all__ = [
    "REGISTRY_FORMAT_VERSION",
    "REGISTRY_KEY",
    "RegisteredData",
    "build_registry",
    "extract_registered_data",
    "get_registry",
    "registries_equal",
]

# The one category used when no batch or labels column is registered.
_ALL = "_all"


def _key_list(keys: Sequence[str] | None, *, name: str) -> list[str]:
    if keys is None:
        return []
    if isinstance(keys, str):
        raise TypeError(f"{name} must be a list of obs column names; use [{keys!r}].")
    keys = list(keys)
    for key in keys:
        if not isinstance(key, str):
            raise TypeError(f"{name} must contain obs column names (str), got {key!r}.")
    return keys


def _check_roles(roles: Mapping[str, list[str]]) -> None:
    """Each obs column may fill one role only (e.g. not both batch and covariate)."""
    seen: dict[str, str] = {}
    for role, keys in roles.items():
        for key in keys:
            if not isinstance(key, str):
                raise TypeError(f"{role} must name an adata.obs column (str), got {key!r}.")
            if key in seen:
                where = f"twice in {role}" if seen[key] == role else f"as {seen[key]} and {role}"
                raise ValueError(
                    f"obs column {key!r} is used {where}; each column can fill one role only, "
                    "so remove it from all but one."
                )
            seen[key] = role


def _categories(adata: AnnData, key: str | None, *, role: str) -> np.ndarray:
    if key is None:
        return str_array([_ALL])
    return categories_of(obs_column(adata, key, role=role), key=key, role=role)


def _library_log_stats(
    totals: np.ndarray, codes: np.ndarray, n_batch: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per-batch mean and variance of log library size; empty cells count as size 1 (log 0)."""
    logs = np.log(np.maximum(totals, 1.0))
    n_cells = np.bincount(codes, minlength=n_batch)
    means = np.bincount(codes, weights=logs, minlength=n_batch) / n_cells
    squares = np.bincount(codes, weights=(logs - means[codes]) ** 2, minlength=n_batch)
    return means, squares / n_cells


def _check_unique_genes(adata: AnnData) -> None:
    """Genes are matched by name (new data, query mapping), so names must be unique."""
    names = adata.var_names
    if names.has_duplicates:
        duplicated = names[names.duplicated()].unique()
        raise ValueError(
            f"adata.var_names has {duplicated.size:,} duplicated gene name(s) "
            f"({quoted_list(duplicated, limit=5)}); genes are matched by name, so make them "
            "unique with `adata.var_names_make_unique()` (or aggregate the duplicates)."
        )


def _warn_single_cell_batches(codes: np.ndarray, categories: np.ndarray, key: str) -> None:
    singles = categories[np.bincount(codes, minlength=categories.size) == 1]
    if singles.size:
        warnings.warn(
            f"{singles.size:,} batch(es) of batch_key {key!r} have a single cell: "
            f"{quoted_list(singles)}. They are kept, but per-batch estimates from one cell are "
            "unreliable; consider merging them into a larger batch.",
            UserWarning,
            stacklevel=user_stacklevel(),
        )


def build_registry(
    adata: AnnData,
    *,
    layer: str | None = None,
    batch_key: str | None = None,
    labels_key: str | None = None,
    size_factor_key: str | None = None,
    categorical_covariate_keys: Sequence[str] | None = None,
    continuous_covariate_keys: Sequence[str] | None = None,
) -> dict:
    """Validate the registered fields of `adata` and describe them in a registry dict.

    `adata` is never modified. Warns about zero-count cells, all-zero genes and batches that
    have a single cell, which are allowed.

    Parameters
    ----------
    adata
        Annotated data matrix with raw counts.
    layer
        Layer with the raw counts; ``None`` uses ``adata.X``.
    batch_key
        ``adata.obs`` column with the batch of each cell.
    labels_key
        ``adata.obs`` column with cell labels (e.g. cell types).
    size_factor_key
        ``adata.obs`` column with positive size factors.
    categorical_covariate_keys
        ``adata.obs`` columns with further categorical covariates.
    continuous_covariate_keys
        ``adata.obs`` columns with further numeric covariates.

    Returns
    -------
    The registry; see the module documentation for its fields.
    """
    check_anndata(adata)
    # An empty string is how the registry spells "not registered"; accept it as input too.
    batch_key, labels_key, size_factor_key = (
        batch_key or None,
        labels_key or None,
        size_factor_key or None,
    )
    cat_keys = _key_list(categorical_covariate_keys, name="categorical_covariate_keys")
    cont_keys = _key_list(continuous_covariate_keys, name="continuous_covariate_keys")
    roles = {"batch_key": batch_key, "labels_key": labels_key, "size_factor_key": size_factor_key}
    roles = {role: [key] for role, key in roles.items() if key is not None}
    roles |= {"categorical_covariate_keys": cat_keys, "continuous_covariate_keys": cont_keys}
    _check_roles(roles)
    if adata.n_obs == 0 or adata.n_vars == 0:
        raise ValueError(f"adata has {adata.n_obs} cells and {adata.n_vars} genes; need both.")
    _check_unique_genes(adata)
    matrix = count_matrix(adata, layer)
    registry = _register_obs(adata, batch_key, labels_key, cat_keys, cont_keys)
    if size_factor_key is not None:
        size_factor_values(adata, size_factor_key)
    registry |= _register_counts(adata, matrix, layer, batch_key, registry["batch_categories"])
    registry |= {
        "format_version": REGISTRY_FORMAT_VERSION,
        "cellvi_version": cellvi_version(),
        "layer": layer or "",
        "size_factor_key": size_factor_key or "",
    }
    return {field: registry[field] for field in FIELDS}


def _register_obs(
    adata: AnnData,
    batch_key: str | None,
    labels_key: str | None,
    cat_keys: list[str],
    cont_keys: list[str],
) -> dict:
    """Registry fields describing ``adata.obs``; checks every registered column."""
    batch_categories = _categories(adata, batch_key, role="batch_key")
    labels_categories = _categories(adata, labels_key, role="labels_key")
    role = "categorical covariate"
    cov_categories = {key: _categories(adata, key, role=role) for key in cat_keys}
    continuous_values(adata, cont_keys)
    return {
        "batch_key": batch_key or "",
        "labels_key": labels_key or "",
        "categorical_covariate_keys": str_array(cat_keys),
        "continuous_covariate_keys": str_array(cont_keys),
        "batch_categories": batch_categories,
        "labels_categories": labels_categories,
        "categorical_covariate_categories": cov_categories,
        "n_batch": int(batch_categories.size),
        "n_labels": int(labels_categories.size),
    }


def _register_counts(
    adata: AnnData,
    matrix: object,
    layer: str | None,
    batch_key: str | None,
    batch_categories: np.ndarray,
) -> dict:
    """Registry fields describing the counts; validates them, then warns about odd data."""
    source = matrix_source(layer)
    if is_backed(matrix):  # one pass over blocks of rows read from the file
        n_zero, totals, n_zero_genes = backed_count_stats(
            BackedCounts(matrix, source=source), source=source, available_layers=adata.layers
        )
    else:
        n_zero = validate_counts(matrix, source=source, available_layers=list(adata.layers))
        totals, n_zero_genes = cell_totals(matrix), count_zero_genes(matrix)
    if n_zero == adata.n_obs:
        raise ValueError(
            f"adata.{source} has no counts at all (all {n_zero:,} cells are zero); pass the "
            f"layer that holds the raw counts (layers: {quoted_list(adata.layers)})."
        )
    codes = category_codes(adata, batch_key or "", batch_categories, role="batch_key")
    means, variances = _library_log_stats(totals, codes, batch_categories.size)
    warn_zero_count_cells(n_zero, n_cells=adata.n_obs)
    warn_zero_genes(n_zero_genes, n_vars=adata.n_vars)
    if batch_key:
        _warn_single_cell_batches(codes, batch_categories, batch_key)
    return {
        "n_cells": int(adata.n_obs),
        "n_vars": int(adata.n_vars),
        "n_zero_count_cells": n_zero,
        "library_log_means": means,
        "library_log_vars": variances,
    }


def get_registry(adata: AnnData, key: str = REGISTRY_KEY) -> dict:
    """The registry stored by ``cv.pp.setup_registry``, checked to be complete and readable.

    Parameters
    ----------
    adata
        Annotated data matrix.
    key
        Key of the registry in ``adata.uns``.

    Returns
    -------
    The registry dict (not a copy: do not modify it).
    """
    check_anndata(adata)
    if key not in adata.uns:
        raise KeyError(
            f"adata has no cellvi registry (no adata.uns[{key!r}]); run "
            "`cv.pp.setup_registry(adata, layer=..., batch_key=...)` first."
        )
    registry = adata.uns[key]
    check_registry(registry, where=f"adata.uns[{key!r}]")
    return registry
