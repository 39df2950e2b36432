"""Reading the registered fields of an AnnData into arrays a model can consume."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

from ._fields import (
    category_codes,
    check_anndata,
    continuous_values,
    count_matrix,
    quoted_list,
    size_factor_values,
)
from ._format import check_registry, str_list
from .backed import BackedCounts, backed_count_stats, is_backed
from .validation import check_matrix_type, matrix_source, validate_counts

__all__ = ["RegisteredData", "extract_registered_data"]

_INT32_MAX = np.iinfo(np.int32).max


@dataclass
class RegisteredData:
    """The registered fields of an AnnData as arrays, in cell order.

    Attributes
    ----------
    X
        Counts (cells × genes): a CSR matrix (float32 values, int32 indices unless it has more
        than 2**31 - 1 entries) if the source is sparse, else a C-contiguous float32 array. May
        share memory with the AnnData: do not modify it. For a backed AnnData, a
        :class:`~cellvi.data.backed.BackedCounts` reader of the file instead.
    batch
        Batch code of each cell (int64, ``(n_cells,)``), following the registered categories.
    labels
        Label code of each cell (int64, ``(n_cells,)``).
    cat_covs
        Codes of the categorical covariates (int64, ``(n_cells, n_categorical)``).
    cont_covs
        Continuous covariates (float32, ``(n_cells, n_continuous)``).
    size_factor
        Size factor of each cell (float32, ``(n_cells,)``), or ``None`` when not registered.
    """

    X: sparse.csr_matrix | sparse.csr_array | np.ndarray | BackedCounts
    batch: np.ndarray
    labels: np.ndarray
    cat_covs: np.ndarray
    cont_covs: np.ndarray
    size_factor: np.ndarray | None

    @property
    def n_cells(self) -> int:
        """Number of cells."""
        return int(self.X.shape[0])

    @property
    def n_vars(self) -> int:
        """Number of genes."""
        return int(self.X.shape[1])


def extract_registered_data(
    adata: AnnData,
    registry: dict,
    *,
    var_names: Sequence[str] | pd.Index | None = None,
    validate: bool = True,
) -> RegisteredData:
    """Read the fields named in `registry` from `adata`.

    `adata` may be the registered AnnData or new data checked against a stored registry (e.g.
    held-out cells for a trained model): categories are encoded with the registry's categories,
    and values it does not know are an error.

    Parameters
    ----------
    adata
        Annotated data matrix with the registered layer and obs columns.
    registry
        A registry, e.g. from :func:`~cellvi.data.registry.get_registry`.
    var_names
        Genes the data must have, in this order (e.g. a trained model's genes). If ``None``, only
        the number of genes is checked against the registry.
    validate
        Whether to check that every count is a finite non-negative integer.

    Returns
    -------
    The fields as arrays.
    """
    check_anndata(adata)
    check_registry(registry, where="the registry")
    _check_var_names(adata, var_names, n_vars=int(registry["n_vars"]))
    layer = str(registry["layer"])
    matrix = count_matrix(adata, layer)
    batch = category_codes(
        adata, str(registry["batch_key"]), registry["batch_categories"], role="batch_key"
    )
    labels = label_codes(adata, registry)
    cat_covs = _categorical_covariates(adata, registry)
    cont_covs = continuous_values(adata, str_list(registry["continuous_covariate_keys"]))
    size_factor_key = str(registry["size_factor_key"])
    size_factor = None
    if size_factor_key:
        size_factor = size_factor_values(adata, size_factor_key).astype(np.float32)
    source = matrix_source(layer)
    if is_backed(matrix):  # stays on disk; read in row ranges by BackedData
        X = BackedCounts(matrix, source=source)
        if validate:
            backed_count_stats(X, source=source, available_layers=adata.layers)
    elif validate:
        validate_counts(matrix, source=source, available_layers=list(adata.layers))
        X = _as_float32(matrix)
    else:
        check_matrix_type(matrix, source=source)
        X = _as_float32(matrix)
    return RegisteredData(X, batch, labels, cat_covs, cont_covs, size_factor)


def label_codes(adata: AnnData, registry: dict) -> np.ndarray:
    """Codes of the registered labels column.

    With an ``unlabeled_category`` in the registry (a model trained on partly labelled cells),
    data without the labels column reads as all cells unlabelled, and a value the registry does
    not know is refused with that category as the fix.
    """
    key = str(registry["labels_key"])
    categories = str_list(registry["labels_categories"])
    unlabeled = registry.get("unlabeled_category")
    if not key or unlabeled is None:
        return category_codes(adata, key, registry["labels_categories"], role="labels_key")
    unlabeled = str(unlabeled)
    if key not in adata.obs.columns and unlabeled in categories:
        return np.full(adata.n_obs, categories.index(unlabeled), dtype=np.int64)
    if key not in adata.obs.columns:
        raise KeyError(
            f"labels_key {key!r} is not a column of adata.obs, and the model was trained with "
            f"every cell labelled (no {unlabeled!r} cells), so it cannot read cells without a "
            f"label: add the column, or map the data with `cv.tl.map_query`, which reads a "
            f"query without labels as all {unlabeled!r}."
        )
    values = adata.obs[key].astype(str)
    new = sorted(set(values.unique()) - set(categories) - {unlabeled})
    if new:
        known = [c for c in categories if c != unlabeled]
        raise ValueError(
            f"labels_key {key!r} has labels the model was not trained on: {quoted_list(new)}. "
            f"It knows {quoted_list(known)}. Set the other cells to {unlabeled!r} to have them "
            f"predicted: `obs = adata.obs[{key!r}].astype(str); adata.obs[{key!r}] = "
            f"obs.where(obs.isin(known), {unlabeled!r})` with `known` the labels above."
        )
    if unlabeled not in categories:
        if (values == unlabeled).any():
            raise ValueError(
                f"labels_key {key!r} has {unlabeled!r} cells, but the model was trained with "
                f"every cell labelled and has no code for them: map the data with "
                f"`cv.tl.map_query`, which adds the unlabelled category."
            )
    return category_codes(adata, key, registry["labels_categories"], role="labels_key")


def _categorical_covariates(adata: AnnData, registry: dict) -> np.ndarray:
    keys = str_list(registry["categorical_covariate_keys"])
    categories = registry["categorical_covariate_categories"]
    role = "categorical covariate"
    codes = [category_codes(adata, key, categories[key], role=role) for key in keys]
    if not codes:
        return np.zeros((adata.n_obs, 0), dtype=np.int64)
    return np.column_stack(codes)


def _check_var_names(
    adata: AnnData, var_names: Sequence[str] | pd.Index | None, *, n_vars: int
) -> None:
    if var_names is None:
        if adata.n_vars != n_vars:
            raise ValueError(
                f"adata has {adata.n_vars:,} genes, but the registry was built with {n_vars:,}; "
                "select the registered genes, e.g. `adata = adata[:, var_names].copy()`."
            )
        return
    expected = pd.Index(np.asarray(var_names).astype(str))
    actual = pd.Index(np.asarray(adata.var_names).astype(str))
    if len(expected) == len(actual) and (expected == actual).all():
        return
    missing = expected.difference(actual, sort=False)
    extra = actual.difference(expected, sort=False)
    problems = []
    if len(missing):
        problems.append(f"{len(missing):,} genes are missing ({quoted_list(missing, limit=5)})")
    if len(extra):
        problems.append(f"{len(extra):,} are extra ({quoted_list(extra, limit=5)})")
    if not problems:
        problems.append("the same genes are in a different order")
    fix = "reorder and subset them with `adata = adata[:, var_names].copy()`"
    if len(missing):
        fix = "add the missing genes (e.g. as all-zero columns), then " + fix
    raise ValueError(
        f"adata.var_names do not match the expected genes: {'; '.join(problems)}. To fix, {fix}."
    )


def _as_float32(matrix: object) -> sparse.csr_matrix | sparse.csr_array | np.ndarray:
    """Counts as CSR float32 with int32 indices (or a C-contiguous float32 array); no copy if
    they already are."""
    if not sparse.issparse(matrix):
        return np.ascontiguousarray(matrix, dtype=np.float32)
    csr_class = sparse.csr_array if isinstance(matrix, sparse.sparray) else sparse.csr_matrix
    csr = matrix if matrix.format == "csr" else matrix.tocsr()
    index_dtype = np.int32 if csr.nnz <= _INT32_MAX else np.int64
    if (
        type(csr) is csr_class
        and csr.dtype == np.float32
        and csr.indices.dtype == index_dtype
        and csr.indptr.dtype == index_dtype
    ):
        return csr
    # Build from the parts: astype(copy=False) reuses them when their dtype already fits, and a
    # fresh object avoids AnnData's view classes, whose in-place writes reach back to the parent.
    parts = (
        csr.data.astype(np.float32, copy=False),
        csr.indices.astype(index_dtype, copy=False),
        csr.indptr.astype(index_dtype, copy=False),
    )
    return csr_class(parts, shape=csr.shape, copy=False)
