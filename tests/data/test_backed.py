"""Counts on disk: a backed .h5ad registers, validates and trains like the same data in memory."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp
import torch

import cellvi as cv
import cellvi.data.backed as backed_module
import cellvi.data.chunked_loader as chunked_module
from cellvi.data.backed import BackedData
from cellvi.data.chunked_loader import ChunkedLoader
from cellvi.data.registry import REGISTRY_KEY, extract_registered_data, registries_equal
from cellvi.data.tensors import tensor_data


@pytest.fixture
def small_blocks(monkeypatch):
    """Several scan blocks and read spans even on tiny data."""
    monkeypatch.setattr(backed_module, "SCAN_ENTRIES", 97)
    monkeypatch.setattr(backed_module, "MAX_SPAN_ROWS", 7)
    monkeypatch.setattr(backed_module, "MAX_GAP_ROWS", 2)


def _write(adata, tmp_path, name="data.h5ad"):
    path = tmp_path / name
    adata.write_h5ad(path)
    return ad.read_h5ad(path, backed="r")


@pytest.mark.parametrize("dense", [False, True])
def test_backed_registry_equals_in_memory(make_adata, tmp_path, small_blocks, dense):
    adata = make_adata(np.asarray if dense else sp.csr_matrix)
    adata.X[[4, 9]] = 0  # zero-count cells, warned about in both cases
    backed = _write(adata, tmp_path)
    with pytest.warns(UserWarning, match="2 of 60 cells have zero total counts"):
        cv.pp.setup_registry(adata, batch_key="batch")
    with pytest.warns(UserWarning, match="2 of 60 cells have zero total counts"):
        cv.pp.setup_registry(backed, batch_key="batch")
    assert registries_equal(
        {k: v for k, v in adata.uns[REGISTRY_KEY].items() if k != "library_log_vars"},
        {k: v for k, v in backed.uns[REGISTRY_KEY].items() if k != "library_log_vars"},
    )
    np.testing.assert_allclose(
        adata.uns[REGISTRY_KEY]["library_log_vars"], backed.uns[REGISTRY_KEY]["library_log_vars"]
    )
    assert backed.isbacked  # the matrix was never loaded into the AnnData


def test_backed_bad_counts_same_error_as_in_memory(make_adata, tmp_path, small_blocks):
    adata = make_adata()
    adata.X = adata.X.multiply(0.37).tocsr()  # normalised-looking values in many blocks
    backed = _write(adata, tmp_path)
    with pytest.raises(ValueError) as in_memory:
        cv.pp.setup_registry(adata)
    with pytest.raises(ValueError) as on_disk:
        cv.pp.setup_registry(backed)
    assert str(on_disk.value) == str(in_memory.value)
    assert "of 60 cells" in str(on_disk.value) and REGISTRY_KEY not in backed.uns


def test_backed_csc_refused_with_fix(make_adata, tmp_path):
    adata = make_adata(sp.csc_matrix)
    backed = _write(adata, tmp_path)
    with pytest.raises(TypeError, match=r"CSC matrix on disk.*tocsr\(\)"):
        cv.pp.setup_registry(backed)
    assert REGISTRY_KEY not in backed.uns


def _backed_data(adata, tmp_path):
    backed = _write(adata, tmp_path)
    cv.pp.setup_registry(backed, batch_key="batch", continuous_covariate_keys=["pct_mito"])
    data = tensor_data(extract_registered_data(backed, backed.uns[REGISTRY_KEY]))
    assert isinstance(data, BackedData)
    return data


def test_backed_gather_equals_in_memory(make_adata, tmp_path, small_blocks):
    adata = make_adata()
    cv.pp.setup_registry(adata, batch_key="batch", continuous_covariate_keys=["pct_mito"])
    memory = tensor_data(extract_registered_data(adata, adata.uns[REGISTRY_KEY]))
    disk = _backed_data(adata, tmp_path)
    rows = torch.tensor([41, 3, 3, 59, 0, 17, 40])  # unsorted, repeated, spread over spans
    expected, got = memory.gather(rows), disk.gather(rows)
    assert expected.keys() == got.keys()
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], msg=key)


def test_chunked_epochs_read_each_cell_once_in_bounded_buffers(make_adata, tmp_path, monkeypatch):
    monkeypatch.setattr(backed_module, "MAX_GAP_ROWS", 0)
    data = _backed_data(make_adata(), tmp_path)
    cells = np.setdiff1d(np.arange(60), [5, 6, 30])
    loader = ChunkedLoader(
        data,
        cells,
        batch_size=8,
        generator=torch.Generator().manual_seed(0),
        chunk_cells=5,
        buffer_cells=15,  # groups of 3 chunks: minibatches straddle groups
    )
    loaded = []
    original_load = data.load
    data.load = lambda rows: loaded.append(len(rows)) or original_load(rows)
    orders = []
    for _ in range(2):
        data.counts.rows_read = 0
        seen = torch.cat([mb["cont_covs"][:, 0] for mb in loader])
        assert data.counts.rows_read <= 60  # every needed chunk read once (not per minibatch)
        orders.append(seen)
    assert max(loaded) <= 15 and len(loaded) >= 8  # one group in memory at a time
    expected = torch.from_numpy(data.registered.cont_covs[cells, 0])
    for seen in orders:
        torch.testing.assert_close(seen.sort().values, expected.sort().values)
    assert not torch.equal(orders[0], orders[1])  # reshuffled each pass


def test_scvi_train_backed_matches_in_memory(adata, tmp_path, monkeypatch):
    monkeypatch.setattr(chunked_module, "CHUNK_CELLS", 16)
    monkeypatch.setattr(chunked_module, "BUFFER_CELLS", 64)
    adata.X = adata.layers.pop("counts")
    backed = _write(adata, tmp_path)
    options = {"max_epochs": 25, "n_hidden": 32, "seed": 0, "precision": "32-true"}
    for target in (adata, backed):
        cv.pp.setup_registry(target, batch_key="batch")
        cv.tl.scvi_train(target, **options)
    in_memory = adata.uns["scvi"]["metrics"]["elbo_validation"]
    on_disk = backed.uns["scvi"]["metrics"]["elbo_validation"]
    assert on_disk == pytest.approx(in_memory, rel=0.02)
    assert backed.obsm["X_scvi"].shape == (adata.n_obs, 10) and backed.isbacked
    assert not np.allclose(backed.obsm["X_scvi"], adata.obsm["X_scvi"])  # chunked order differs
    # applying the model reads the backed cells in order: same result as from memory
    from_disk = cv.tl.scvi_evaluate(backed)
    from_memory = cv.tl.scvi_evaluate(adata, model_from=backed)
    assert from_disk["elbo"] == pytest.approx(from_memory["elbo"], rel=1e-6)
    with pytest.raises(ValueError, match="copy=True.*to_memory"):
        cv.tl.scvi_train(backed, max_epochs=1, copy=True)


def _zarr_backed(adata, tmp_path):
    """The AnnData around counts left in a zarr store (obs / var in memory)."""
    import zarr

    path = tmp_path / "data.zarr"
    adata.write_zarr(path)
    group = zarr.open_group(path, mode="r")
    return ad.AnnData(
        X=ad.io.sparse_dataset(group["X"]),
        obs=ad.io.read_elem(group["obs"]),
        var=ad.io.read_elem(group["var"]),
    )


def test_zarr_store_registers_gathers_and_trains_like_in_memory(adata, tmp_path, small_blocks):
    adata.X = adata.layers.pop("counts")
    on_disk = _zarr_backed(adata, tmp_path)
    for target in (adata, on_disk):
        cv.pp.setup_registry(target, batch_key="batch")
    assert registries_equal(
        {k: v for k, v in adata.uns[REGISTRY_KEY].items() if k != "library_log_vars"},
        {k: v for k, v in on_disk.uns[REGISTRY_KEY].items() if k != "library_log_vars"},
    )
    memory = tensor_data(extract_registered_data(adata, adata.uns[REGISTRY_KEY]))
    disk = tensor_data(extract_registered_data(on_disk, on_disk.uns[REGISTRY_KEY]))
    assert isinstance(disk, BackedData) and disk.counts.format == "zarr"
    rows = torch.tensor([41, 3, 3, 59, 0, 17, 40])
    expected, got = memory.gather(rows), disk.gather(rows)
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], msg=key)
    # the reader reopens the store by itself (e.g. in a spawned training process)
    import pickle

    clone = pickle.loads(pickle.dumps(disk.counts))
    assert (clone.read(3, 9) != disk.counts.read(3, 9)).nnz == 0
    cv.tl.scvi_train(on_disk, max_epochs=2, n_hidden=16, seed=0)
    assert on_disk.obsm["X_scvi"].shape == (adata.n_obs, 10)
    assert np.isfinite(on_disk.uns["scvi"]["metrics"]["elbo_validation"])
    assert isinstance(on_disk.X, ad.abc.CSRDataset)  # the counts were never loaded
    with pytest.raises(ValueError, match="copy=True.*to_memory"):
        cv.tl.scvi_train(on_disk, max_epochs=1, copy=True)
    with pytest.raises(ValueError, match="copy=True.*to_memory"):
        cv.pp.setup_registry(on_disk, batch_key="batch", copy=True)
