"""Sharing a totalVI model with its data: full or minified, MuData or AnnData + ``.obsm``."""

from __future__ import annotations

import anndata as ad
import mudata as mu
import numpy as np
import pandas as pd
import pytest
import torch
from tests.conftest import synthetic_citeseq

import cellvi as cv

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")
SMALL = {"n_hidden": 16, "n_latent": 4, "max_epochs": 20, "seed": 0}
DE_COLUMNS = ["proba_de", "bayes_factor", "lfc_median", "lfc_std", "scale1", "scale2"]


@pytest.fixture(scope="module")
def trained() -> mu.MuData:
    torch.set_num_threads(1)
    cv.settings.progress_bar = False
    mdata, _ = synthetic_citeseq(n_cells=120, n_genes=30, n_proteins=6)
    cv.pp.setup_registry(mdata, batch_key="batch")
    cv.tl.totalvi_train(mdata, **SMALL)
    return mdata


@pytest.fixture(scope="module")
def trained_obsm(trained) -> ad.AnnData:
    adata = trained["rna"].copy()
    adata.layers["counts"] = adata.X.copy()
    adata.X = None
    adata.obsm["protein_expression"] = pd.DataFrame(
        trained["prot"].X, index=adata.obs_names, columns=trained["prot"].var_names
    )
    cv.pp.setup_registry(
        adata, layer="counts", batch_key="batch", protein_obsm_key="protein_expression"
    )
    cv.tl.totalvi_train(adata, **SMALL)
    return adata


def _de(data, key: str) -> pd.DataFrame:
    cv.tl.differential_expression(
        data, groupby="cell_type", groups=["type0"], key=key, n_samples=200, seed=3
    )
    return cv.tl.differential_expression_df(data, "type0").set_index("names")


def test_minified_mudata_denoises_embeds_and_tests_like_the_full_data(trained, tmp_path):
    folder = cv.hub.save(trained, tmp_path / "m", key="totalvi", include_data="minified")
    assert {p.name for p in folder.iterdir()} == {
        "model.safetensors", "config.json", "README.md", "mdata.h5mu"
    }  # fmt: skip
    card = (folder / "README.md").read_text()
    assert "`mdata.h5mu` holds the reference cells without their counts" in card
    assert 'cv.hub.load_data("path/to/folder", key="totalvi")' in card
    mini = cv.hub.load_data(folder, key="ref")  # another key than at saving
    assert mini["rna"].X.nnz == 0 and mini["prot"].X.nnz == 0  # no counts of either kind
    assert mini.obsm["ref_qz_m"].shape == (120, 4)
    totals = np.asarray(trained["rna"].X.sum(1)).ravel()
    np.testing.assert_allclose(np.exp(mini.obs["ref_log_library_m"]), totals, rtol=1e-5)
    np.testing.assert_array_equal(mini["rna"].obs["batch"], trained["rna"].obs["batch"])
    np.testing.assert_array_equal(mini.obsm["X_ref"], trained.obsm["X_totalvi"])

    cv.tl.totalvi_embed(mini, key="ref", key_added="again")
    np.testing.assert_array_equal(mini.obsm["X_again"], trained.obsm["X_totalvi"])
    for batch in (None, "b1"):
        full = cv.tl.totalvi_denoise(trained, transform_batch=batch, copy=True)
        small = cv.tl.totalvi_denoise(mini, key="ref", transform_batch=batch, copy=True)
        for mod, layer in (("rna", "denoised"), ("prot", "denoised"), ("prot", "foreground_prob")):
            np.testing.assert_array_equal(
                small[mod].layers[f"ref_{layer}"], full[mod].layers[f"totalvi_{layer}"]
            )
    cv.tl.latent_posterior(trained, key="totalvi", n_samples=2, seed=0)
    cv.tl.latent_posterior(mini, key="ref", n_samples=2, seed=0)
    np.testing.assert_array_equal(mini.obsm["X_ref_var"], trained.obsm["X_totalvi_var"])
    np.testing.assert_array_equal(mini.obsm["X_ref_samples"], trained.obsm["X_totalvi_samples"])

    mini.obs["cell_type"] = trained["rna"].obs["cell_type"].to_numpy()
    full, small = _de(trained, "totalvi"), _de(mini, "ref")
    assert small.index.equals(full.index) and len(full) == 30 + 6
    # the default pseudocount comes from the stored library sizes (float32): within 1e-6
    np.testing.assert_allclose(small[DE_COLUMNS], full[DE_COLUMNS], rtol=1e-4, atol=1e-6)


