"""Tests of the count-matrix checks in ``cellvi.data.validation``."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import sparse

from cellvi.data import validation
from cellvi.data.validation import (
    cell_totals,
    count_zero_genes,
    matrix_source,
    validate_counts,
    warn_zero_count_cells,
    warn_zero_genes,
)

FORMATS = {
    "dense": np.asarray,
    "csr_matrix": sparse.csr_matrix,
    "csc_matrix": sparse.csc_matrix,
    "csr_array": sparse.csr_array,
    "csc_array": sparse.csc_array,
}


def counts(n_cells: int = 40, n_vars: int = 25, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).poisson(1.5, (n_cells, n_vars)).astype(np.float64)


def run(matrix, layers=("counts",)) -> int:
    return validate_counts(matrix, source="X", available_layers=list(layers))


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int32, np.int64, np.uint16])
def test_valid_counts_pass(fmt, dtype):
    X = counts()
    X[3] = 0
    assert run(FORMATS[fmt](X.astype(dtype))) == 1


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize(
    ("value", "pattern"),
    [
        (np.nan, r"NaN values in 3 entries of 2 cells"),
        (np.inf, r"infinite values in 3 entries of 2 cells"),
        (-2.0, r"negative values down to -2 in 3 entries of 2 cells"),
        (0.5, r"non-integer values up to 0.5 in 3 entries of 2 cells"),
    ],
)
def test_bad_entries_are_counted(fmt, value, pattern):
    X = counts() + 1  # no zeros, so sparse formats store every bad entry
    for row, col in [(1, 0), (1, 5), (7, 2)]:
        X[row, col] = value
    with pytest.raises(ValueError, match=pattern):
        run(FORMATS[fmt](X))


@pytest.mark.parametrize("fmt", ["dense", "csr_matrix", "csc_matrix"])
def test_chunked_scan_matches(fmt, monkeypatch):
    monkeypatch.setattr(validation, "_CHUNK_ENTRIES", 7)
    X = counts() + 1
    X[[0, 0, 13, 39], [0, 24, 3, 10]] = 0.25
    with pytest.raises(ValueError, match=r"in 4 entries of 3 cells"):
        run(FORMATS[fmt](X))
    assert cell_totals(FORMATS[fmt](counts())).shape == (40,)


def test_log_normalised_hint_names_counts_layer():
    X = np.log1p(counts() / 3)
    with pytest.raises(ValueError, match=r"^X looks log-normalised .*pass layer='counts'"):
        run(X, layers=("counts", "spliced"))


def test_hint_without_layers_says_to_store_counts():
    with pytest.raises(ValueError, match=r"store the counts in a layer before normalising"):
        run(np.log1p(counts() / 3), layers=())


def test_hint_lists_other_layers():
    with pytest.raises(ValueError, match=r"available layers: 'raw', 'spliced'"):
        run(counts() / 3, layers=("raw", "spliced"))


def test_source_layer_is_not_suggested():
    source = matrix_source("counts")
    with pytest.raises(ValueError, match=r"^layers\['counts'\] .*store the counts"):
        validate_counts(counts() / 3, source=source, available_layers=["counts"])


def test_scaled_data_is_recognised():
    X = counts()
    with pytest.raises(ValueError, match=r"looks scaled or centred"):
        run((X - X.mean(0)) / X.std(0))


def test_normalised_not_logged_is_recognised():
    X = counts() / counts().sum(1, keepdims=True) * 1e4
    with pytest.raises(ValueError, match=r"looks normalised \(non-integer"):
        run(X)


def test_float16_refused():
    with pytest.raises(TypeError, match=r"float16.*2048.*astype\(np.float32\)"):
        run(counts().astype(np.float16))


@pytest.mark.parametrize("dtype", [object, bool, np.complex64, np.float128])
def test_other_dtypes_refused(dtype):
    with pytest.raises(TypeError, match=r"dtype"):
        run(counts().astype(dtype))


def test_unsupported_containers_refused():
    with pytest.raises(TypeError, match=r"COO.*tocsr\(\)"):
        run(sparse.coo_matrix(counts()))
    with pytest.raises(TypeError, match=r"has type list"):
        run(counts().tolist())
    with pytest.raises(TypeError, match=r"empty \(None\)"):
        run(None)


def test_zero_genes_and_warnings():
    X = counts()
    X[:, [2, 4]] = 0
    assert count_zero_genes(X) == 2
    assert count_zero_genes(sparse.csr_matrix(X)) == 2
    with pytest.warns(UserWarning, match=r"2 of 25 genes have zero counts"):
        warn_zero_genes(2, n_vars=25)
    with pytest.warns(
        UserWarning, match=r"3 of 40 cells .*sc.pp.filter_cells\(adata, min_counts=1\)"
    ):
        warn_zero_count_cells(3, n_cells=40)
