"""Tests of the data registry: ``cv.pp.setup_registry``, ``get_registry`` and extraction."""

from __future__ import annotations

import re

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from scipy import sparse

from cellvi.data.registry import (
    REGISTRY_FORMAT_VERSION,
    REGISTRY_KEY,
    build_registry,
    extract_registered_data,
    get_registry,
)
from cellvi.pp import setup_registry

N_CELLS, N_VARS = 60, 30  # the size of the conftest's make_adata
FULL = {
    "layer": "counts",
    "batch_key": "batch",
    "labels_key": "cell_type",
    "size_factor_key": "sf",
    "categorical_covariate_keys": ["donor"],
    "continuous_covariate_keys": ["pct_mito"],
}


def _dense(matrix) -> np.ndarray:
    return matrix.toarray() if sparse.issparse(matrix) else np.asarray(matrix)


# --- good input ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "dtype"),
    [
        (np.asarray, np.float32),
        (sparse.csr_matrix, np.float32),
        (sparse.csc_matrix, np.float64),
        (np.asarray, np.int64),
        (sparse.csr_array, np.float64),
        (sparse.csr_matrix, np.int32),
    ],
)
def test_good_input_registers(fmt, dtype, make_adata):
    adata = make_adata(fmt, dtype)
    setup_registry(adata, **FULL)
    registry = get_registry(adata)
    assert registry["format_version"] == REGISTRY_FORMAT_VERSION
    assert (registry["n_cells"], registry["n_vars"]) == (N_CELLS, N_VARS)
    assert list(registry["batch_categories"]) == ["b0", "b1", "b2"]
    assert list(registry["labels_categories"]) == ["B", "NK", "T"]
    assert list(registry["categorical_covariate_categories"]["donor"]) == ["1", "2", "3"]
    assert registry["size_factor_key"] == "sf" and registry["layer"] == "counts"
    data = extract_registered_data(adata, registry)
    if fmt is np.asarray:
        assert isinstance(data.X, np.ndarray) and data.X.flags.c_contiguous
    else:
        assert sparse.issparse(data.X) and data.X.format == "csr"
        assert data.X.indices.dtype == np.int32 and data.X.indptr.dtype == np.int32
    assert data.X.dtype == np.float32
    np.testing.assert_array_equal(_dense(data.X), _dense(adata.layers["counts"]))


def test_registry_fields_and_library_stats(make_adata):
    adata = make_adata(np.asarray)
    adata.layers["counts"][0] = 0  # a zero-count cell counts as library size 1 (log 0)
    with pytest.warns(UserWarning, match=r"1 of 60 cells have zero total counts"):
        registry = build_registry(adata, layer="counts", batch_key="batch")
    assert registry["n_zero_count_cells"] == 1
    logs = np.log(np.maximum(adata.layers["counts"].sum(1, dtype=float), 1))
    codes = np.repeat([0, 1, 2], 20)
    expected_means = [logs[codes == b].mean() for b in range(3)]
    expected_vars = [logs[codes == b].var() for b in range(3)]
    np.testing.assert_allclose(registry["library_log_means"], expected_means)
    np.testing.assert_allclose(registry["library_log_vars"], expected_vars)
    assert registry["labels_key"] == "" and list(registry["labels_categories"]) == ["_all"]
    assert registry["n_labels"] == 1 and registry["n_batch"] == 3
    for key in ("categorical_covariate_keys", "continuous_covariate_keys"):
        assert registry[key].shape == (0,)
    assert registry["categorical_covariate_categories"] == {}
    assert all(value is not None for value in registry.values())


def test_no_keys_registers_single_batch(make_adata):
    adata = make_adata()
    setup_registry(adata)
    registry = get_registry(adata)
    assert registry["layer"] == "" and list(registry["batch_categories"]) == ["_all"]
    assert registry["library_log_means"].shape == (1,)


