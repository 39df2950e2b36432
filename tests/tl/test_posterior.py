"""``cv.tl.posterior_predictive`` and ``cv.tl.likelihood_parameters`` on a model whose answer is
known: a decoder with zero weights gives every cell the same proportions, dispersion and
zero-inflation, set by hand."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp
import torch

import cellvi as cv
from cellvi.lifecycle.payload import weights_to_array
from cellvi.lifecycle.runtime import load_model

N_GENES = 60
THETA, PI = 2.0, 0.3


def _proportions() -> np.ndarray:
    p = np.linspace(1.0, 3.0, N_GENES)
    return p / p.sum()


def _set_known_decoder(adata: ad.AnnData, key: str) -> None:
    """Zero decoder weights: proportions, theta and zero-inflation no longer depend on z."""
    module = load_model(adata, key).module
    dec = module.decoder
    with torch.no_grad():
        dec.scale_logits.weight.zero_()
        dec.scale_logits.bias.copy_(torch.log(torch.as_tensor(_proportions())))
        if dec.zi_logits is not None:
            dec.zi_logits.weight.zero_()
            dec.zi_logits.bias.fill_(float(np.log(PI / (1 - PI))))
        if module.log_theta is not None:
            module.log_theta.fill_(float(np.log(THETA)))
    adata.uns[key]["weights"] = weights_to_array(module)


def _trained(adata, likelihood="zinb", dense=False) -> ad.AnnData:
    if dense:
        adata.layers["counts"] = adata.layers["counts"].toarray()
    cv.pp.setup_registry(adata, layer="counts", batch_key="batch")
    cv.tl.scvi_train(adata, max_epochs=1, n_hidden=16, gene_likelihood=likelihood)
    _set_known_decoder(adata, "scvi")
    return adata


@pytest.fixture
def known(adata) -> ad.AnnData:
    return _trained(adata)


def _totals(adata) -> np.ndarray:
    return np.asarray(adata.layers["counts"].sum(1)).ravel()


def test_likelihood_parameters_match_the_known_decoder(known):
    cv.tl.likelihood_parameters(known)
    expected_mean = _totals(known)[:, None] * _proportions()[None, :]
    np.testing.assert_allclose(known.layers["scvi_mean"], expected_mean, rtol=1e-4)
    np.testing.assert_allclose(known.layers["scvi_dispersion"], THETA, rtol=1e-5)
    np.testing.assert_allclose(known.layers["scvi_dropout"], PI, rtol=1e-5)
    assert known.uns["scvi_likelihood"]["params"]["gene_likelihood"] == "zinb"


def test_likelihood_parameters_fixed_library_and_poisson(adata):
    known = _trained(adata, likelihood="poisson")
    cv.tl.likelihood_parameters(known, library_size=1e4, key_added="pois", n_samples=3)
    expected = np.broadcast_to(1e4 * _proportions(), known.shape)
    np.testing.assert_allclose(known.layers["pois_mean"], expected, rtol=1e-4)
    assert "pois_dispersion" not in known.layers and "pois_dropout" not in known.layers


def test_posterior_predictive_draws_from_the_known_distribution(known):
    cv.tl.posterior_predictive(known, n_samples=40, library_size=200.0)
    draws = known.obsm["scvi_posterior_predictive"]
    assert sp.issparse(draws) and draws.format == "csr" and draws.dtype == np.float32
    assert draws.shape == (known.n_obs, 40 * N_GENES)
    stack = draws.toarray().reshape(known.n_obs, 40, N_GENES)
    assert np.array_equal(stack, np.round(stack)) and stack.min() >= 0
    mu = 200.0 * _proportions()
    # ZINB: mean (1 - pi) mu, zero fraction pi + (1 - pi) (theta / (theta + mu))^theta
    np.testing.assert_allclose(stack.mean((0, 1)), (1 - PI) * mu, rtol=0.08)
    zeros = PI + (1 - PI) * (THETA / (THETA + mu)) ** THETA
    np.testing.assert_allclose((stack == 0).mean((0, 1)), zeros, atol=0.03)
    var = (1 - PI) * mu * (1 + mu / THETA + PI * mu)
    np.testing.assert_allclose(stack.var((0, 1)).mean(), var.mean(), rtol=0.1)


def test_posterior_predictive_one_sample_is_a_sparse_layer_at_the_cells_depth(adata):
    known = _trained(adata, likelihood="poisson", dense=True)
    cv.tl.posterior_predictive(known, layer_added="ppc")
    layer = known.layers["ppc"]
    assert sp.issparse(layer) and layer.shape == known.shape
    totals, drawn = _totals(known), np.asarray(layer.sum(1)).ravel()
    # Poisson at the cell's own library: totals are Poisson(total), so within a few sd
    assert np.all(np.abs(drawn - totals) < 6 * np.sqrt(totals) + 1)
    assert known.uns["ppc"]["params"]["n_samples"] == 1


def test_transform_batch_and_seed(known):
    a = cv.tl.posterior_predictive(known, transform_batch="b0", copy=True, seed=3)
    b = cv.tl.posterior_predictive(known, transform_batch="b0", copy=True, seed=3)
    c = cv.tl.posterior_predictive(known, copy=True, seed=4)
    key = "scvi_posterior_predictive"
    assert (a.layers[key] != b.layers[key]).nnz == 0
    assert (a.layers[key] != c.layers[key]).nnz > 0
    with pytest.raises(ValueError, match="not batches of the model"):
        cv.tl.posterior_predictive(known, transform_batch="nope")
    with pytest.raises(TypeError, match="one batch name"):
        cv.tl.likelihood_parameters(known, transform_batch=["b0", "b1"])


def test_bad_arguments_fail_before_writing(known):
    before = set(known.layers) | set(known.obsm) | set(known.uns)
    with pytest.raises(ValueError, match="n_samples"):
        cv.tl.posterior_predictive(known, n_samples=0)
    with pytest.raises(ValueError, match="library_size"):
        cv.tl.likelihood_parameters(known, library_size=-1)
    with pytest.raises(KeyError, match="scvi_train"):
        cv.tl.likelihood_parameters(known, key="other")
    with pytest.raises(ValueError, match="names a trained model"):
        cv.tl.posterior_predictive(known, layer_added="scvi")
    assert set(known.layers) | set(known.obsm) | set(known.uns) == before


def test_results_survive_an_h5ad_round_trip(known, tmp_path):
    cv.tl.posterior_predictive(known, n_samples=2)
    cv.tl.likelihood_parameters(known)
    known.write_h5ad(tmp_path / "a.h5ad")
    back = ad.read_h5ad(tmp_path / "a.h5ad")
    cv.tl.posterior_predictive(back, n_samples=2)
    cv.tl.likelihood_parameters(back)
    key = "scvi_posterior_predictive"
    assert (back.obsm[key] != known.obsm[key]).nnz == 0
    for name in ("scvi_mean", "scvi_dispersion", "scvi_dropout"):
        np.testing.assert_array_equal(back.layers[name], known.layers[name])
