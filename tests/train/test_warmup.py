"""The KL warm-up advances once per minibatch, whatever the number of optimisers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tests.conftest import synthetic_citeseq

import cellvi as cv
from cellvi.train.adversarial import AdversarialTrainingPlan

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")


def test_warmup_counts_minibatches_with_an_adversary(monkeypatch):
    """With the batch adversary (two optimiser steps per minibatch while it is active), the
    weight still grows by 1 / (warm-up epochs x minibatches per epoch) per minibatch."""
    seen = []
    original = AdversarialTrainingPlan.training_step

    def spy(self, batch, batch_idx):
        out = original(self, batch, batch_idx)
        seen.append((self.current_epoch, batch_idx, self.kl_weight, self._kappa()))
        return out

    monkeypatch.setattr(AdversarialTrainingPlan, "training_step", spy)
    mdata, _ = synthetic_citeseq(n_proteins=12)
    b1 = (mdata["prot"].obs["batch"] == "b1").to_numpy()
    mdata["prot"].X[np.ix_(b1, [2, 4])] = 0.0  # unmeasured in one batch: the adversary is on
    cv.pp.setup_registry(mdata, batch_key="batch")
    cv.tl.totalvi_train(mdata, n_hidden=16, n_latent=4, max_epochs=6, n_epochs_kl_warmup=4, seed=0)
    payload = mdata.uns["totalvi"]
    assert payload["params"]["adversarial_classifier"] is True
    steps = 1 + max(b for _, b, _, _ in seen)
    for epoch, batch_idx, weight, kappa in seen:
        expected = min(1.0, (epoch + batch_idx / steps) / 4)
        assert weight == pytest.approx(expected), (epoch, batch_idx)
        assert kappa == pytest.approx(1.0 - expected)
    np.testing.assert_allclose(payload["history"]["kl_weight"], [0.25, 0.5, 0.75, 1.0, 1.0, 1.0])


def test_scvi_warmup_unchanged_by_the_minibatch_count(adata):
    """One optimiser: the weight at each epoch's end is (epochs done) / (warm-up epochs)."""
    torch.set_num_threads(1)
    cv.pp.setup_registry(adata, layer="counts", batch_key="batch")
    cv.tl.scvi_train(adata, max_epochs=5, n_epochs_kl_warmup=2, n_hidden=16, seed=0)
    np.testing.assert_allclose(adata.uns["scvi"]["history"]["kl_weight"], [0.5, 1, 1, 1, 1])
