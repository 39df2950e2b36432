"""``cv.tl.posterior_predictive`` and ``cv.tl.likelihood_parameters`` on totalVI models.

A copy of a trained model gets decoder heads with zero weights, so every cell has the same,
hand-set protein mixture (background 5, foreground 50, foreground probability 0.2): its draws
must average ``0.2 * 50 + 0.8 * 5 = 14``, while swapped components or an inverted mixing
probability would give 41.
"""

from __future__ import annotations

import copy

import mudata as mu
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
from scipy.stats import nbinom
from tests.conftest import synthetic_citeseq

import cellvi as cv
from cellvi.lifecycle.payload import weights_to_array
from cellvi.lifecycle.runtime import load_model

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")
FIT = {"n_hidden": 32, "n_latent": 5, "max_epochs": 30, "seed": 0}
BACK, FORE, P_FORE, THETA_P, THETA = 5.0, 50.0, 0.2, 5.0, 3.0
N_GENES, N_PROTEINS = 40, 10
PPC = "totalvi_posterior_predictive"


def _proportions() -> np.ndarray:
    p = np.linspace(1.0, 3.0, N_GENES)
    return p / p.sum()


def _add_known_model(data, key: str = "known") -> None:
    """A copy of ``data.uns["totalvi"]`` whose decoders no longer depend on z."""
    data.uns[key] = copy.deepcopy(data.uns["totalvi"])
    module = load_model(data, key).module
    rna, pro = module.rna_decoder, module.protein_decoder
    with torch.no_grad():
        for head in (rna.scale_logits, pro.back_mean, pro.back_std, pro.fore_ratio,
                     pro.background_logits):  # fmt: skip
            head.weight.zero_()
        rna.scale_logits.bias.copy_(torch.log(torch.as_tensor(_proportions())))
        module.log_theta.fill_(float(np.log(THETA)))
        pro.back_mean.bias.fill_(float(np.log(BACK)))
        pro.back_std.bias.fill_(-30.0)  # posterior sd of log b: STD_EPS only
        # log(fore / back) = log1p(softplus(x))
        pro.fore_ratio.bias.fill_(float(np.log(np.expm1(FORE / BACK - 1.0))))
        pro.background_logits.bias.fill_(float(np.log((1 - P_FORE) / P_FORE)))
        module.protein_log_theta.fill_(float(np.log(THETA_P)))
    data.uns[key]["weights"] = weights_to_array(module)


@pytest.fixture(scope="module")
def _trained():
    torch.set_num_threads(1)
    cv.settings.progress_bar = False
    mdata, _ = synthetic_citeseq(n_genes=N_GENES, n_proteins=N_PROTEINS)
    cv.pp.setup_registry(mdata, batch_key="batch")
    cv.tl.totalvi_train(mdata, **FIT)
    _add_known_model(mdata)
    return mdata


@pytest.fixture
def mdata(_trained):
    return _trained.copy()


def _totals(mdata) -> np.ndarray:
    return np.asarray(mdata["rna"].X.sum(1)).ravel()


def test_likelihood_parameters_of_the_known_mixture(mdata):
    cv.tl.likelihood_parameters(mdata, key="known")
    prot, rna = mdata["prot"].layers, mdata["rna"].layers
    np.testing.assert_allclose(prot["known_background_mean"], BACK, rtol=1e-3)
    np.testing.assert_allclose(prot["known_foreground_mean"], FORE, rtol=1e-3)
    np.testing.assert_allclose(prot["known_dispersion"], THETA_P, rtol=1e-5)
    np.testing.assert_allclose(prot["known_foreground_prob"], P_FORE, rtol=1e-5)
    expected = _totals(mdata)[:, None] * _proportions()[None, :]
    np.testing.assert_allclose(rna["known_mean"], expected, rtol=1e-4)
    np.testing.assert_allclose(rna["known_dispersion"], THETA, rtol=1e-5)
    assert "known_dropout" not in rna  # NB: no zero-inflation
    params = mdata.uns["known_likelihood"]["params"]
    assert params["protein_likelihood"] == "nb_mixture" and params["gene_likelihood"] == "nb"
    # library_size rescales the RNA only
    out = cv.tl.likelihood_parameters(mdata, key="known", library_size=1e4, copy=True)
    np.testing.assert_allclose(out["rna"].layers["known_mean"].sum(1), 1e4, rtol=1e-4)
    np.testing.assert_array_equal(
        out["prot"].layers["known_foreground_mean"], prot["known_foreground_mean"]
    )


