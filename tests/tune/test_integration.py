"""The scIB-style integration score rewards label separation and batch mixing."""

from __future__ import annotations

import numpy as np
import pytest

from cellvi.tune._integration import integration_score, subsample


@pytest.fixture
def codes():
    rng = np.random.default_rng(0)
    return rng.integers(0, 3, 300), rng.integers(0, 2, 300), rng


def _clusters(groups, rng, spread=0.3):
    centres = np.eye(3, 4)[groups] * 10
    return centres + rng.normal(0, spread, (len(groups), 4))


def test_integrated_latent_scores_high(codes):
    labels, batch, rng = codes
    scores = integration_score(_clusters(labels, rng), batch, labels)
    assert scores["knn_label_purity"] == 1.0
    assert scores["asw_label"] > 0.9
    assert scores["knn_batch_entropy"] > 0.85 and scores["asw_batch"] > 0.9
    bio = (scores["asw_label"] + scores["knn_label_purity"]) / 2
    mix = (scores["asw_batch"] + scores["knn_batch_entropy"]) / 2
    assert scores["bio_conservation"] == pytest.approx(bio)
    assert scores["integration"] == pytest.approx(0.6 * bio + 0.4 * mix)


def test_batch_separated_latent_scores_low_on_mixing(codes):
    labels, batch, rng = codes
    # clusters by label, each split in two by batch: labels kept, batches not mixed
    latent = _clusters(labels, rng) + np.eye(4)[3][None] * 5 * batch[:, None]
    separated = integration_score(latent, batch, labels)
    mixed = integration_score(_clusters(labels, rng), batch, labels)
    assert separated["knn_batch_entropy"] < 0.05 and separated["asw_batch"] < 0.6
    assert separated["knn_label_purity"] == 1.0
    assert separated["integration"] < mixed["integration"] - 0.15


def test_collapsed_labels_score_low_on_bio(codes):
    labels, batch, rng = codes
    scores = integration_score(rng.normal(size=(300, 4)), batch, labels)
    assert scores["knn_label_purity"] < 0.5 and scores["asw_label"] < 0.55


def test_non_finite_latent_raises(codes):
    labels, batch, rng = codes
    latent = _clusters(labels, rng)
    latent[0, 0] = np.nan
    with pytest.raises(FloatingPointError):
        integration_score(latent, batch, labels)


def test_subsample():
    assert np.array_equal(subsample(10, 20, 0), np.arange(10))
    picked = subsample(1000, 100, 0)
    assert len(np.unique(picked)) == 100 and np.all(np.diff(picked) > 0)
    assert np.array_equal(picked, subsample(1000, 100, 0))
