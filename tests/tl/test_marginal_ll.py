"""marginal_ll: importance sampling agrees with numerical integration over the latent."""

from __future__ import annotations

import math

import anndata as ad
import numpy as np
import pytest
import torch

import cellvi as cv
from cellvi.lifecycle.runtime import load_model, model_data

FAST = {"max_epochs": 15, "n_hidden": 16, "batch_size": 64, "n_latent": 1}


def _trained(adata, **options):
    cv.pp.setup_registry(adata, layer="counts", batch_key="batch")
    cv.tl.scvi_train(adata, gene_likelihood="nb", **{**FAST, **options})
    return adata


def _log_normal(x, m, v):
    return -0.5 * (math.log(2 * math.pi) + torch.log(v) + (x - m) ** 2 / v)


def _nb_log_pmf(x, log_mu, theta):
    """Negative binomial ``log P(x)`` with mean ``exp(log_mu)`` and inverse dispersion
    ``theta``, summed over genes."""
    log_theta_mu = torch.logaddexp(torch.log(theta), log_mu)
    terms = (
        torch.lgamma(x + theta) - torch.lgamma(theta) - torch.lgamma(x + 1)
        + theta * (torch.log(theta) - log_theta_mu) + x * (log_mu - log_theta_mu)
    )  # fmt: skip
    return terms.sum(-1)


def _grid(mean: torch.Tensor, var: torch.Tensor, n: int, width: float = 12.0) -> torch.Tensor:
    sd = var.sqrt().item()
    return torch.linspace(mean.item() - width * sd, mean.item() + width * sd, n)


@torch.inference_mode()
def _quadrature(module, mb):
    """``log p(x)`` per cell by a Riemann sum on a grid of +-12 posterior SDs in z (and in
    log l when the library is learned), with the negative binomial written out here.
    Widening the grid to +-40 SDs changes the result by less than 0.01 nats."""
    out = []
    for i in range(mb["x"].shape[0]):
        one = {k: v[i : i + 1] for k, v in mb.items()}
        post = module.inference(
            one["x"], one["batch"], one["cat_covs"], one["cont_covs"], deterministic=True
        )
        learned = "ql_m" in post
        z = _grid(post["qz_m"], post["qz_v"], 241 if learned else 801)
        log_prior = _log_normal(z, torch.tensor(0.0), torch.tensor(1.0))
        step = z[1] - z[0]
        if learned:
            log_l = _grid(post["ql_m"], post["ql_v"], 121)
            b = one["batch"].item()
            prior_l = _log_normal(log_l, module.library_log_means[b], module.library_log_vars[b])
            log_prior = log_prior.repeat_interleave(len(log_l)) + prior_l.repeat(len(z))
            z, log_l = (t.reshape(-1) for t in torch.meshgrid(z, log_l, indexing="ij"))
            step = step * (log_l[1] - log_l[0])
        else:
            log_l = post["log_library"].expand(len(z))
        n = len(z)
        covs = [
            one[k].expand(n, *one[k].shape[1:])
            for k in ("batch", "labels", "cat_covs", "cont_covs")
        ]
        gen = module.generative(z[:, None], log_l, *covs)
        log_px_z = _nb_log_pmf(one["x"], module.log_scale(gen) + log_l[:, None], gen["theta"])
        out.append(torch.logsumexp(log_px_z + log_prior, 0) + torch.log(step))
    return torch.stack(out).double().numpy()


@pytest.mark.parametrize("observed_library", [True, False])
def test_importance_sampling_matches_quadrature(adata, observed_library):
    # a learned library needs more steps for q(l | x) to reach the data (a poor proposal
    # would leave importance sampling far below the integral, as it should)
    options = {} if observed_library else {"lr": 1e-2, "batch_size": 32, "max_epochs": 40}
    _trained(adata, use_observed_lib_size=observed_library, **options)
    cells = adata[:12].copy()
    estimate_mean = cv.tl.marginal_ll(cells, model_from=adata, n_mc_samples=2000, seed=1)
    model = load_model(adata, "scvi")
    mb = model_data(cells, model).gather(torch.arange(cells.n_obs))
    exact = _quadrature(model.module.eval(), mb)
    estimate = cells.obs["scvi_marginal_ll"].to_numpy()
    assert estimate_mean == pytest.approx(estimate.mean())
    if observed_library:
        # per cell within 0.1 nats of the integral (values are around -200)
        np.testing.assert_allclose(estimate, exact, atol=0.1)
        return
    # With a learned library the proposal q(z) q(l) is factorised and, on this tiny model,
    # often far from the posterior, so the per-cell error depends on the training run
    # (measured over 4 seeds: median |error| from 0.2 to 8 nats, always from below on
    # average, largest overshoot +0.69). What must hold whatever the run: a lower bound up to
    # Monte Carlo noise, and far tighter than a single sample (measured gain 2.3 to 7 nats).
    assert (estimate - exact).max() < 1.0
    single = cv.tl.marginal_ll(cells, model_from=adata, n_mc_samples=1, seed=1, key_added="m1")
    assert estimate_mean > single + 1.0


def test_bound_tightens_with_samples_and_exceeds_the_elbo(adata):
    _trained(adata)
    elbo = cv.tl.scvi_evaluate(adata)["elbo"]
    one = cv.tl.marginal_ll(adata, n_mc_samples=1, seed=0, key_added="m1")
    many = cv.tl.marginal_ll(adata, n_mc_samples=200, seed=0, key_added="m200")
    # one sample is an ELBO estimate; many are a tighter bound on log p(x)
    assert one == pytest.approx(elbo, abs=0.3)
    assert many > elbo + 0.1
    # per cell, the 200-sample estimate is far less noisy than a single draw
    assert adata.obs["m200"].std() < adata.obs["m1"].std()


def test_same_after_h5ad_round_trip_and_seeded(adata, tmp_path):
    _trained(adata)
    first = cv.tl.marginal_ll(adata, n_mc_samples=20, seed=3)
    adata.write_h5ad(tmp_path / "a.h5ad")
    back = ad.read_h5ad(tmp_path / "a.h5ad")
    assert cv.tl.marginal_ll(back, n_mc_samples=20, seed=3) == first
    np.testing.assert_array_equal(back.obs["scvi_marginal_ll"], adata.obs["scvi_marginal_ll"])
    assert cv.tl.marginal_ll(back, n_mc_samples=20, seed=4) != first
    with pytest.raises(ValueError, match="n_mc_samples"):
        cv.tl.marginal_ll(back, n_mc_samples=0)
