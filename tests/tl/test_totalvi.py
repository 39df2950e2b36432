"""End to end: cv.tl.totalvi_train / embed / denoise / evaluate on synthetic CITE-seq data."""

from __future__ import annotations

import mudata as mu
import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import roc_auc_score
from tests.conftest import synthetic_citeseq

import cellvi as cv
from cellvi.lifecycle.payload import decode

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")
SMALL = {"n_hidden": 64, "n_latent": 6, "max_epochs": 100, "seed": 0}


@pytest.fixture(scope="module")
def trained():
    # module-scoped fixtures run before the function-scoped autouse one: same settings here
    torch.set_num_threads(1)
    cv.settings.progress_bar = False
    mdata, foreground = synthetic_citeseq()
    cv.pp.setup_registry(mdata, batch_key="batch")
    cv.tl.totalvi_train(mdata, **SMALL)
    return mdata, foreground


def test_latent_payload_and_defaults(trained):
    mdata, _ = trained
    assert mdata.obsm["X_totalvi"].shape == (240, 6)
    assert np.isfinite(mdata.obsm["X_totalvi"]).all()
    payload = mdata.uns["totalvi"]
    assert payload["model"] == "totalvi" and payload["encoding-type"] == "cellvi-model"
    params = payload["params"]
    # 10 proteins: no empirical prior by default; all proteins measured: no adversary
    assert params["empirical_protein_background_prior"] is False
    assert params["adversarial_classifier"] is False
    assert params["gene_likelihood"] == "nb" and params["lr"] == 4e-3
    assert list(payload["protein_names"]) == [f"prot{j}" for j in range(10)]
    history = payload["history"]
    assert history["elbo_train"][-1] > history["elbo_train"][0]


def test_foreground_probability_separates_known_proteins(trained):
    mdata, foreground = trained
    cv.tl.totalvi_denoise(mdata)
    prob = mdata["prot"].layers["totalvi_foreground_prob"]
    assert prob.shape == foreground.shape
    assert roc_auc_score(foreground.ravel(), prob.ravel()) > 0.93  # measured 0.961
    denoised = mdata["prot"].layers["totalvi_denoised"]
    # foreground proteins are denoised to higher values than background ones
    assert denoised[foreground].mean() > 2 * denoised[~foreground].mean()  # measured 2.5x
    rna = mdata["rna"].layers["totalvi_denoised"]
    np.testing.assert_allclose(rna.sum(1), 1e4, rtol=1e-4)


def test_denoise_background_and_transform_batch(trained):
    mdata, _ = trained
    out = cv.tl.totalvi_denoise(mdata, include_background=True, transform_batch="b0", copy=True)
    cv.tl.totalvi_denoise(mdata, transform_batch="b0")
    with_bg = out["prot"].layers["totalvi_denoised"]
    assert (with_bg >= mdata["prot"].layers["totalvi_denoised"] - 1e-5).all()
    with pytest.raises(ValueError, match="not batches of the model"):
        cv.tl.totalvi_denoise(mdata, transform_batch="nope")


def test_evaluate_full_elbo(trained):
    mdata, _ = trained
    res = cv.tl.totalvi_evaluate(mdata)
    assert res["n_cells"] == 240
    assert res["elbo"] == pytest.approx(-(res["reconstruction_error"] + res["kl"]))
    assert res["reconstruction_error"] == pytest.approx(
        res["reconstruction_error_rna"] + res["reconstruction_error_protein"]
    )
    assert res["kl"] == pytest.approx(res["kl_z"] + res["kl_background"])
    assert res["kl_background"] > 0 and res["reconstruction_error_protein"] > 0
    # a fresh copy without registry, evaluated with the model from elsewhere
    fresh, _ = synthetic_citeseq()
    again = cv.tl.totalvi_evaluate(fresh, model_from=mdata)
    assert again["elbo"] == pytest.approx(res["elbo"], rel=1e-6)


def test_h5mu_round_trip(trained, tmp_path):
    mdata, _ = trained
    path = tmp_path / "citeseq_totalvi.h5mu"
    mdata.write_h5mu(path)
    back = mu.read_h5mu(path)
    np.testing.assert_array_equal(back.uns["totalvi"]["weights"], mdata.uns["totalvi"]["weights"])
    a, b = decode(mdata.uns["totalvi"], "totalvi"), decode(back.uns["totalvi"], "totalvi")
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert x.equal(y), name
    cv.tl.totalvi_embed(back, key_added="again")
    np.testing.assert_array_equal(back.obsm["X_again"], mdata.obsm["X_totalvi"])
    assert cv.tl.totalvi_evaluate(back) == cv.tl.totalvi_evaluate(mdata)