def test_category_order(make_adata):
    adata = make_adata()
    adata.obs["batch"] = pd.Categorical(adata.obs["batch"], categories=["b2", "unused", "b0", "b1"])
    adata.obs["num"] = np.tile([10, 2, 1], 20)
    setup_registry(adata, batch_key="batch", categorical_covariate_keys=["num"])
    registry = get_registry(adata)
    assert list(registry["batch_categories"]) == ["b2", "b0", "b1"]  # unused categories dropped
    assert list(registry["categorical_covariate_categories"]["num"]) == ["1", "2", "10"]


# --- bad input: error names problem and fix, AnnData unchanged ----------------------------------


def _set_x(value):
    def mutate(adata):
        X = adata.X.toarray()
        X[2, 3] = value
        adata.X = sparse.csr_matrix(X)

    return mutate


def _log1p(adata):
    adata.X = sparse.csr_matrix(np.log1p(adata.X.toarray() / 2))


def _set_obs(key, rows, value):
    def mutate(adata):
        column = adata.obs[key].astype(object if isinstance(value, str) or value is None else float)
        column.iloc[rows] = value
        adata.obs[key] = column

    return mutate


def _batch_nan(adata):
    adata.obs["batch"] = pd.Categorical(adata.obs["batch"].where(adata.obs.index != "cell4"))


def _labels_nan(adata):
    adata.obs["cell_type"] = adata.obs["cell_type"].astype(object)
    adata.obs.loc[["cell1", "cell2"], "cell_type"] = np.nan


def _no_change(adata):
    pass


BAD_CASES = {
    "negative": (
        _set_x(-1),
        {},
        ValueError,
        [r"negative values", r"1 entry of 1 cell", "raw counts"],
    ),
    "fractional": (
        _set_x(0.5),
        {},
        ValueError,
        [r"non-integer values up to 0.5", "layer='counts'"],
    ),
    "log1p": (_log1p, {}, ValueError, [r"^X looks log-normalised", r"pass layer='counts'"]),
    "nan": (_set_x(np.nan), {}, ValueError, [r"NaN values in 1 entry of 1 cell"]),
    "inf": (_set_x(np.inf), {}, ValueError, [r"infinite values in 1 entry"]),
    "float16": (
        lambda a: setattr(a, "X", a.X.toarray().astype(np.float16)),  # dense: scipy has no float16
        {},
        TypeError,
        ["float16", r"astype\(np.float32\)"],
    ),
    "missing_layer": (_no_change, {"layer": "raw"}, KeyError, ["'raw' not found", "'counts'"]),
    "missing_obs_key": (
        _no_change,
        {"batch_key": "bacth"},
        KeyError,
        ["'bacth' is not a column", "Did you mean 'batch'", "Available columns"],
    ),
    "nan_batch": (_batch_nan, {"batch_key": "batch"}, ValueError, ["1 of 60 cells", "fillna"]),
    "nan_labels": (
        _labels_nan,
        {"labels_key": "cell_type"},
        ValueError,
        [r"labels_key 'cell_type' is missing \(NaN\) in 2 of 60", r"fillna\('unknown'\)"],
    ),
    "nan_covariate": (
        _set_obs("pct_mito", [0, 1, 2], np.nan),
        {"continuous_covariate_keys": ["pct_mito"]},
        ValueError,
        [r"invalid values in 3 of 60 cells \(3 NaN\)", "fillna"],
    ),
    "inf_covariate": (
        _set_obs("pct_mito", [5], np.inf),
        {"continuous_covariate_keys": ["pct_mito"]},
        ValueError,
        [r"\(1 infinite\)", "remove those cells"],
    ),
    "text_covariate": (
        _set_obs("pct_mito", [5], "high"),
        {"continuous_covariate_keys": ["pct_mito"]},
        TypeError,
        ["must be numeric", "pd.to_numeric"],
    ),
    "size_factor_zero": (
        _set_obs("sf", [0, 9], 0.0),
        {"size_factor_key": "sf"},
        ValueError,
        [r"\(2 zero or negative\)", "positive and finite"],
    ),
    "key_twice": (
        _no_change,
        {"batch_key": "batch", "categorical_covariate_keys": ["batch"]},
        ValueError,
        ["'batch' is used as batch_key and categorical_covariate_keys", "one role only"],
    ),
    "key_listed_twice": (
        _no_change,
        {"continuous_covariate_keys": ["pct_mito", "pct_mito"]},
        ValueError,
        ["twice in continuous_covariate_keys"],
    ),
    "keys_not_list": (
        _no_change,
        {"categorical_covariate_keys": "donor"},
        TypeError,
        [r"use \['donor'\]"],
    ),
}


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_raises_and_leaves_adata_unchanged(case, make_adata, snapshot, assert_unchanged):
    mutate, kwargs, exception, patterns = BAD_CASES[case]
    adata = make_adata()
    mutate(adata)
    before = snapshot(adata)
    with pytest.raises(exception) as info:
        setup_registry(adata, **kwargs)
    message = str(info.value)
    for pattern in patterns:
        assert re.search(pattern, message.strip('"')), (pattern, message)
    assert_unchanged(adata, before)
    assert REGISTRY_KEY not in adata.uns


