"""Tests of storing and reading a registry: h5ad round trip, ``get_registry`` and extraction."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from scipy import sparse

from cellvi.data.registry import (
    REGISTRY_FORMAT_VERSION,
    REGISTRY_KEY,
    extract_registered_data,
    get_registry,
    registries_equal,
)
from cellvi.pp import setup_registry

FULL = {
    "layer": "counts",
    "batch_key": "batch",
    "labels_key": "cell_type",
    "size_factor_key": "sf",
    "categorical_covariate_keys": ["donor"],
    "continuous_covariate_keys": ["pct_mito"],
}


@pytest.fixture
def registered(make_adata) -> ad.AnnData:
    adata = make_adata()
    setup_registry(adata, **FULL)
    return adata


# --- h5ad round trip -----------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs", [FULL, {}], ids=["all_fields", "no_fields"])
def test_registry_survives_h5ad(kwargs, make_adata, tmp_path):
    adata = make_adata()
    setup_registry(adata, **kwargs)
    path = tmp_path / "registered.h5ad"
    adata.write_h5ad(path)
    back = ad.read_h5ad(path)
    registry, reread = get_registry(adata), get_registry(back)
    assert registries_equal(registry, reread)
    assert set(reread) == set(registry)
    for key in ("categorical_covariate_keys", "continuous_covariate_keys"):
        assert reread[key].ndim == 1 and reread[key].size == registry[key].size
    assert reread["layer"] == registry["layer"] and isinstance(reread["n_cells"], int | np.integer)
    data = extract_registered_data(back, reread, var_names=adata.var_names)
    np.testing.assert_array_equal(data.batch, extract_registered_data(adata, registry).batch)


def test_registries_equal_detects_differences(registered):
    registry = get_registry(registered)
    changed = {**registry, "batch_categories": np.array(["b0", "b1", "bX"], dtype=object)}
    assert not registries_equal(registry, changed)
    assert not registries_equal(registry, {**registry, "n_batch": 4})
    assert not registries_equal(registry, {**registry, "layer": ""})
    assert registries_equal(registry, {**registry, "n_batch": np.int64(3)})


# --- get_registry --------------------------------------------------------------------------------


def test_get_registry_missing(make_adata):
    with pytest.raises(KeyError, match=r"no cellvi registry.*cv.pp.setup_registry\(adata"):
        get_registry(make_adata())


def test_get_registry_newer_version(registered):
    registered.uns[REGISTRY_KEY]["format_version"] = REGISTRY_FORMAT_VERSION + 1
    with pytest.raises(ValueError, match=r"registry format 2.*upgrade cellvi"):
        get_registry(registered)


@pytest.mark.parametrize(
    ("corrupt", "pattern"),
    [
        (lambda r: r.pop("n_batch"), r"missing fields: n_batch.*re-run `cv.pp.setup_registry"),
        (lambda r: r.pop("format_version"), r"corrupted \(no valid format_version\)"),
        (lambda r: r.update(format_version="one"), r"corrupted"),
    ],
)
def test_get_registry_corrupted(registered, corrupt, pattern):
    corrupt(registered.uns[REGISTRY_KEY])
    with pytest.raises(ValueError, match=pattern):
        get_registry(registered)


def test_get_registry_not_a_dict(registered):
    registered.uns[REGISTRY_KEY] = "oops"
    with pytest.raises(ValueError, match=r"not a cellvi registry"):
        get_registry(registered)


# --- extract_registered_data ---------------------------------------------------------------------


def test_extract_same_data(registered):
    data = extract_registered_data(registered, get_registry(registered))
    assert (data.n_cells, data.n_vars) == registered.shape
    np.testing.assert_array_equal(data.batch, np.repeat([0, 1, 2], 20))
    labels = registered.obs["cell_type"].map({"B": 0, "NK": 1, "T": 2}).to_numpy()
    np.testing.assert_array_equal(data.labels, labels)
    assert data.cat_covs.shape == (60, 1) and data.cat_covs.dtype == np.int64
    np.testing.assert_array_equal(data.cat_covs[:, 0], registered.obs["donor"] - 1)
    assert data.cont_covs.shape == (60, 1) and data.cont_covs.dtype == np.float32
    assert data.size_factor.dtype == np.float32 and data.size_factor.shape == (60,)
    assert data.batch.dtype == np.int64 and data.labels.dtype == np.int64
    # CSR float32 with int32 indices is used as it is, without a copy.
    assert np.shares_memory(data.X.data, registered.layers["counts"].data)


def test_extract_without_optional_fields(make_adata):
    adata = make_adata(np.asarray)
    setup_registry(adata)
    data = extract_registered_data(adata, get_registry(adata))
    assert data.size_factor is None
    assert data.cat_covs.shape == (60, 0) and data.cont_covs.shape == (60, 0)
    assert not data.batch.any() and not data.labels.any()
    assert np.shares_memory(data.X, adata.X)


def test_extract_codes_follow_registry(registered):
    held_out = registered[registered.obs["batch"] == "b2"].copy()
    held_out.obs["batch"] = held_out.obs["batch"].astype(str)  # categories of its own: just b2
    data = extract_registered_data(held_out, get_registry(registered))
    np.testing.assert_array_equal(data.batch, np.full(20, 2))


def test_extract_unknown_category(registered):
    other = registered.copy()
    other.obs["batch"] = other.obs["batch"].astype(str)
    other.obs.loc[["cell0", "cell1"], "batch"] = "b9"
    with pytest.raises(ValueError, match=r"not registered: 'b9' \(2 cells\).*'b0', 'b1', 'b2'"):
        extract_registered_data(other, get_registry(registered))


def test_extract_missing_column_and_layer(registered):
    registry = get_registry(registered)
    other = registered.copy()
    del other.obs["donor"]
    with pytest.raises(KeyError, match=r"'donor' is not a column"):
        extract_registered_data(other, registry)
    del other.layers["counts"]
    with pytest.raises(KeyError, match=r"Layer 'counts' not found"):
        extract_registered_data(other, registry)


def test_extract_var_names_reordered(registered):
    registry = get_registry(registered)
    var_names = registered.var_names
    reordered = registered[:, var_names[::-1]].copy()
    with pytest.raises(ValueError, match=r"different order.*adata\[:, var_names\]"):
        extract_registered_data(reordered, registry, var_names=var_names)
    fixed = reordered[:, var_names].copy()
    data = extract_registered_data(fixed, registry, var_names=var_names)
    np.testing.assert_array_equal(data.X.toarray(), registered.layers["counts"].toarray())


def test_extract_var_names_subset(registered):
    var_names = registered.var_names
    subset = registered[:, var_names[:25]].copy()
    with pytest.raises(ValueError, match=r"5 genes are missing \('gene25'.*add the missing genes"):
        extract_registered_data(subset, get_registry(registered), var_names=var_names)
    with pytest.raises(ValueError, match=r"adata has 25 genes.*built with 30"):
        extract_registered_data(subset, get_registry(registered))
    with pytest.raises(ValueError, match=r"5 are extra \('gene25'"):
        extract_registered_data(registered, get_registry(registered), var_names=var_names[:25])


def test_extract_validates_counts_unless_told_not_to(registered):
    other = registered.copy()
    other.layers["counts"] = other.layers["counts"] / 2
    registry = get_registry(registered)
    with pytest.raises(ValueError, match=r"non-integer values"):
        extract_registered_data(other, registry)
    data = extract_registered_data(other, registry, validate=False)
    assert data.X.dtype == np.float32


@pytest.mark.parametrize(
    "fmt", [sparse.csc_matrix, sparse.csr_array, sparse.csc_array], ids=lambda f: f.__name__
)
def test_extract_converts_to_csr(fmt, make_adata):
    adata = make_adata(fmt, np.float64)
    setup_registry(adata, layer="counts")
    data = extract_registered_data(adata, get_registry(adata))
    assert data.X.format == "csr" and data.X.dtype == np.float32
    assert data.X.indices.dtype == np.int32 and data.X.indptr.dtype == np.int32
    assert isinstance(data.X, sparse.sparray) == isinstance(adata.X, sparse.sparray)
    np.testing.assert_array_equal(data.X.toarray(), adata.layers["counts"].toarray())


def test_extract_from_view(registered):
    view = registered[5:15]
    data = extract_registered_data(view, get_registry(registered))
    assert data.n_cells == 10 and type(data.X) is sparse.csr_matrix
    np.testing.assert_array_equal(data.batch, np.zeros(10))


def test_extract_rejects_nan_in_new_data(registered):
    other = registered.copy()
    other.obs["cell_type"] = pd.Categorical(
        other.obs["cell_type"].where(other.obs.index != "cell3")
    )
    with pytest.raises(ValueError, match=r"missing \(NaN\) in 1 of 60 cells"):
        extract_registered_data(other, get_registry(registered))
