from importlib.resources import files

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from cellvi.datasets import pbmc_10x

N_OBS = 5030
N_VARS = 2000
BATCH_SIZES = {
    "pbmc1k_v2": 954,
    "pbmc1k_v3": 906,
    "pbmc4k_v2": 2170,
    "pbmc8k_5prime_sub1k": 1000,
}
LABELLED = {"B cell", "CD4 T cell", "CD8 T cell", "Myeloid", "NK cell"}
DATA_DIR = files("cellvi.datasets").joinpath("_data")


@pytest.fixture(scope="module")
def adata():
    return pbmc_10x()


def test_shape_and_names(adata):
    assert adata.shape == (N_OBS, N_VARS)
    assert adata.var_names.is_unique
    assert adata.obs_names.is_unique
    assert "CD3E" in adata.var_names or "LYZ" in adata.var_names


def test_batches(adata):
    batch = adata.obs["batch"]
    assert isinstance(batch.dtype, pd.CategoricalDtype)
    assert batch.nunique() == 4
    assert batch.value_counts().to_dict() == BATCH_SIZES


def test_cell_type(adata):
    cell_type = adata.obs["cell_type"]
    assert isinstance(cell_type.dtype, pd.CategoricalDtype)
    assert set(cell_type.cat.categories) == LABELLED | {"unknown"}
    labelled = cell_type.isin(LABELLED)
    # labels only for pbmc4k_v2; the other batches are entirely "unknown"
    assert set(adata.obs.loc[labelled, "batch"]) == {"pbmc4k_v2"}
    other = adata.obs["batch"] != "pbmc4k_v2"
    assert (cell_type[other] == "unknown").all()
    assert labelled.sum() > 2000
    assert (adata.obs["has_curated_label"] == labelled).all()


def test_x_is_float32_integer_csr(adata):
    X = adata.X
    assert sp.issparse(X) and X.format == "csr"
    assert X.dtype == np.float32
    assert X.indices.dtype == np.int32
    assert X.has_sorted_indices
    assert X.data.min() >= 0
    np.testing.assert_array_equal(X.data, np.round(X.data))
    assert X.data.max() > 100  # raw counts, not normalised


def test_counts_layer_is_separate_copy(adata):
    counts = adata.layers["counts"]
    assert sp.issparse(counts) and counts.format == "csr"
    assert counts.dtype == np.float32
    assert counts is not adata.X
    assert not np.shares_memory(counts.data, adata.X.data)
    assert (counts != adata.X).nnz == 0


def test_uns_dataset(adata):
    info = adata.uns["dataset"]
    for key in ("description", "source", "license", "attribution"):
        assert isinstance(info[key], str) and info[key]
    assert "CC BY 4.0" in info["license"]
    assert "10x Genomics" in info["attribution"]


def test_calls_are_independent():
    first = pbmc_10x()
    first.X.data[:] = -1
    first.layers["counts"].data[:] = -1
    first.obs["batch"] = "mutated"
    first.uns["dataset"]["name"] = "mutated"
    first.var_names = [f"g{i}" for i in range(first.n_vars)]

    second = pbmc_10x()
    assert second.X.data.min() >= 0
    assert second.layers["counts"].data.min() >= 0
    assert second.obs["batch"].nunique() == 4
    assert second.uns["dataset"]["name"] == "pbmc_10x"
    assert not second.var_names[0].startswith("g0")


def test_scanpy_counts_layer_workflow():
    sc = pytest.importorskip("scanpy")
    adata = pbmc_10x()
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    raw = adata.layers["counts"]
    np.testing.assert_array_equal(raw.data, np.round(raw.data))
    assert not np.allclose(adata.X.data, raw.data)


def test_file_size_and_notice():
    data_file = DATA_DIR.joinpath("pbmc_10x.h5ad")
    assert data_file.is_file()
    size = len(data_file.read_bytes())
    assert size < 5 * 1024 * 1024
    notice = DATA_DIR.joinpath("NOTICE.md")
    assert notice.is_file()
    text = notice.read_text(encoding="utf-8")
    assert "10x Genomics" in text
    assert "CC BY 4.0" in text
