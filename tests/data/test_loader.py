"""The tensor minibatch loader gathers exactly the requested rows."""

from types import SimpleNamespace

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from cellvi.data.loader import MinibatchLoader, TensorData, train_validation_split
from cellvi.utils.native import status as native_status


def _registered(X):
    n = X.shape[0]
    rng = np.random.default_rng(0)
    return SimpleNamespace(
        X=X,
        batch=rng.integers(0, 3, n),
        labels=np.zeros(n, dtype=np.int64),
        cat_covs=np.zeros((n, 0), dtype=np.int64),
        cont_covs=rng.normal(size=(n, 2)).astype(np.float32),
        size_factor=None,
    )


@pytest.fixture
def counts():
    rng = np.random.default_rng(1)
    X = rng.poisson(0.3, size=(50, 20)).astype(np.float32)
    X[3] = 0  # an empty row in the CSR
    return X


@pytest.mark.parametrize("fmt", ["dense", "csr", "csc"])
def test_gather_matches_rows(counts, fmt):
    X = counts if fmt == "dense" else getattr(sp, f"{fmt}_matrix")(counts)
    data = TensorData.from_registered(_registered(X))
    rows = torch.tensor([7, 3, 0, 49, 3])
    mb = data.gather(rows)
    np.testing.assert_array_equal(mb["x"].numpy(), counts[rows.numpy()])
    expected_fact = torch.lgamma(torch.from_numpy(counts[rows.numpy()]) + 1).sum(1)
    torch.testing.assert_close(mb["log_x_factorial"], expected_fact)
    if fmt != "dense":
        nz = torch.nonzero(mb["x"], as_tuple=True)
        torch.testing.assert_close(mb["nz_rows"], nz[0])
        torch.testing.assert_close(mb["nz_cols"], nz[1])


@pytest.fixture(params=["compiled", "torch"])
def gather_implementation(request, monkeypatch):
    import cellvi as cv
    from cellvi.data import loader

    if request.param == "compiled" and loader._gather_kernels(torch.int32) is None:
        pytest.skip(f"the C gather kernel is not used here: {native_status()['gather']}")
    monkeypatch.setattr(cv.settings, "_native_kernels", request.param == "compiled")
    return request.param


@pytest.mark.parametrize("index_dtype", [np.int32, np.int64])
def test_sparse_gather_gives_coordinates_values_and_totals(
    counts, index_dtype, gather_implementation
):
    X = sp.csr_matrix(counts)
    X.indices, X.indptr = X.indices.astype(index_dtype), X.indptr.astype(index_dtype)
    data = TensorData.from_registered(_registered(X))
    rows = torch.tensor([7, 3, 0, 49, 3, 7])  # unsorted, repeated, an empty row
    mb = data.gather(rows, dense_x=False)
    dense = torch.from_numpy(counts[rows.numpy()])
    nz = torch.nonzero(dense, as_tuple=True)
    assert mb["nz_rows"].dtype == mb["nz_cols"].dtype == torch.int64
    torch.testing.assert_close(mb["nz_rows"], nz[0])
    torch.testing.assert_close(mb["nz_cols"], nz[1])
    torch.testing.assert_close(mb["nz_values"], dense[nz])
    torch.testing.assert_close(mb["nz_totals"], dense.sum(1))
    assert "x" not in mb
    empty = data.gather(torch.tensor([3]), dense_x=False)
    assert empty["nz_values"].numel() == 0 and empty["nz_totals"].tolist() == [0.0]


def test_sparse_gather_refuses_cells_outside_the_data(counts, gather_implementation):
    data = TensorData.from_registered(_registered(sp.csr_matrix(counts)))
    with pytest.raises(IndexError):
        data.gather(torch.tensor([0, 50]), dense_x=False)


def test_compiled_gather_refuses_a_row_pointer_past_the_entries(counts, gather_implementation):
    if gather_implementation == "torch":
        pytest.skip("the torch gather relies on index_select's own bounds checks")
    data = TensorData.from_registered(_registered(sp.csr_matrix(counts)))
    data.indptr = data.indptr.clone()
    data.indptr[-1] += 5
    with pytest.raises(ValueError, match="malformed"):
        data.gather(torch.tensor([49]), dense_x=False)


def test_csr_is_shared_not_copied(counts):
    X = sp.csr_matrix(counts)
    data = TensorData.from_registered(_registered(X))
    assert data.values.data_ptr() == X.data.ctypes.data
    assert data.indices.data_ptr() == X.indices.ctypes.data


def test_epoch_covers_every_cell_once_and_small_last_batch_merged(counts):
    data = TensorData.from_registered(_registered(sp.csr_matrix(counts)))
    loader = MinibatchLoader(
        data, np.arange(50), batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(0)
    )
    sizes = [mb["x"].shape[0] for mb in loader]
    assert sizes == [16, 16, 18]  # 50 = 16 + 16 + 16 + 2: the 2-cell tail joins the last batch
    assert len(loader) == 3


def test_shuffle_is_seeded(counts):
    data = TensorData.from_registered(_registered(counts))

    def first_batch(seed):
        loader = MinibatchLoader(
            data,
            np.arange(50),
            batch_size=10,
            shuffle=True,
            generator=torch.Generator().manual_seed(seed),
        )
        return next(iter(loader))["x"]

    torch.testing.assert_close(first_batch(3), first_batch(3))
    assert not torch.equal(first_batch(3), first_batch(4))


def test_split_is_seeded_and_disjoint():
    a_train, a_val = train_validation_split(100, 0.9, torch.Generator().manual_seed(0))
    _, b_val = train_validation_split(100, 0.9, torch.Generator().manual_seed(0))
    np.testing.assert_array_equal(a_val, b_val)
    assert len(a_val) == 10 and len(a_train) == 90
    assert not set(a_train) & set(a_val)
    with pytest.raises(ValueError, match="train_size"):
        train_validation_split(100, 1.5, torch.Generator())