def test_anndata_obsm_same_as_mudata(trained):
    mdata, _ = trained
    adata = mdata["rna"].copy()
    adata.obsm["protein_expression"] = pd.DataFrame(
        mdata["prot"].X, index=adata.obs_names, columns=mdata["prot"].var_names
    )
    cv.pp.setup_registry(adata, batch_key="batch", protein_obsm_key="protein_expression")
    cv.tl.totalvi_train(adata, **SMALL)
    np.testing.assert_array_equal(adata.obsm["X_totalvi"], mdata.obsm["X_totalvi"])
    cv.tl.totalvi_denoise(adata)
    ref = cv.tl.totalvi_denoise(mdata, copy=True)
    np.testing.assert_array_equal(
        adata.obsm["totalvi_foreground_prob"].to_numpy(),
        ref["prot"].layers["totalvi_foreground_prob"],
    )
    np.testing.assert_array_equal(
        adata.layers["totalvi_denoised"], ref["rna"].layers["totalvi_denoised"]
    )


def test_sparse_proteins_same_as_dense(trained):
    mdata, _ = trained
    sparse, _ = synthetic_citeseq(sparse_protein=True)
    cv.pp.setup_registry(sparse, batch_key="batch")
    cv.tl.totalvi_train(sparse, **SMALL)
    np.testing.assert_array_equal(sparse.obsm["X_totalvi"], mdata.obsm["X_totalvi"])


def test_missing_protein_batch_trains_without_nan():
    mdata, _ = synthetic_citeseq(n_proteins=12)
    b1 = (mdata["prot"].obs["batch"] == "b1").to_numpy()
    mdata["prot"].X[np.ix_(b1, [2, 4])] = 0.0
    with pytest.warns(UserWarning, match="not measured"):
        cv.pp.setup_registry(mdata, batch_key="batch")
    cv.tl.totalvi_train(mdata, **(SMALL | {"max_epochs": 20}))
    payload = mdata.uns["totalvi"]
    # some protein unmeasured in a batch: adversary on; 12 proteins > 10: empirical prior on
    assert payload["params"]["adversarial_classifier"] is True
    assert payload["params"]["empirical_protein_background_prior"] is True
    assert np.isfinite(payload["history"]["elbo_train"]).all()
    assert np.isfinite(mdata.obsm["X_totalvi"]).all()
    module = decode(payload, "totalvi")
    np.testing.assert_array_equal(
        module.protein_batch_mask[1].numpy(), [1, 1, 0, 1, 0, 1, 1, 1, 1, 1, 1, 1]
    )
    assert np.isfinite(cv.tl.totalvi_evaluate(mdata)["elbo"])


def test_bad_input_leaves_data_unchanged(trained):
    mdata, _ = trained
    rna_only = mdata["rna"].copy()
    cv.pp.setup_registry(rna_only, batch_key="batch")
    with pytest.raises(ValueError, match="has no protein counts"):
        cv.tl.totalvi_train(rna_only, **SMALL)
    assert "totalvi" not in rna_only.uns and "X_totalvi" not in rna_only.obsm
    other, _ = synthetic_citeseq()
    other.mod["prot"] = other["prot"][:, ::-1].copy()
    with pytest.raises(ValueError, match="not the model's"):
        cv.tl.totalvi_embed(other, model_from=mdata)
    assert "X_totalvi" not in other.obsm
    cv.tl.scvi_train(rna_only, max_epochs=1, n_hidden=8)
    with pytest.raises(ValueError, match=r"does not take the scVI model.*cv\.tl\.scvi_evaluate"):
        cv.tl.totalvi_evaluate(rna_only, key="scvi")


def test_copy_leaves_the_input_alone():
    mdata, _ = synthetic_citeseq(n_cells=80)
    registered = cv.pp.setup_registry(mdata, batch_key="batch", copy=True)
    assert "cellvi_registry" not in mdata.uns and "cellvi_registry" in registered.uns
    trained = cv.tl.totalvi_train(registered, **(SMALL | {"max_epochs": 2}), copy=True)
    assert "totalvi" not in registered.uns and "X_totalvi" not in registered.obsm
    assert trained.obsm["X_totalvi"].shape == (80, 6)
    denoised = cv.tl.totalvi_denoise(trained, copy=True)
    assert "totalvi_denoised" not in trained["prot"].layers
    assert denoised["prot"].layers["totalvi_denoised"].shape == (80, 10)