def test_protein_draws_follow_the_known_mixture(mdata):
    cv.tl.posterior_predictive(mdata, key="known", n_samples=40, layer_added="ppc")
    draws = mdata["prot"].obsm["ppc"]
    assert sp.isspmatrix_csr(draws) and draws.dtype == np.float32
    assert draws.shape == (mdata.n_obs, 40 * N_PROTEINS)
    stack = draws.toarray().reshape(mdata.n_obs, 40, N_PROTEINS)
    assert np.array_equal(stack, np.round(stack)) and stack.min() >= 0
    mixture_mean = P_FORE * FORE + (1 - P_FORE) * BACK  # 14; swapped or inverted: 41
    np.testing.assert_allclose(stack.mean((0, 1)), mixture_mean, rtol=0.06)
    # the share of large counts pins the foreground weight and both components
    p = lambda mean: nbinom.sf(20, THETA_P, THETA_P / (THETA_P + mean))  # noqa: E731
    expected = P_FORE * p(FORE) + (1 - P_FORE) * p(BACK)
    assert (stack > 20).mean() == pytest.approx(expected, abs=0.015)
    rna = mdata["rna"].obsm["ppc"]
    assert sp.isspmatrix_csr(rna) and rna.shape == (mdata.n_obs, 40 * N_GENES)
    rna_mean = rna.toarray().reshape(mdata.n_obs, 40, N_GENES).mean(1)
    expected = _totals(mdata)[:, None] * _proportions()[None, :]
    np.testing.assert_allclose(rna_mean.mean(0), expected.mean(0), rtol=0.06)


def test_draws_of_a_trained_model_average_to_its_parameters(mdata):
    cv.tl.posterior_predictive(mdata, key="totalvi", n_samples=60, seed=1)
    cv.tl.likelihood_parameters(mdata, key="totalvi", n_samples=60, seed=1)
    stack = mdata["prot"].obsm[PPC].toarray().reshape(mdata.n_obs, 60, N_PROTEINS)
    prot = mdata["prot"].layers
    p = prot["totalvi_foreground_prob"]
    mean = p * prot["totalvi_foreground_mean"] + (1 - p) * prot["totalvi_background_mean"]
    drawn = stack.mean(1)
    # per protein, over cells; a swapped or inverted mixture is far off
    np.testing.assert_allclose(drawn.mean(0), mean.mean(0), rtol=0.1)
    swapped = (1 - p) * prot["totalvi_foreground_mean"] + p * prot["totalvi_background_mean"]
    assert np.abs(drawn.mean(0) / swapped.mean(0) - 1).max() > 0.3
    assert np.corrcoef(drawn.ravel(), mean.ravel())[0, 1] > 0.9


def test_one_draw_is_a_layer_and_seeds_reproduce(mdata):
    a = cv.tl.posterior_predictive(mdata, key="totalvi", seed=3, copy=True)
    b = cv.tl.posterior_predictive(mdata, key="totalvi", seed=3, copy=True)
    c = cv.tl.posterior_predictive(mdata, key="totalvi", seed=4, copy=True)
    for mod, n in (("rna", N_GENES), ("prot", N_PROTEINS)):
        layer = a[mod].layers[PPC]
        assert sp.isspmatrix_csr(layer) and layer.shape == (mdata.n_obs, n)
        assert (layer != b[mod].layers[PPC]).nnz == 0
        assert (layer != c[mod].layers[PPC]).nnz > 0
    assert PPC not in mdata["prot"].layers  # copy left the input alone
    assert a.uns[PPC]["params"]["seed"] == 3