def test_minified_totalvi_refuses_what_needs_the_counts(trained, tmp_path):
    mini = cv.hub.load_data(
        cv.hub.save(trained, tmp_path / "m", key="totalvi", include_data="minified"),
        key="totalvi",
    )
    calls = (
        lambda: cv.tl.totalvi_evaluate(mini),
        lambda: cv.tl.marginal_ll(mini, key="totalvi"),
        lambda: cv.hub.save(mini, tmp_path / "again", key="totalvi", include_data=True),
    )
    for call in calls:
        with pytest.raises(ValueError, match="minified.*needs the counts"):
            call()
    # minified again from the stored posterior: the same posterior
    again = cv.hub.save(mini, tmp_path / "again", key="totalvi", include_data="minified")
    back = cv.hub.load_data(again, key="totalvi")
    np.testing.assert_array_equal(back.obsm["totalvi_qz_v"], mini.obsm["totalvi_qz_v"])


def test_full_mudata_round_trip_and_load_into_a_mudata(trained, tmp_path):
    folder = cv.hub.save(trained, tmp_path / "m", key="totalvi", include_data=True)
    back = cv.hub.load_data(folder, key="totalvi")
    assert (back["rna"].X != trained["rna"].X).nnz == 0
    np.testing.assert_array_equal(back["prot"].X, trained["prot"].X)
    np.testing.assert_array_equal(back.obsm["X_totalvi"], trained.obsm["X_totalvi"])
    assert cv.tl.totalvi_evaluate(back) == cv.tl.totalvi_evaluate(trained)
    # the model alone, into a MuData of the same layout (checked against genes and proteins)
    fresh = trained.copy()
    del fresh.uns["totalvi"]
    cv.hub.load(folder, fresh, key="totalvi")
    cv.tl.totalvi_embed(fresh, key_added="loaded")
    np.testing.assert_array_equal(fresh.obsm["X_loaded"], trained.obsm["X_totalvi"])
    wrong = trained.copy()
    wrong.mod["prot"] = wrong["prot"][:, ::-1].copy()
    with pytest.raises(ValueError, match="proteins"):
        cv.hub.load(folder, wrong, key="totalvi")


def test_minified_anndata_with_obsm_proteins(trained_obsm, tmp_path):
    adata = trained_obsm
    folder = cv.hub.save(adata, tmp_path / "m", key="totalvi", include_data="minified")
    assert (folder / "adata.h5ad").is_file() and not (folder / "mdata.h5mu").exists()
    mini = cv.hub.load_data(folder, key="totalvi")
    assert mini.layers["counts"].nnz == 0
    assert (mini.obsm["protein_expression"].to_numpy() == 0).all()
    np.testing.assert_array_equal(mini.obsm["X_totalvi"], adata.obsm["X_totalvi"])
    full = cv.tl.totalvi_denoise(adata, copy=True)
    cv.tl.totalvi_denoise(mini)
    np.testing.assert_array_equal(mini.layers["totalvi_denoised"], full.layers["totalvi_denoised"])
    for name in ("totalvi_denoised_protein", "totalvi_foreground_prob"):
        pd.testing.assert_frame_equal(mini.obsm[name], full.obsm[name])
    with pytest.raises(ValueError, match="needs the counts"):
        cv.tl.marginal_ll(mini, key="totalvi")
    # full: the counts come back and everything that needs them works
    back = cv.hub.load_data(
        cv.hub.save(adata, tmp_path / "f", key="totalvi", include_data=True), key="totalvi"
    )
    np.testing.assert_array_equal(
        back.obsm["protein_expression"].to_numpy(), adata.obsm["protein_expression"].to_numpy()
    )
    cv.tl.marginal_ll(back, key="totalvi", n_mc_samples=5, seed=0)
    cv.tl.marginal_ll(adata, key="totalvi", n_mc_samples=5, seed=0)
    np.testing.assert_array_equal(back.obs["totalvi_marginal_ll"], adata.obs["totalvi_marginal_ll"])


def test_loaded_under_its_own_family_key_and_decoded_from_the_stored_posterior(trained, tmp_path):
    folder = cv.hub.save(trained, tmp_path / "m", key="totalvi", include_data="minified")
    mini = cv.hub.load_data(folder)  # no key: a totalVI model goes to .uns["totalvi"]
    assert mini.uns["totalvi"]["model"] == "totalvi"
    assert "scvi" not in mini.uns
    full = trained.copy()
    for data in (full, mini):
        cv.tl.likelihood_parameters(data, key="totalvi", key_added="lp")
    # the minified counts are all zero: equal parameters mean the stored posterior was used
    np.testing.assert_allclose(mini["rna"].layers["lp_mean"], full["rna"].layers["lp_mean"],
                               rtol=1e-5)  # fmt: skip
    np.testing.assert_allclose(
        mini["prot"].layers["lp_foreground_mean"], full["prot"].layers["lp_foreground_mean"],
        rtol=1e-5,
    )  # fmt: skip
    payload = cv.hub.load(folder)
    assert payload["model"] == "totalvi"
