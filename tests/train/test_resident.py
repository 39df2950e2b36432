"""Data kept on the training device: same minibatches, moved once, only when it fits."""

from __future__ import annotations

from types import SimpleNamespace

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp
import torch

import cellvi as cv
import cellvi.train.callbacks as callbacks
from cellvi.data.loader import MinibatchLoader, TensorData
from cellvi.data.registry import extract_registered_data, get_registry


@pytest.fixture
def data(adata):
    cv.pp.setup_registry(adata, layer="counts", batch_key="batch")
    return TensorData.from_registered(extract_registered_data(adata, get_registry(adata)))


def test_to_device_gathers_the_same_minibatches(data):
    moved = data.to("cpu")
    assert moved.values.data_ptr() == data.values.data_ptr()  # no copy for the same device
    rows = torch.tensor([5, 0, 239, 17])
    for dense_x in (True, False):
        a, b = data.gather(rows, dense_x=dense_x), moved.gather(rows, dense_x=dense_x)
        for key in a:
            torch.testing.assert_close(a[key], b[key], msg=key)
    expected = sum(
        t.numel() * t.element_size()
        for t in (data.batch, data.labels, data.cat_covs, data.cont_covs, data.log_x_factorial)
    ) + sum(t.numel() * t.element_size() for t in (data.indptr, data.indices, data.values))
    assert data.nbytes == expected


def test_residency_decision(monkeypatch):
    assert not callbacks.fits_on_device(10, torch.device("cpu"))
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (1000, 4000))
    assert callbacks.fits_on_device(500, torch.device("cuda", 0))
    assert not callbacks.fits_on_device(501, torch.device("cuda", 0))  # half the free memory


def test_callback_moves_shared_data_once(data, monkeypatch):
    moves = []
    monkeypatch.setattr(callbacks, "fits_on_device", lambda nbytes, device: True)
    original_to = TensorData.to
    monkeypatch.setattr(
        TensorData, "to", lambda self, device: moves.append(device) or original_to(self, device)
    )
    train = MinibatchLoader(data, np.arange(200), shuffle=True)
    val = MinibatchLoader(data, np.arange(200, 240))
    trainer = SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device("cpu")))
    callbacks.DeviceResidentData([train, val, None]).setup(trainer, None, "fit")
    assert moves == [torch.device("cpu")] and train.data is val.data


def test_csr_from_h5ad_is_shared_not_copied(adata, tmp_path):
    """What setup reads from an h5ad is wrapped as is: no second copy of the matrix."""
    adata.X = sp.csr_matrix(adata.layers.pop("counts"))
    adata.write_h5ad(tmp_path / "a.h5ad")
    adata = ad.read_h5ad(tmp_path / "a.h5ad")
    cv.pp.setup_registry(adata)
    registered = extract_registered_data(adata, get_registry(adata))
    data = TensorData.from_registered(registered)
    assert registered.X.indices.dtype == np.int32
    assert data.values.data_ptr() == adata.X.data.ctypes.data
    assert data.indices.data_ptr() == adata.X.indices.ctypes.data
    assert data.indptr.data_ptr() == adata.X.indptr.ctypes.data


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_training_keeps_data_resident(adata, monkeypatch):
    seen = []
    original = callbacks.DeviceResidentData.setup

    def setup(self, trainer, pl_module, stage):
        original(self, trainer, pl_module, stage)
        seen.extend(loader.data.values.device.type for loader in self.loaders)

    monkeypatch.setattr(callbacks.DeviceResidentData, "setup", setup)
    cv.pp.setup_registry(adata, layer="counts", batch_key="batch")
    cv.tl.scvi_train(adata, max_epochs=5, accelerator="gpu", precision="32-true")
    assert seen and set(seen) == {"cuda"}
    assert np.isfinite(adata.obsm["X_scvi"]).all()
