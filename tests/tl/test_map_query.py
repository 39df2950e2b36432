"""map_query: a held-out batch lands near its own cell types; the reference stays frozen."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
import torch
from sklearn.neighbors import KNeighborsClassifier
from tests.conftest import synthetic_counts

import cellvi as cv
from cellvi.lifecycle.runtime import load_model

FAST = {"max_epochs": 40, "n_hidden": 32, "batch_size": 64, "encode_covariates": True}


@pytest.fixture(scope="module")
def split():
    """A reference (batches b0, b1) with a trained model and a query (new batch b2)."""
    cv.settings.progress_bar = False
    torch.set_num_threads(1)
    adata = synthetic_counts(n_cells=600, n_genes=60, n_batch=3, seed=1)
    ref = adata[adata.obs["batch"] != "b2"].copy()
    query = adata[adata.obs["batch"] == "b2"].copy()
    cv.pp.setup_registry(ref, layer="counts", batch_key="batch")
    cv.tl.scvi_train(ref, **FAST)
    return ref, query


def _transfer_accuracy(ref, query) -> float:
    knn = KNeighborsClassifier(n_neighbors=15).fit(ref.obsm["X_scvi"], ref.obs["cell_type"])
    return float((knn.predict(query.obsm["X_scvi"]) == query.obs["cell_type"]).mean())


def test_query_lands_on_its_cell_types_and_reference_is_frozen(split):
    ref, query = split
    query = query.copy()
    cv.tl.map_query(query, reference=ref, max_epochs=30, batch_size=32, lr=1e-2)
    assert _transfer_accuracy(ref, query) > 0.9  # measured 1.0; chance 1/3
    payload = query.uns["scvi"]
    assert list(payload["registry"]["batch_categories"]) == ["b0", "b1", "b2"]
    assert list(payload["query_mapping"]["new_batches"]) == ["b2"]
    elbo = payload["history"]["elbo_train"]
    assert len(elbo) == 30 and elbo[-1] > elbo[0] + 1  # the new batch columns learned
    # measured: query ELBO -151.37 with the untrained new columns, -148.26 after mapping
    assert cv.tl.scvi_evaluate(query)["elbo"] > -150
    before, after = load_model(ref, "scvi").module, load_model(query, "scvi").module
    old, new = before.state_dict(), after.state_dict()
    moved, adapted = [], []
    for name, value in old.items():
        if "num_batches_tracked" in name or "library_log" in name:
            continue
        if name.startswith("decoder.body.norms."):  # the decoder's norms adapt to the query
            if not torch.equal(new[name], value):
                adapted.append(name)
            continue
        assert torch.equal(new[name][: value.shape[0]], value), name
        if new[name].shape != value.shape and not torch.equal(new[name][2], value.mean(0)):
            moved.append(name)
    # only the new batch's rows trained, in the encoder and the decoder
    assert sorted(moved) == [
        "decoder.body.injections.0.categorical.0.weight",
        "z_encoder.body.injections.0.categorical.0.weight",
    ]
    # the decoder's batch norm: scale, shift and running statistics
    assert sorted(adapted) == [f"decoder.body.norms.0.{p}" for p in ("bias", "running_mean", "running_var", "weight")]  # fmt: skip
    # the reference's cells embed the same with the query's model
    cv.tl.scvi_embed(ref, model_from=query, key_added="via_query")
    np.testing.assert_allclose(ref.obsm["X_via_query"], ref.obsm["X_scvi"], atol=1e-5)


def test_padded_genes_copy_and_h5ad_round_trip(split, tmp_path):
    ref, query = split
    rng = np.random.default_rng(0)
    shuffled = query[:, rng.permutation(query.n_vars)[:50]].copy()  # 10 genes missing
    with pytest.raises(ValueError, match="copy=True"):
        cv.tl.map_query(shuffled, reference=ref)
    assert "scvi" not in shuffled.uns
    mapped = cv.tl.map_query(shuffled, reference=ref, max_epochs=30, copy=True)
    assert list(mapped.var_names) == list(ref.var_names)
    assert mapped.var["cellvi_padded"].sum() == 10
    padded = mapped.var_names[mapped.var["cellvi_padded"]]
    assert mapped[:, padded].layers["counts"].sum() == 0
    kept = mapped.var_names[~mapped.var["cellvi_padded"]]
    np.testing.assert_array_equal(
        mapped[:, kept].layers["counts"].toarray(), query[:, kept].layers["counts"].toarray()
    )
    assert mapped.uns["scvi"]["query_mapping"]["gene_overlap"] == pytest.approx(50 / 60)
    assert _transfer_accuracy(ref, mapped) > 0.85
    # every tl function works on the mapped query, also after an h5ad round trip
    mapped.write_h5ad(tmp_path / "q.h5ad")
    back = ad.read_h5ad(tmp_path / "q.h5ad")
    cv.tl.scvi_embed(back, key_added="again")
    np.testing.assert_array_equal(back.obsm["X_again"], mapped.obsm["X_scvi"])
    cv.tl.scvi_normalize(back, transform_batch="b2")
    assert np.isfinite(cv.tl.marginal_ll(back, n_mc_samples=5))


def test_unfrozen_fine_tuning_moves_shared_weights(split):
    ref, query = split
    mapped = cv.tl.map_query(query, reference=ref, max_epochs=5, freeze=False, copy=True)
    old = load_model(ref, "scvi").module.state_dict()
    new = load_model(mapped, "scvi").module.state_dict()
    name = "decoder.body.linears.0.weight"
    assert not torch.equal(old[name], new[name])
    assert not mapped.uns["scvi"]["query_mapping"]["freeze"]


def test_query_of_known_batches_is_embedded_without_training(split):
    ref, _ = split
    known = ref[ref.obs["batch"] == "b1"].copy()
    del known.uns["scvi"], known.obsm["X_scvi"]
    cv.tl.map_query(known, reference=ref)
    np.testing.assert_allclose(
        known.obsm["X_scvi"], ref[ref.obs["batch"] == "b1"].obsm["X_scvi"], atol=1e-5
    )
    assert len(known.uns["scvi"]["query_mapping"]["new_batches"]) == 0


def test_errors_leave_the_query_unchanged(split, adata):
    ref, query = split
    few = query[:, :20].copy()
    with pytest.raises(ValueError, match="only 20 of the reference's 60 genes"):
        cv.tl.map_query(few, reference=ref, copy=True)
    no_batch = ref.copy()
    del no_batch.uns["scvi"]
    cv.pp.setup_registry(no_batch, layer="counts")
    cv.tl.scvi_train(no_batch, max_epochs=2, n_hidden=8)
    with pytest.raises(ValueError, match="without a batch_key"):
        cv.tl.map_query(query.copy(), reference=no_batch)
    unknown = query.copy()
    unknown.obs = unknown.obs.drop(columns="batch")
    with pytest.raises(KeyError, match="batch"):
        cv.tl.map_query(unknown, reference=ref)
    assert "scvi" not in unknown.uns and "X_scvi" not in unknown.obsm


def test_default_encoder_warns_that_it_cannot_adapt(adata):
    ref = adata[adata.obs["batch"] == "b0"].copy()
    query = adata[adata.obs["batch"] == "b1"].copy()
    cv.pp.setup_registry(ref, layer="counts", batch_key="batch")
    cv.tl.scvi_train(ref, max_epochs=3, n_hidden=8)
    with pytest.warns(UserWarning, match="encode_covariates=False"):
        cv.tl.map_query(query, reference=ref, max_epochs=2)
    assert query.obsm["X_scvi"].shape == (query.n_obs, 10)
