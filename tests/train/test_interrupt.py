"""Ctrl-C and NaN during training: the data end up unchanged or with a complete, marked model."""

from __future__ import annotations

import dataclasses
import os
import signal

import numpy as np
import pytest

import cellvi as cv
from cellvi.models.scvi import SCVIModule
from cellvi.train import NonFiniteLossError
from cellvi.train.interrupt import deferred_interrupt
from cellvi.train.plan import TrainingPlan

FAST = {"max_epochs": 6, "n_hidden": 16, "batch_size": 64, "seed": 2}


@pytest.fixture
def registered(adata):
    cv.pp.setup_registry(adata, layer="counts", batch_key="batch")
    return adata


def _ctrl_c_in(epoch: int, step: int, monkeypatch) -> None:
    original = TrainingPlan.training_step

    def step_and_press(self, batch, batch_idx):
        if self.current_epoch == epoch and batch_idx == step:
            os.kill(os.getpid(), signal.SIGINT)  # what Ctrl-C in a terminal or notebook sends
        return original(self, batch, batch_idx)

    monkeypatch.setattr(TrainingPlan, "training_step", step_and_press)


def test_ctrl_c_keeps_a_complete_model_of_the_last_epoch_marked_partial(registered, monkeypatch):
    handler = signal.getsignal(signal.SIGINT)
    _ctrl_c_in(epoch=2, step=1, monkeypatch=monkeypatch)  # during the third epoch
    with pytest.raises(KeyboardInterrupt), pytest.warns(UserWarning, match=r"after 2 of 6 epochs"):
        cv.tl.scvi_train(registered, **FAST)
    assert signal.getsignal(signal.SIGINT) is handler  # Ctrl-C works as before afterwards
    payload = registered.uns["scvi"]
    assert dict(payload["partial"]) == {
        "reason": "interrupted",
        "epochs_completed": 2,
        "max_epochs": 6,
    }
    assert payload["history"]["epoch"].tolist() == [1.0, 2.0]
    # the latent written is the one of the stored (epoch-2) weights: the two fields agree
    with pytest.warns(UserWarning, match=r"partial: its training stopped \(interrupted\) after 2"):
        cv.tl.scvi_embed(registered, key_added="again")
    np.testing.assert_array_equal(registered.obsm["X_again"], registered.obsm["X_scvi"])


def test_ctrl_c_before_any_epoch_ended_leaves_the_data_unchanged(registered, monkeypatch):
    _ctrl_c_in(epoch=0, step=1, monkeypatch=monkeypatch)
    keys = (set(registered.uns), set(registered.obsm))
    with pytest.raises(KeyboardInterrupt):
        cv.tl.scvi_train(registered, **FAST)
    assert (set(registered.uns), set(registered.obsm)) == keys


def test_writes_finish_before_a_deferred_ctrl_c():
    done = []
    with pytest.raises(KeyboardInterrupt), deferred_interrupt():
        os.kill(os.getpid(), signal.SIGINT)
        done.append("first")
        done.append("second")
    assert done == ["first", "second"]


def test_nan_error_carries_the_last_finite_model(registered, monkeypatch):
    original = SCVIModule.forward
    steps = {"n": 0}

    def forward(self, mb, kl_weight=1.0):
        terms = original(self, mb, kl_weight)
        steps["n"] += self.training
        if self.training and steps["n"] > 8:  # 4 steps per epoch: NaN in epoch 3
            return dataclasses.replace(terms, loss=terms.loss * float("nan"))
        return terms

    monkeypatch.setattr(SCVIModule, "forward", forward)
    with pytest.raises(NonFiniteLossError, match=r"in epoch 3.*err.payload") as info:
        cv.tl.scvi_train(registered, **FAST)
    assert "scvi" not in registered.uns and "X_scvi" not in registered.obsm
    monkeypatch.undo()
    registered.uns["scvi"] = info.value.payload
    assert dict(registered.uns["scvi"]["partial"])["epochs_completed"] == 2
    with pytest.warns(UserWarning, match=r"non-finite loss"):
        cv.tl.scvi_embed(registered)
    assert np.isfinite(registered.obsm["X_scvi"]).all()


def test_ctrl_c_after_the_last_step_keeps_the_complete_model_and_still_stops(
    registered, monkeypatch
):
    original = TrainingPlan.validation_step

    def validate_and_press(self, batch, batch_idx):
        if self.current_epoch == FAST["max_epochs"] - 1:
            os.kill(os.getpid(), signal.SIGINT)
        return original(self, batch, batch_idx)

    monkeypatch.setattr(TrainingPlan, "validation_step", validate_and_press)
    with pytest.raises(KeyboardInterrupt):
        cv.tl.scvi_train(registered, check_val_every_n_epoch=1, **FAST)
    assert "partial" not in registered.uns["scvi"] and "X_scvi" in registered.obsm
    assert len(registered.uns["scvi"]["history"]["epoch"]) == FAST["max_epochs"]
