"""The payload records the C kernels its own training used, not those of earlier calls."""

import cellvi as cv


def test_a_torch_path_training_after_a_kernel_one_records_no_kernel(adata, monkeypatch):
    cv.pp.setup_registry(adata, layer="counts", batch_key="batch")
    cv.tl.scvi_train(adata, max_epochs=1, n_hidden=16, precision="32-true")
    first = adata.uns["scvi"]["versions"]["cellvi_native_kernels"]
    cv.tl.normalize(adata, key="scvi")  # may use kernels after the record was taken
    monkeypatch.setattr(cv.settings, "_native_kernels", False)
    cv.tl.scvi_train(adata, max_epochs=1, n_hidden=16, precision="32-true", key_added="torch")
    assert adata.uns["torch"]["versions"]["cellvi_native_kernels"] == "none (torch path)", first