def test_transform_batch_changes_the_proteins(mdata):
    cv.tl.likelihood_parameters(mdata, key="totalvi", transform_batch="b0", key_added="t0")
    cv.tl.likelihood_parameters(mdata, key="totalvi", transform_batch="b1", key_added="t1")
    cv.tl.likelihood_parameters(mdata, key="totalvi")
    prot = mdata["prot"].layers
    # synthetic background is exp(0.3) higher in b1; the model follows its batches
    assert prot["t1_background_mean"].mean() > prot["t0_background_mean"].mean()
    own = mdata["rna"].obs["batch"].to_numpy() == "b0"
    np.testing.assert_allclose(prot["t0_background_mean"][own], prot["totalvi_background_mean"][own],
                               rtol=1e-5)  # fmt: skip


def test_results_survive_an_h5mu_round_trip(mdata, tmp_path):
    cv.tl.posterior_predictive(mdata, key="totalvi", n_samples=2)
    cv.tl.likelihood_parameters(mdata, key="totalvi")
    mdata.write_h5mu(tmp_path / "a.h5mu")
    back = mu.read_h5mu(tmp_path / "a.h5mu")
    cv.tl.posterior_predictive(back, key="totalvi", n_samples=2)
    cv.tl.likelihood_parameters(back, key="totalvi")
    for mod in ("rna", "prot"):
        assert (back[mod].obsm[PPC] != mdata[mod].obsm[PPC]).nnz == 0
        for name in ("totalvi_dispersion", *(["totalvi_mean"] if mod == "rna" else [])):
            np.testing.assert_array_equal(back[mod].layers[name], mdata[mod].layers[name])
    np.testing.assert_array_equal(
        back["prot"].layers["totalvi_foreground_prob"],
        mdata["prot"].layers["totalvi_foreground_prob"],
    )


def _as_anndata(mdata):
    adata = mdata["rna"].copy()
    adata.obsm["adt_protein"] = pd.DataFrame(
        mdata["prot"].X, index=adata.obs_names, columns=mdata["prot"].var_names
    )
    cv.pp.setup_registry(adata, batch_key="batch", protein_obsm_key="adt_protein")
    cv.tl.totalvi_train(adata, **FIT)
    return adata


def test_anndata_with_obsm_proteins_gets_the_same_results(mdata):
    adata = _as_anndata(mdata)
    for data in (adata, mdata):
        cv.tl.posterior_predictive(data, key="totalvi", n_samples=3)
        cv.tl.likelihood_parameters(data, key="totalvi")
    assert (adata.obsm[PPC + "_protein"] != mdata["prot"].obsm[PPC]).nnz == 0
    assert (adata.obsm[PPC] != mdata["rna"].obsm[PPC]).nnz == 0
    frame = adata.obsm["totalvi_protein_foreground_mean"]
    assert list(frame.columns) == list(mdata["prot"].var_names)
    np.testing.assert_array_equal(frame.to_numpy(), mdata["prot"].layers["totalvi_foreground_mean"])
    np.testing.assert_array_equal(adata.layers["totalvi_mean"], mdata["rna"].layers["totalvi_mean"])
    with pytest.raises(ValueError, match="protein counts"):
        cv.tl.posterior_predictive(
            adata, key="totalvi", layer_added="adt"
        )  # would write obsm["adt_protein"]


def test_bad_arguments_fail_before_writing(mdata):
    def state():
        return {m: (set(mdata[m].layers), set(mdata[m].obsm)) for m in mdata.mod}, set(mdata.uns)

    before = state()
    with pytest.raises(KeyError, match="No trained model at adata.uns\\['nope'\\]"):
        cv.tl.posterior_predictive(mdata, key="nope")
    with pytest.raises(ValueError, match="not batches of the model"):
        cv.tl.likelihood_parameters(mdata, key="totalvi", transform_batch="b9")
    with pytest.raises(ValueError, match="names a trained model"):
        cv.tl.posterior_predictive(mdata, key="totalvi", layer_added="known")
    with pytest.raises(ValueError, match="n_samples"):
        cv.tl.posterior_predictive(mdata, key="totalvi", n_samples=-1)
    assert state() == before
