"""scvi_train: training works, the model in .uns survives h5ad, results are reproducible."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
import torch
from sklearn.neighbors import KNeighborsClassifier

import cellvi as cv
from cellvi.lifecycle.runtime import load_model

FAST = {"max_epochs": 15, "n_hidden": 32, "batch_size": 64}


@pytest.fixture
def trained(adata):
    cv.pp.setup_registry(adata, layer="counts", batch_key="batch", labels_key="cell_type")
    cv.tl.scvi_train(adata, **FAST)
    return adata


def _knn_purity(latent, labels) -> float:
    knn = KNeighborsClassifier(n_neighbors=10).fit(latent, labels)
    return float((knn.predict(latent) == labels).mean())


def test_outputs_and_learning(trained):
    latent = trained.obsm["X_scvi"]
    assert latent.shape == (trained.n_obs, 10) and np.isfinite(latent).all()
    history = trained.uns["scvi"]["history"]
    assert len(history["elbo_train"]) == FAST["max_epochs"]
    assert history["elbo_train"][-1] > history["elbo_train"][0] + 10  # training learns
    assert history["kl_weight"][-1] == 1.0  # warm-up ended before training did
    # the latent separates the planted cell types far better than chance (1/3)
    assert _knn_purity(latent, trained.obs["cell_type"].to_numpy()) > 0.9
    params = trained.uns["scvi"]["params"]
    assert params["max_epochs"] == 15 and params["n_epochs_kl_warmup"] == 4
    assert trained.uns["scvi"]["metrics"]["elbo_validation"] < 0


def test_h5ad_round_trip_is_bit_identical(trained, tmp_path):
    path = tmp_path / "a.h5ad"
    trained.write_h5ad(path)
    back = ad.read_h5ad(path)
    before = load_model(trained, "scvi").module.state_dict()
    after = load_model(back, "scvi").module.state_dict()
    assert before.keys() == after.keys()
    for k in before:
        assert torch.equal(before[k], after[k]), k
    cv.tl.scvi_embed(back, key_added="again")
    np.testing.assert_array_equal(back.obsm["X_again"], trained.obsm["X_scvi"])
    assert cv.tl.scvi_evaluate(back) == cv.tl.scvi_evaluate(trained)


def test_same_seed_same_result_and_seed_matters(adata):
    cv.pp.setup_registry(adata, layer="counts", batch_key="batch")
    first = cv.tl.scvi_train(adata, copy=True, seed=3, **FAST)
    second = cv.tl.scvi_train(adata, copy=True, seed=3, **FAST)
    third = cv.tl.scvi_train(adata, copy=True, seed=4, **FAST)
    np.testing.assert_array_equal(first.obsm["X_scvi"], second.obsm["X_scvi"])
    np.testing.assert_array_equal(first.uns["scvi"]["weights"], second.uns["scvi"]["weights"])
    assert not np.array_equal(first.obsm["X_scvi"], third.obsm["X_scvi"])


def test_copy_leaves_input_untouched(adata):
    cv.pp.setup_registry(adata, layer="counts", batch_key="batch")
    keys = (set(adata.obsm), set(adata.uns))
    out = cv.tl.scvi_train(adata, copy=True, **FAST)
    assert (set(adata.obsm), set(adata.uns)) == keys
    assert "X_scvi" in out.obsm and "scvi" in out.uns


@pytest.mark.parametrize(
    "options",
    [
        {"gene_likelihood": "nb", "dispersion": "gene-batch"},
        {"gene_likelihood": "poisson"},
        {"dispersion": "gene-label", "latent_distribution": "ln"},
        {"dispersion": "gene-cell", "use_observed_lib_size": False},
        {"batch_representation": "embedding", "encode_covariates": True, "n_layers": 2},
        {"use_batch_norm": "none", "use_layer_norm": "both", "deeply_inject_covariates": False},
        {"early_stopping": True, "reduce_lr_on_plateau": True, "gradient_clip_val": 1.0},
    ],
)
def test_options_train_and_round_trip(adata, tmp_path, options):
    adata.obs["donor"] = np.where(np.arange(adata.n_obs) % 3 == 0, "d1", "d2")
    adata.obs["pct_mito"] = np.linspace(0, 1, adata.n_obs)
    cv.pp.setup_registry(
        adata,
        layer="counts",
        batch_key="batch",
        labels_key="cell_type",
        categorical_covariate_keys=["donor"],
        continuous_covariate_keys=["pct_mito"],
    )
    cv.tl.scvi_train(adata, max_epochs=3, n_hidden=16, batch_size=64, **options)
    assert np.isfinite(adata.obsm["X_scvi"]).all()
    path = tmp_path / "a.h5ad"
    adata.write_h5ad(path)
    back = ad.read_h5ad(path)
    cv.tl.scvi_embed(back, key_added="re")
    np.testing.assert_allclose(back.obsm["X_re"], adata.obsm["X_scvi"], rtol=0, atol=0)
    assert np.isfinite(cv.tl.scvi_evaluate(back)["elbo"])


def test_zero_count_cells_give_no_nan(adata):
    adata.layers["counts"][:5] = 0
    adata.layers["counts"].eliminate_zeros()
    with pytest.warns(UserWarning, match="zero"):
        cv.pp.setup_registry(adata, layer="counts", batch_key="batch")
    cv.tl.scvi_train(adata, max_epochs=3, n_hidden=16)
    assert np.isfinite(adata.obsm["X_scvi"]).all()
    assert np.isfinite(cv.tl.scvi_evaluate(adata)["elbo"])
    cv.tl.scvi_normalize(adata)
    assert np.isfinite(adata.layers["scvi_normalized"]).all()


def test_dense_input_matches_sparse_input(adata):
    dense = adata.copy()
    dense.layers["counts"] = dense.layers["counts"].toarray()
    for a in (adata, dense):
        cv.pp.setup_registry(a, layer="counts", batch_key="batch")
        cv.tl.scvi_train(a, max_epochs=2, n_hidden=16, seed=1)
    np.testing.assert_allclose(adata.obsm["X_scvi"], dense.obsm["X_scvi"], atol=1e-4)


def test_tiny_last_batch_does_not_break_batchnorm(adata):
    cv.pp.setup_registry(adata, layer="counts")
    # 216 training cells with batch_size 215: a 1-cell tail would break BatchNorm
    cv.tl.scvi_train(adata, max_epochs=1, batch_size=215, n_hidden=16)
    assert np.isfinite(adata.obsm["X_scvi"]).all()
