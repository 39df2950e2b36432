"""scANVI: annotation from a few labels, its bad inputs, and the start from a trained scVI."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from tests.families.scanvi_data import FAST, annotated, unlabelled_accuracy

import cellvi as cv


@pytest.fixture(scope="module")
def trained() -> ad.AnnData:
    adata = annotated()
    cv.tl.scvi_train(adata, max_epochs=60, **FAST)
    cv.tl.scanvi_train(adata, **FAST)
    return adata


def test_predictions_beat_chance_clearly_from_ten_percent_of_labels(trained):
    accuracy = unlabelled_accuracy(trained)
    print(f"scANVI from scVI, 10% labels: unlabelled accuracy {accuracy:.3f}")
    assert accuracy > 0.6, accuracy  # chance: 0.2 (5 balanced types)
    labelled = (trained.obs["label"] != "Unknown").to_numpy()
    given = trained.obs["label"].astype(str).to_numpy()[labelled]
    pred = trained.obs["scanvi_prediction"].astype(str).to_numpy()[labelled]
    assert (pred == given).mean() > 0.9


def test_prediction_fields(trained):
    pred = trained.obs["scanvi_prediction"]
    assert isinstance(pred.dtype, pd.CategoricalDtype)
    assert list(pred.cat.categories) == [f"type{t}" for t in range(5)]  # no "Unknown"
    confidence = trained.obs["scanvi_confidence"].to_numpy()
    assert ((confidence >= 0) & (confidence <= 1)).all()
    proba = trained.obsm["scanvi_probabilities"]
    assert proba.shape == (trained.n_obs, 5)
    np.testing.assert_allclose(proba.sum(1), 1.0, atol=1e-5)
    np.testing.assert_allclose(proba.max(1), confidence)
    columns = list(trained.uns["scanvi_probabilities_columns"])
    assert columns == list(pred.cat.categories)
    assert (np.asarray(columns)[proba.argmax(1)] == pred.astype(str).to_numpy()).all()


def test_started_from_scvi_takes_its_shape_and_fine_tunes(trained):
    params = trained.uns["scanvi"]["params"]
    assert params["scvi_key"] == "scvi"
    assert params["max_epochs"] == 10 and params["n_epochs_kl_warmup"] == 0
    assert params["n_steps_classifier_prefit"] == 200  # resolved from None
    other = annotated()
    cv.tl.scvi_train(other, max_epochs=2, n_latent=6, **FAST)
    cv.tl.scanvi_train(other, max_epochs=1, **FAST)
    assert other.obsm["X_scanvi"].shape[1] == 6
    assert other.uns["scanvi"]["params"]["n_latent"] == 6


def test_from_scratch_also_annotates():
    adata = annotated()
    cv.tl.scanvi_train(adata, scvi_key=None, max_epochs=60, **FAST)
    assert unlabelled_accuracy(adata) > 0.6
    assert adata.uns["scanvi"]["params"]["n_epochs_kl_warmup"] == 15  # the shared default
    assert adata.uns["scanvi"]["params"]["n_steps_classifier_prefit"] == 0  # no latent to fit on


def test_a_fully_labelled_reference_is_valid():
    adata = annotated(n_cells=300)
    adata.obs["label"] = adata.obs["cell_type"]
    cv.pp.setup_registry(adata, layer="counts", batch_key="batch", labels_key="label")
    cv.tl.scanvi_train(adata, scvi_key=None, max_epochs=20, **FAST)
    assert adata.obs["scanvi_prediction"].cat.categories.tolist() == [f"type{t}" for t in range(5)]
    accuracy = adata.obs["scanvi_prediction"].astype(str) == adata.obs["cell_type"].astype(str)
    assert accuracy.mean() > 0.6


def _unchanged(adata: ad.AnnData, call, error, match: str) -> None:
    before = (set(adata.uns), set(adata.obsm), set(adata.obs.columns))
    with pytest.raises(error, match=match):
        call()
    assert (set(adata.uns), set(adata.obsm), set(adata.obs.columns)) == before


def test_bad_input_is_refused_with_the_fix_and_data_unchanged():
    small = {**FAST, "max_epochs": 1}
    no_labels = annotated(n_cells=120)
    cv.pp.setup_registry(no_labels, layer="counts", batch_key="batch")
    _unchanged(no_labels, lambda: cv.tl.scanvi_train(no_labels, scvi_key=None, **small),
               ValueError, "labels_key")  # fmt: skip

    everyone_unknown = annotated(n_cells=120)
    everyone_unknown.obs["label"] = pd.Categorical(["Unknown"] * 120)
    cv.pp.setup_registry(everyone_unknown, layer="counts", batch_key="batch", labels_key="label")
    _unchanged(everyone_unknown, lambda: cv.tl.scanvi_train(everyone_unknown, scvi_key=None, **small),
               ValueError, "every cell is 'Unknown'.*unlabeled_category")  # fmt: skip

    one_type = annotated(n_cells=120)
    one_type.obs["label"] = pd.Categorical(np.where(np.arange(120) % 2, "Unknown", "typeA"))
    cv.pp.setup_registry(one_type, layer="counts", batch_key="batch", labels_key="label")
    _unchanged(one_type, lambda: cv.tl.scanvi_train(one_type, scvi_key=None, **small),
               ValueError, r"at least two cell types.*only \['typeA'\]")  # fmt: skip

    other_marker = annotated(n_cells=120)
    other_marker.obs["label"] = other_marker.obs["label"].cat.rename_categories({"Unknown": "unlabeled"})  # fmt: skip
    cv.pp.setup_registry(other_marker, layer="counts", batch_key="batch", labels_key="label")
    _unchanged(other_marker, lambda: cv.tl.scanvi_train(other_marker, scvi_key=None, **small),
               ValueError, "unlabeled_category='unlabeled'")  # fmt: skip
    cv.tl.scanvi_train(other_marker, scvi_key=None, unlabeled_category="unlabeled", **small)
    assert "unlabeled" not in other_marker.obs["scanvi_prediction"].cat.categories

    adata = annotated(n_cells=120)
    _unchanged(adata, lambda: cv.tl.scanvi_train(adata, **small), KeyError,
               r"cv\.tl\.scvi_train.*None")  # fmt: skip

    cv.tl.scvi_train(adata, **small)
    _unchanged(adata, lambda: cv.tl.scanvi_train(adata, n_latent=7, **small), ValueError,
               "n_latent=7 differs")  # fmt: skip
    _unchanged(adata, lambda: cv.tl.scanvi_train(adata, n_steps_classifier_prefit=-1, **small),
               ValueError, "non-negative integer or None")  # fmt: skip
    _unchanged(adata, lambda: cv.tl.scanvi_train(adata, scvi_key=None, n_steps_classifier_prefit=5,
               **small), ValueError, "pass scvi_key, or leave")  # fmt: skip
    other_batches = adata.copy()
    other_batches.obs["batch"] = pd.Categorical(["one"] * other_batches.n_obs)
    cv.pp.setup_registry(other_batches, layer="counts", batch_key="batch", labels_key="label")
    _unchanged(other_batches, lambda: cv.tl.scanvi_train(other_batches, **small), ValueError,
               r"different registry \(batch_categories.*scvi_key=None")  # fmt: skip


def test_generic_verbs_and_de_between_predicted_groups(trained):
    data = trained.copy()
    cv.tl.normalize(data, key="scanvi")
    assert cv.tl.marginal_ll(data, key="scanvi", n_mc_samples=5, seed=0) < 0
    cv.tl.differential_expression(data, key="scanvi", groupby="scanvi_prediction",
                                  groups=["type0"], n_samples=100)  # fmt: skip
    assert "rank_genes_groups_scanvi" in data.uns


def test_the_classifier_sees_labels_balanced_however_rare(monkeypatch):
    """Each training step gets a companion minibatch of labelled cells with every label
    equally likely: a type with 3 labelled cells is drawn as often as one with 24."""
    from cellvi.models.scanvi import SCANVIModule

    drawn = []
    original = SCANVIModule.classification_loss

    def spy(self, mb, qz_m):
        drawn.append(np.bincount(self.classes(mb["labelled"]["labels"]).numpy(), minlength=5))
        return original(self, mb, qz_m)

    monkeypatch.setattr(SCANVIModule, "classification_loss", spy)
    adata = annotated()
    label = adata.obs["label"].astype(str).to_numpy().copy()
    label[np.flatnonzero(label == "type0")[3:]] = "Unknown"
    adata.obs["label"] = pd.Categorical(label)
    cv.pp.setup_registry(adata, layer="counts", batch_key="batch", labels_key="label")
    cv.tl.scanvi_train(adata, scvi_key=None, max_epochs=3, balance_labels=True, **FAST)
    counts = np.sum(drawn, 0)
    assert len(drawn) == 27 and counts.sum() == 27 * FAST["batch_size"]
    assert counts.min() / counts.max() > 0.7, counts


def test_by_default_the_classifier_sees_the_minibatch_labels(monkeypatch):
    from cellvi.models.scanvi import SCANVIModule

    seen = []
    original = SCANVIModule.classification_loss

    def spy(self, mb, qz_m):
        seen.append("labelled" in mb)
        return original(self, mb, qz_m)

    monkeypatch.setattr(SCANVIModule, "classification_loss", spy)
    adata = annotated(n_cells=200)
    cv.tl.scanvi_train(adata, scvi_key=None, max_epochs=1, **FAST)
    assert seen and not any(seen)
    assert adata.uns["scanvi"]["params"]["balance_labels"] is False


def test_the_classifier_is_prefitted_on_the_labelled_training_cells_only(monkeypatch):
    from cellvi.models.scanvi import SCANVIModule

    seen = {}
    real = SCANVIModule.prefit_classifier

    def spy(self, z1, classes, **kw):
        seen.update(z1=z1.clone(), classes=classes.clone(), **kw)
        return real(self, z1, classes, **kw)

    monkeypatch.setattr(SCANVIModule, "prefit_classifier", spy)
    adata = annotated(n_cells=300)
    cv.tl.scvi_train(adata, max_epochs=5, **FAST)
    cv.tl.scanvi_train(adata, max_epochs=1, n_steps_classifier_prefit=7, **FAST)
    assert seen["steps"] == 7 and seen["batch_size"] == FAST["batch_size"]
    validation = np.zeros(adata.n_obs, bool)
    validation[adata.uns["scanvi"]["validation_indices"]] = True
    labelled = (adata.obs["label"] != "Unknown").to_numpy()
    expected = labelled & ~validation
    assert (labelled & validation).any()  # the check below would not see a leak otherwise
    names = [f"type{t}" for t in range(5)]
    given = adata.obs["label"].astype(str).to_numpy()[expected]
    assert seen["classes"].tolist() == [names.index(g) for g in given]
    # the scVI model's posterior means of those cells, in their order
    np.testing.assert_allclose(
        seen["z1"].numpy(), adata.obsm["X_scvi"][expected], rtol=1e-4, atol=1e-5
    )
    assert adata.uns["scanvi"]["params"]["n_steps_classifier_prefit"] == 7

    seen.clear()
    cv.tl.scanvi_train(adata, max_epochs=1, n_steps_classifier_prefit=0, **FAST)
    assert not seen  # 0 turns it off
