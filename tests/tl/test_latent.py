"""latent_posterior: variances and draws agree with the encoder's Gaussian."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
import torch

import cellvi as cv
from cellvi.lifecycle.runtime import load_model, model_data

FAST = {"max_epochs": 10, "n_hidden": 16, "batch_size": 64, "n_latent": 4}


@pytest.fixture
def trained(adata):
    cv.pp.setup_registry(adata, layer="counts", batch_key="batch")
    cv.tl.scvi_train(adata, **FAST)
    return adata


def test_draws_match_posterior_mean_and_variance(trained):
    cv.tl.latent_posterior(trained, n_samples=400, seed=0)
    var, draws = trained.obsm["X_scvi_var"], trained.obsm["X_scvi_samples"]
    assert var.shape == (trained.n_obs, 4) and (var > 0).all()
    assert draws.shape == (trained.n_obs, 400, 4) and draws.dtype == np.float32
    # 400 draws: the mean within 4 standard errors of the posterior mean; the variance ratio
    # has a relative SE of 7 % per entry, 0.2 % averaged over the 960 entries
    se = np.sqrt(var / 400)
    assert (np.abs(draws.mean(1) - trained.obsm["X_scvi"]) < 4 * se).mean() > 0.999
    ratio = draws.var(1) / var
    assert ratio.mean() == pytest.approx(1.0, abs=0.01)
    assert np.abs(ratio - 1).max() < 0.4
    # the variances are the encoder's, not re-estimated
    model = load_model(trained, "scvi")
    mb = model_data(trained, model).gather(torch.arange(5))
    with torch.inference_mode():
        post = model.module.inference(
            mb["x"], mb["batch"], mb["cat_covs"], mb["cont_covs"], deterministic=True
        )
    np.testing.assert_allclose(var[:5], post["qz_v"].numpy(), rtol=1e-5)


def test_variances_only_seeded_and_h5ad_safe(trained, tmp_path):
    out = cv.tl.latent_posterior(trained, n_samples=0, key_added="v", copy=True)
    assert "X_v_var" in out.obsm and "X_v_samples" not in out.obsm
    assert "X_v_var" not in trained.obsm
    cv.tl.latent_posterior(trained, n_samples=3, seed=5)
    trained.write_h5ad(tmp_path / "a.h5ad")
    back = ad.read_h5ad(tmp_path / "a.h5ad")
    np.testing.assert_array_equal(back.obsm["X_scvi_samples"], trained.obsm["X_scvi_samples"])
    cv.tl.latent_posterior(back, n_samples=3, seed=5, key_added="again")
    np.testing.assert_array_equal(back.obsm["X_again_samples"], trained.obsm["X_scvi_samples"])
    with pytest.raises(ValueError, match="n_samples"):
        cv.tl.latent_posterior(back, n_samples=-1)


def test_logistic_normal_draws_and_learned_library(adata):
    cv.pp.setup_registry(adata, layer="counts", batch_key="batch")
    cv.tl.scvi_train(adata, latent_distribution="ln", use_observed_lib_size=False, **FAST)
    cv.tl.latent_posterior(adata, n_samples=2)
    draws = adata.obsm["X_scvi_samples"]
    np.testing.assert_allclose(draws.sum(-1), 1.0, rtol=1e-5)  # on the simplex
    assert (adata.obs["scvi_log_library_var"] > 0).all()
    assert np.isfinite(adata.obs["scvi_log_library_mean"]).all()
