"""``cv.hub.save(..., include_data=True | "minified")`` and ``cv.hub.load_data`` / ``pull_data``."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp
import torch

import cellvi as cv

FILES = {"model.safetensors", "config.json", "README.md", "adata.h5ad"}


@pytest.fixture
def trained(adata) -> ad.AnnData:
    adata.obs["extra"] = np.arange(adata.n_obs)  # not registered: not shared
    cv.pp.setup_registry(adata, layer="counts", batch_key="batch")
    cv.tl.scvi_train(adata, max_epochs=2, n_hidden=16)
    return adata


def test_full_data_round_trip(trained, tmp_path):
    folder = cv.hub.save(trained, tmp_path / "m", include_data=True)
    assert {p.name for p in folder.iterdir()} == FILES
    assert "## Reference data" in (folder / "README.md").read_text()
    back = cv.hub.load_data(folder)
    assert list(back.obs.columns) == ["batch"] and back.X is None
    assert (back.layers["counts"] != trained.layers["counts"]).nnz == 0
    np.testing.assert_array_equal(back.obsm["X_scvi"], trained.obsm["X_scvi"])
    np.testing.assert_array_equal(back.uns["scvi"]["weights"], trained.uns["scvi"]["weights"])
    cv.tl.scvi_evaluate(back)  # real counts: everything works


def _same_seed(fn, adata, **kwargs):
    torch.manual_seed(7)
    fn(adata, **kwargs)


def test_minified_data_embeds_normalises_and_samples_like_the_full_data(trained, tmp_path):
    folder = cv.hub.save(trained, tmp_path / "m", include_data="minified")
    mini = cv.hub.load_data(folder, key="ref")  # another key than at saving
    counts = mini.layers["counts"]
    assert sp.issparse(counts) and counts.nnz == 0 and counts.shape == trained.shape
    assert mini.obsm["ref_qz_m"].shape == (trained.n_obs, 10)
    totals = np.asarray(trained.layers["counts"].sum(1)).ravel()
    np.testing.assert_allclose(np.exp(mini.obs["ref_log_library_m"]), totals, rtol=1e-5)
    np.testing.assert_array_equal(mini.obs["ref_log_library_v"], 0.0)
    np.testing.assert_array_equal(mini.obsm["X_ref"], trained.obsm["X_scvi"])

    cv.tl.scvi_embed(mini, key="ref", key_added="again")
    np.testing.assert_array_equal(mini.obsm["X_again"], trained.obsm["X_scvi"])
    for n_samples in (1, 3):
        _same_seed(cv.tl.scvi_normalize, trained, n_samples=n_samples, layer_added="n")
        _same_seed(cv.tl.scvi_normalize, mini, key="ref", n_samples=n_samples, layer_added="n")
        np.testing.assert_array_equal(mini.layers["n"], trained.layers["n"])
    cv.tl.posterior_predictive(trained, n_samples=2, layer_added="pp")
    cv.tl.posterior_predictive(mini, key="ref", n_samples=2, layer_added="pp")
    assert (mini.obsm["pp"] != trained.obsm["pp"]).nnz == 0
    cv.tl.likelihood_parameters(mini, key="ref")
    cv.tl.likelihood_parameters(trained)
    np.testing.assert_array_equal(mini.layers["ref_mean"], trained.layers["scvi_mean"])


def test_minified_data_refuses_what_needs_counts(trained, tmp_path):
    mini = cv.hub.load_data(cv.hub.save(trained, tmp_path / "m", include_data="minified"))
    for call in (cv.tl.scvi_evaluate, cv.tl.criticism):
        with pytest.raises(ValueError, match="minified.*needs the counts"):
            call(mini)
    with pytest.raises(ValueError, match="needs the counts"):
        cv.hub.save(mini, tmp_path / "again", include_data=True)
    # saving minified again (from the stored posterior) gives the same posterior
    again = cv.hub.load_data(cv.hub.save(mini, tmp_path / "again", include_data="minified"))
    np.testing.assert_array_equal(again.obsm["scvi_qz_v"], mini.obsm["scvi_qz_v"])


def test_learned_library_is_minified_with_its_variance(adata, tmp_path):
    cv.pp.setup_registry(adata, layer="counts", batch_key="batch")
    cv.tl.scvi_train(adata, max_epochs=2, n_hidden=16, use_observed_lib_size=False)
    mini = cv.hub.load_data(cv.hub.save(adata, tmp_path / "m", include_data="minified"))
    assert (mini.obs["scvi_log_library_v"] > 0).all()
    _same_seed(cv.tl.scvi_normalize, adata, n_samples=3, library_size="latent")
    _same_seed(cv.tl.scvi_normalize, mini, n_samples=3, library_size="latent")
    np.testing.assert_array_equal(mini.layers["scvi_normalized"], adata.layers["scvi_normalized"])


def test_bad_include_data_and_stale_data(trained, tmp_path):
    with pytest.raises(ValueError, match="include_data"):
        cv.hub.save(trained, tmp_path / "m", include_data="yes")
    assert not (tmp_path / "m").exists()
    folder = cv.hub.save(trained, tmp_path / "m", include_data="minified")
    cv.hub.save(trained, folder, overwrite=True)
    assert not (folder / "adata.h5ad").exists()
    with pytest.raises(FileNotFoundError, match="saved without data"):
        cv.hub.load_data(folder)


def test_pull_data_downloads_the_data_file(monkeypatch, trained, tmp_path):
    import huggingface_hub

    folder = cv.hub.save(trained, tmp_path / "m", include_data="minified")
    seen = {}

    def snapshot_download(repo_id, **kwargs):
        seen.update(kwargs)
        return str(folder)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    mini = cv.hub.pull_data("org/name")
    assert seen["allow_patterns"] == [
        "*.json",
        "*.safetensors",
        "README.md",
        "adata.h5ad",
        "mdata.h5mu",
    ]
    np.testing.assert_array_equal(mini.obsm["X_scvi"], trained.obsm["X_scvi"])


def test_minified_data_differential_expression_matches_the_full_data(trained, tmp_path):
    # the encoder must not run on the all-zero counts: DE reads the stored posterior
    mini = cv.hub.load_data(cv.hub.save(trained, tmp_path / "m", include_data="minified"))
    mini.obs["cell_type"] = trained.obs["cell_type"].to_numpy()
    tables = []
    for data in (trained, mini):
        cv.tl.differential_expression(data, groupby="cell_type", groups=["type0"], seed=3)
        tables.append(cv.tl.differential_expression_df(data, "type0").set_index("names"))
    columns = ["proba_de", "lfc_median", "lfc_std", "scale1", "scale2"]
    np.testing.assert_allclose(tables[1][columns], tables[0][columns], rtol=1e-4, atol=1e-6)
