"""scANVI query mapping: a query without labels is annotated in the reference's space; its
labels, when it has some, are read with the reference's categories."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from tests.families.scanvi_data import FAST, annotated

import cellvi as cv
from cellvi.data.registry import extract_registered_data


def _split(adata: ad.AnnData, n_ref: int) -> tuple[ad.AnnData, ad.AnnData]:
    """The first ``n_ref`` cells as a registered reference; the rest, as a new batch ``q``
    without the labels column, as the query (same cell types, same genes)."""
    reference = adata[:n_ref].copy()
    cv.pp.setup_registry(reference, layer="counts", batch_key="batch", labels_key="label")
    query = adata[n_ref:].copy()
    del query.uns["cellvi_registry"]
    query.obs["batch"] = pd.Categorical(["q"] * query.n_obs)
    query.obs = query.obs.drop(columns="label")
    return reference, query


@pytest.fixture(scope="module")
def mapped():
    reference, query = _split(annotated(n_cells=900), 600)
    cv.tl.scvi_train(reference, max_epochs=60, encode_covariates=True, **FAST)
    cv.tl.scanvi_train(reference, **FAST)
    before = set(query.obs.columns)
    cv.tl.map_query(query, reference=reference, key="scanvi", max_epochs=30, seed=0)
    return reference, query, before


def test_a_query_without_labels_is_annotated(mapped):
    reference, query, before = mapped
    assert set(query.obs.columns) - before == {"scanvi_prediction", "scanvi_confidence"}
    assert "label" not in query.obs  # read as unlabelled, not added to the caller's data
    truth = query.obs["cell_type"].astype(str).to_numpy()
    accuracy = float((query.obs["scanvi_prediction"].astype(str).to_numpy() == truth).mean())
    print(f"scANVI query (new batch, no labels): accuracy {accuracy:.3f}")
    assert accuracy > 0.5, accuracy  # chance 0.2; 0.67 measured (seed 0)
    assert query.obsm["scanvi_probabilities"].shape == (query.n_obs, 5)
    registry = query.uns["scanvi"]["registry"]
    assert registry["unlabeled_category"] == "Unknown"
    assert list(registry["batch_categories"]) == ["b0", "b1", "q"]
    assert query.uns["scanvi"]["query_mapping"]["new_batches"] == ["q"]
    # the reference is unchanged and reads the same model registry
    assert reference.uns["scanvi"]["registry"]["unlabeled_category"] == "Unknown"


def test_frozen_mapping_adapts_only_the_decoder_and_classifier_norms(mapped):
    import torch

    from cellvi.lifecycle.runtime import load_model

    reference, query, _ = mapped
    old = load_model(reference, "scanvi").module.state_dict()
    new = load_model(query, "scanvi").module.state_dict()
    changed = set()
    for name, value in old.items():
        if "num_batches_tracked" in name or "library_log" in name:
            continue
        rows = new[name][: value.shape[0]] if new[name].dim() else new[name]
        if not torch.equal(rows, value):
            changed.add(name)
    norms = {f"{part}.{stat}" for part in ("decoder.body.norms.0", "classifier.0.norms.0")
             for stat in ("weight", "bias", "running_mean", "running_var")}  # fmt: skip
    assert changed == norms  # the encoder, z2 / z1 networks and classifier weights: frozen


def test_the_mapped_query_works_with_the_generic_verbs(mapped):
    _, query, _ = mapped
    data = query.copy()
    cv.tl.normalize(data, key="scanvi")
    assert cv.tl.marginal_ll(data, key="scanvi", n_mc_samples=5, seed=0) < 0
    embedded = cv.tl.embed(data, key="scanvi", copy=True)
    np.testing.assert_allclose(embedded.obsm["X_scanvi"], query.obsm["X_scanvi"], atol=1e-5)


def test_query_labels_are_read_with_the_reference_codes(mapped):
    reference, query, _ = mapped
    registry = query.uns["scanvi"]["registry"]  # the reference's, with the query's batch
    assert list(registry["labels_categories"]) == list(reference.uns["scanvi"]["registry"]["labels_categories"])  # fmt: skip
    categories = [str(c) for c in registry["labels_categories"]]
    unknown = categories.index("Unknown")
    no_column = extract_registered_data(query, registry, var_names=list(query.var_names))
    assert (no_column.labels == unknown).all()
    some = query.copy()
    some.obs["label"] = np.where(np.arange(some.n_obs) % 3 == 0, some.obs["cell_type"].astype(str), "Unknown")  # fmt: skip
    codes = extract_registered_data(some, registry, var_names=list(some.var_names)).labels
    expected = [categories.index(v) for v in some.obs["label"]]
    np.testing.assert_array_equal(codes, expected)


def test_labels_the_reference_does_not_know_are_refused_with_the_fix(mapped):
    reference, query, _ = mapped
    query = query.copy()
    query.obs["label"] = pd.Categorical(np.where(np.arange(query.n_obs) % 2, "type1", "platelet"))  # fmt: skip
    before = (set(query.obs.columns), set(query.obsm), set(query.uns))
    with pytest.raises(ValueError, match=r"not trained on: 'platelet'.*'Unknown' to have them predicted"):  # fmt: skip
        cv.tl.map_query(query, reference=reference, key="scanvi", max_epochs=1)
    assert (set(query.obs.columns), set(query.obsm), set(query.uns)) == before


def test_a_fully_labelled_reference_maps_an_unlabelled_query():
    adata = annotated(n_cells=450)
    adata.obs["label"] = adata.obs["cell_type"]
    reference, query = _split(adata, 300)
    cv.tl.scanvi_train(reference, scvi_key=None, max_epochs=30, encode_covariates=True, **FAST)
    assert "Unknown" not in list(reference.uns["scanvi"]["registry"]["labels_categories"])
    # the reference model itself cannot read cells without a label (of a known batch)
    known_batch = query.copy()
    known_batch.obs["batch"] = pd.Categorical(["b0"] * known_batch.n_obs)
    with pytest.raises(KeyError, match="every cell labelled.*cv.tl.map_query"):
        extract_registered_data(known_batch, reference.uns["scanvi"]["registry"],
                                var_names=list(query.var_names))  # fmt: skip
    cv.tl.map_query(query, reference=reference, key="scanvi", max_epochs=10, seed=0)
    registry = query.uns["scanvi"]["registry"]
    assert list(registry["labels_categories"])[-1] == "Unknown"
    assert int(registry["n_labels"]) == 6
    assert list(query.obs["scanvi_prediction"].cat.categories) == [f"type{t}" for t in range(5)]
    truth = query.obs["cell_type"].astype(str).to_numpy()
    assert (query.obs["scanvi_prediction"].astype(str).to_numpy() == truth).mean() > 0.5


def test_fine_tuning_keeps_the_classifier_and_adapts_its_norm(mapped):
    import torch

    from cellvi.lifecycle.runtime import load_model

    reference, query, _ = mapped
    tuned = cv.tl.map_query(query, reference=reference, key="scanvi", max_epochs=5,
                            freeze=False, seed=0, copy=True)  # fmt: skip
    old = load_model(reference, "scanvi").module.state_dict()
    new = load_model(tuned, "scanvi").module.state_dict()
    norm = "classifier.0.norms.0."
    for name, value in old.items():
        if not name.startswith("classifier.") or "num_batches_tracked" in name:
            continue
        assert torch.equal(new[name], value) != name.startswith(norm), name
    # every other weight was fine-tuned
    assert not torch.equal(new["z_encoder.mean.weight"], old["z_encoder.mean.weight"])
    assert not torch.equal(new["z2_encoder.mean.weight"], old["z2_encoder.mean.weight"])
    assert tuned.uns["scanvi"]["query_mapping"]["freeze"] is False
