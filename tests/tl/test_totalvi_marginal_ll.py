"""marginal_ll and latent_posterior for totalVI (RNA + protein) models."""

from __future__ import annotations

import mudata as mu
import numpy as np
import pytest
import torch
from tests.conftest import synthetic_citeseq

import cellvi as cv
from cellvi.analysis.posterior import log_importance_weights
from cellvi.lifecycle.runtime import load_model, model_data

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")
SMALL = {"n_hidden": 16, "n_latent": 4, "max_epochs": 30, "seed": 0}


@pytest.fixture(scope="module")
def trained() -> mu.MuData:
    torch.set_num_threads(1)
    cv.settings.progress_bar = False
    mdata, _ = synthetic_citeseq(n_cells=120, n_genes=30, n_proteins=6)
    cv.pp.setup_registry(mdata, batch_key="batch")
    cv.tl.totalvi_train(mdata, **SMALL)
    return mdata


@torch.inference_mode()
def _mean_log_weight_and_elbo(mdata, n: int, mask_rows: int = 0):
    """Per cell: the mean of ``n`` importance log weights and the mean of ``n`` one-sample
    ELBOs of the model's own loss (``forward``), with their standard errors."""
    model = load_model(mdata, "totalvi")
    module = model.module.eval()
    if mask_rows:  # pretend the first proteins were not measured in batch 1
        module.protein_batch_mask[1, :mask_rows] = 0.0
    mb = model_data(mdata, model).gather(torch.arange(mdata.n_obs))
    torch.manual_seed(0)
    log_w = log_importance_weights(module, mb, n).double()
    elbos = []
    for _ in range(n):
        terms = module(mb)
        elbos.append(-(terms.reconstruction + terms.kl_z + terms.kl_library).double())
    elbos = torch.stack(elbos)
    return log_w, elbos


@pytest.mark.parametrize("mask_rows", [0, 3])
def test_one_importance_draw_is_an_unbiased_elbo(trained, mask_rows):
    # E[log w] is the ELBO: same RNA and protein likelihood (log x!, log y! included), same
    # background prior and masking, with the KL terms estimated instead of exact
    n = 800
    log_w, elbos = _mean_log_weight_and_elbo(trained, n, mask_rows)
    diff = log_w.mean(0) - elbos.mean(0)
    se = (log_w.var(0) / n + elbos.var(0) / n).sqrt()
    assert (diff.abs() < 5 * se).float().mean() > 0.97
    total_se = float(se.square().sum().sqrt() / len(se))  # measured 0.13 (3,000 draws: 0.07)
    assert total_se < 0.3 and abs(float(diff.mean())) < 4 * total_se
    # the protein part is large (measured 76-94 nats), so leaving it out (or counting the
    # masked proteins) would show hundreds of standard errors away
    protein = float(_protein_reconstruction(trained, mask_rows).mean())
    assert protein > 100 * total_se


@torch.inference_mode()
def _protein_reconstruction(mdata, mask_rows):
    model = load_model(mdata, "totalvi")
    module = model.module.eval()
    module.protein_batch_mask[1, :mask_rows] = 0.0
    mb = model_data(mdata, model).gather(torch.arange(mdata.n_obs))
    return module(mb).reconstruction_protein


def test_marginal_ll_tightens_with_samples_and_bounds_the_elbo(trained):
    elbo = np.mean([cv.tl.totalvi_evaluate(trained, seed=s)["elbo"] for s in range(10)])
    sizes = (1, 20, 200)
    values = [cv.tl.marginal_ll(trained, key="totalvi", n_mc_samples=n, seed=1) for n in sizes]
    column = trained.obs["totalvi_marginal_ll"]
    assert column.dtype == np.float64 and np.isfinite(column).all()
    assert values[-1] == pytest.approx(float(column.mean()))
    # one draw estimates the ELBO (cell mean: 30 nats per draw / sqrt(120) cells)
    assert values[0] == pytest.approx(elbo, abs=10)
    assert values[0] + 5 < values[1] < values[2] and values[2] > elbo + 20


def test_marginal_ll_depends_on_the_protein_counts(trained):
    cv.tl.marginal_ll(trained, key="totalvi", n_mc_samples=20, seed=0, key_added="before")
    shifted = trained.copy()
    shifted["prot"].X = shifted["prot"].X + 50.0  # far more protein counts than trained on
    cv.tl.marginal_ll(
        shifted, key="totalvi", model_from=trained, n_mc_samples=20, seed=0, key_added="after"
    )
    drop = trained.obs["before"].to_numpy() - shifted.obs["after"].to_numpy()
    assert (drop > 10).all()


def test_latent_posterior_for_totalvi(trained, tmp_path):
    cv.tl.latent_posterior(trained, key="totalvi", n_samples=400, seed=0)
    var, samples = trained.obsm["X_totalvi_var"], trained.obsm["X_totalvi_samples"]
    assert var.shape == (120, 4) and var.dtype == np.float32 and (var > 0).all()
    assert samples.shape == (120, 400, 4) and "totalvi_log_library_mean" not in trained.obs
    mean = trained.obsm["X_totalvi"]
    # draws are centred on the embedding with the stored variances
    se = np.sqrt(var / 400)
    assert (np.abs(samples.mean(1) - mean) < 5 * se).mean() > 0.99
    np.testing.assert_allclose(samples.var(1), var, rtol=0.3)
    trained.write_h5mu(tmp_path / "post.h5mu")
    back = mu.read_h5mu(tmp_path / "post.h5mu")
    np.testing.assert_array_equal(back.obsm["X_totalvi_var"], var)
    np.testing.assert_array_equal(back.obsm["X_totalvi_samples"], samples)
    np.testing.assert_array_equal(
        back.obs["totalvi_marginal_ll"], trained.obs["totalvi_marginal_ll"]
    )