def test_bad_input_on_view_leaves_view_unchanged(make_adata, snapshot, assert_unchanged):
    view = make_adata()[:30]
    before = snapshot(view)
    with pytest.raises(KeyError):
        setup_registry(view, batch_key="nope")
    assert_unchanged(view, before)


@pytest.mark.filterwarnings("ignore::FutureWarning:mudata")
def test_mudata_without_protein_modality(make_adata):
    mudata = pytest.importorskip("mudata")
    mdata = mudata.MuData({"rna": make_adata()})
    with pytest.raises(KeyError, match="no protein modality 'prot'"):
        setup_registry(mdata)
    assert "cellvi_registry" not in mdata.uns


def test_backed_copy_refused_before_anything_changes(tmp_path, make_adata):
    path = tmp_path / "backed.h5ad"
    make_adata().write_h5ad(path)
    backed = ad.read_h5ad(path, backed="r")
    try:
        with pytest.raises(ValueError, match=r"backed.*copy=True.*adata.to_memory\(\)"):
            setup_registry(backed, copy=True)
        assert REGISTRY_KEY not in backed.uns
    finally:
        backed.file.close()


# --- allowed oddities: warnings ------------------------------------------------------------------


def test_zero_count_cells_and_genes_warn(make_adata):
    adata = make_adata(np.asarray)
    adata.layers["counts"][[4, 8]] = 0
    adata.layers["counts"][:, 7] = 0
    with pytest.warns(UserWarning) as record:
        setup_registry(adata, layer="counts")
    messages = " ".join(str(w.message) for w in record)
    assert "2 of 60 cells have zero total counts" in messages
    assert "sc.pp.filter_cells(adata, min_counts=1)" in messages and "kept" in messages
    assert "1 of 30 genes have zero counts" in messages
    assert get_registry(adata)["n_zero_count_cells"] == 2


def test_single_cell_batch_warns(make_adata):
    adata = make_adata()
    adata.obs["batch"] = adata.obs["batch"].astype(object)
    adata.obs.loc["cell0", "batch"] = "lonely"
    with pytest.warns(UserWarning, match=r"single cell: 'lonely'"):
        setup_registry(adata, batch_key="batch")
    assert get_registry(adata)["n_batch"] == 4


def test_view_is_made_actual_with_warning(make_adata):
    parent = make_adata()
    view = parent[10:40]
    with pytest.warns(UserWarning, match="Received a view of an AnnData. Making a copy."):
        setup_registry(view, layer="counts", batch_key="batch")
    assert not view.is_view
    assert get_registry(view)["n_cells"] == 30
    assert REGISTRY_KEY not in parent.uns


def test_copy_returns_new_object(make_adata, snapshot, assert_unchanged):
    adata = make_adata()
    before = snapshot(adata)
    out = setup_registry(adata, batch_key="batch", copy=True)
    assert out is not adata and get_registry(out)["n_batch"] == 3
    assert_unchanged(adata, before)
    view = adata[:20]
    out = setup_registry(view, copy=True)
    assert view.is_view and not out.is_view and REGISTRY_KEY in out.uns
    assert setup_registry(adata) is None
