"""Checkpoints: pickle-free files, exact resume, a SIGKILLed run resumed, clear refusals."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import cellvi as cv
from cellvi.train import checkpoint as ckpt
from cellvi.train.plan import TrainingPlan

FAST = {"max_epochs": 6, "n_hidden": 16, "batch_size": 64, "seed": 1, "precision": "32-true"}
WORKER = Path(__file__).with_name("_resume_worker.py")


@pytest.fixture
def registered(adata):
    cv.pp.setup_registry(adata, layer="counts", batch_key="batch")
    return adata


def test_file_round_trip_keeps_types_without_pickle(tmp_path):
    state = {
        "weights": {"a.weight": torch.randn(3, 4), "a.step": torch.tensor(7.0)},
        "opt": {"state": {0: {"exp_avg": torch.ones(2)}}, "betas": (0.9, 0.999)},
        "best": float("-inf"),
        "flags": [True, None, "x", 3],
        "mt": np.arange(5, dtype=np.uint32),
    }
    state["view"] = state["weights"]["a.weight"][1]  # shares memory with a.weight
    path = tmp_path / "c.safetensors"
    ckpt.write_checkpoint(state, path)
    back = ckpt.read_checkpoint(path)
    assert torch.equal(back["weights"]["a.weight"], state["weights"]["a.weight"])
    assert list(back["opt"]["state"]) == [0] and back["opt"]["betas"] == (0.9, 0.999)
    assert back["best"] == float("-inf") and back["flags"] == [True, None, "x", 3]
    assert back["mt"].dtype == np.uint32 and back["mt"].tolist() == [0, 1, 2, 3, 4]
    assert torch.equal(back["view"], state["weights"]["a.weight"][1])
    assert [p.name for p in tmp_path.iterdir()] == ["c.safetensors"]  # no temporary left
    with pytest.raises(TypeError, match=r"checkpoint/obj is a object.*no pickle"):
        ckpt.write_checkpoint({"obj": object()}, path)


def _interrupt_in(epoch: int, step: int, monkeypatch) -> None:
    original = TrainingPlan.training_step

    def step_or_die(self, batch, batch_idx):
        if self.current_epoch == epoch and batch_idx == step:
            raise RuntimeError("simulated crash")
        return original(self, batch, batch_idx)

    monkeypatch.setattr(TrainingPlan, "training_step", step_or_die)


@pytest.mark.parametrize("every", [1, 2])
def test_resume_after_a_crash_gives_the_uninterrupted_model(
    registered, tmp_path, monkeypatch, every
):
    options = FAST | {"reduce_lr_on_plateau": True, "early_stopping": True}
    reference = cv.tl.scvi_train(registered, copy=True, **options)
    folder = tmp_path / "ck"
    with monkeypatch.context() as patch:
        _interrupt_in(epoch=4, step=1, monkeypatch=patch)  # mid-epoch 5
        with pytest.raises(RuntimeError, match="simulated crash"):
            cv.tl.scvi_train(registered, checkpoint_dir=folder, checkpoint_every=every, **options)
    assert "scvi" not in registered.uns
    assert ckpt.read_checkpoint_epochs(folder / ckpt.CHECKPOINT_FILE) == 4
    resumed = cv.tl.scvi_train(
        registered, copy=True, checkpoint_dir=folder, checkpoint_every=every, resume=True, **options
    )
    # identical, not just close: weights, latent and every recorded metric of every epoch
    np.testing.assert_array_equal(resumed.uns["scvi"]["weights"], reference.uns["scvi"]["weights"])
    np.testing.assert_array_equal(resumed.obsm["X_scvi"], reference.obsm["X_scvi"])
    for name, values in reference.uns["scvi"]["history"].items():
        np.testing.assert_array_equal(resumed.uns["scvi"]["history"][name], values, err_msg=name)
    assert ckpt.read_checkpoint_epochs(folder / ckpt.CHECKPOINT_FILE) == FAST["max_epochs"]


def test_resume_of_a_finished_run_trains_nothing(registered, tmp_path, monkeypatch):
    folder = tmp_path / "ck"
    first = cv.tl.scvi_train(registered, copy=True, checkpoint_dir=folder, **FAST)
    steps = []
    original = TrainingPlan.training_step
    monkeypatch.setattr(
        TrainingPlan, "training_step", lambda s, b, i: steps.append(i) or original(s, b, i)
    )
    again = cv.tl.scvi_train(registered, copy=True, checkpoint_dir=folder, resume=True, **FAST)
    assert steps == []
    np.testing.assert_array_equal(again.uns["scvi"]["weights"], first.uns["scvi"]["weights"])


def test_killed_run_resumes_losing_at_most_one_epoch(registered, tmp_path, monkeypatch):
    folder, log, out = tmp_path / "ck", tmp_path / "epochs.log", tmp_path / "w.npy"
    command = [sys.executable, str(WORKER), str(folder), str(log), str(out)]
    env = os.environ | {"PYTHONPATH": os.pathsep.join(sys.path)}
    run = subprocess.Popen(command, env=env, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 180
    while not (folder / ckpt.CHECKPOINT_FILE).exists() or len(log.read_text().split()) < 2:
        assert run.poll() is None, run.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline, "the worker made no checkpoint in time"
        time.sleep(0.02)
    run.send_signal(signal.SIGKILL)
    run.wait()
    assert not out.exists()
    killed = [int(e) for e in log.read_text().split()]
    saved = ckpt.read_checkpoint_epochs(folder / ckpt.CHECKPOINT_FILE)
    assert saved in (killed[-1], killed[-1] - 1)  # killed before or after saving its last epoch
    # resume here, in this process, logging the epochs it trains
    resumed = []
    end_of_epoch = TrainingPlan.on_train_epoch_end
    monkeypatch.setattr(
        TrainingPlan,
        "on_train_epoch_end",
        lambda self: end_of_epoch(self) or resumed.append(self.current_epoch + 1),
    )
    sys.path.insert(0, str(WORKER.parent))
    from _resume_worker import ARGS

    cv.tl.scvi_train(registered, checkpoint_dir=folder, resume=True, **ARGS)
    assert resumed == list(range(saved + 1, ARGS["max_epochs"] + 1))
    assert len(killed) + len(resumed) <= ARGS["max_epochs"] + 1  # at most one epoch lost
    # and the result is the model of an uninterrupted run
    monkeypatch.undo()
    reference = cv.tl.scvi_train(registered, copy=True, **ARGS)
    np.testing.assert_array_equal(
        registered.uns["scvi"]["weights"], reference.uns["scvi"]["weights"]
    )
    assert len(registered.uns["scvi"]["history"]["epoch"]) == ARGS["max_epochs"]


# -- refusals: all before training, nothing written to the AnnData ------------------------------
def test_existing_checkpoint_needs_resume(registered, tmp_path):
    folder = tmp_path / "ck"
    cv.tl.scvi_train(registered, copy=True, checkpoint_dir=folder, **FAST)
    with pytest.raises(FileExistsError, match=r"earlier run; pass resume=True .* empty"):
        cv.tl.scvi_train(registered, checkpoint_dir=folder, **FAST)
    with pytest.raises(ValueError, match=r"other arguments or data \(lr: 0.001 -> 0.01\)"):
        cv.tl.scvi_train(registered, checkpoint_dir=folder, resume=True, **FAST | {"lr": 1e-2})
    other = registered[:200].copy()
    with pytest.raises(ValueError, match=r"n_cells: 240 -> 200.*another checkpoint_dir"):
        cv.tl.scvi_train(other, checkpoint_dir=folder, resume=True, **FAST)
    assert "scvi" not in registered.uns and "X_scvi" not in registered.obsm


def test_corrupted_checkpoint_is_refused_clearly(registered, tmp_path):
    folder = tmp_path / "ck"
    folder.mkdir()
    (folder / ckpt.CHECKPOINT_FILE).write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"not a readable cellvi checkpoint.*Delete it"):
        cv.tl.scvi_train(registered, checkpoint_dir=folder, resume=True, **FAST)
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError, match=r"is a file; pass a folder"):
        cv.tl.scvi_train(registered, checkpoint_dir=tmp_path / "file", **FAST)


def test_resume_of_an_early_stopped_run_trains_nothing(registered, tmp_path, monkeypatch):
    original = TrainingPlan._epoch_metrics

    def worsening(self, prefix):  # the validation ELBO gets worse every epoch: stop at epoch 3
        metrics = original(self, prefix)
        if prefix == "validation" and metrics:
            metrics["elbo_validation"] = -float(self.current_epoch)
        return metrics

    monkeypatch.setattr(TrainingPlan, "_epoch_metrics", worsening)
    options = FAST | {"early_stopping": True, "early_stopping_patience": 2, "max_epochs": 10}
    folder = tmp_path / "ck"
    first = cv.tl.scvi_train(registered, copy=True, checkpoint_dir=folder, **options)
    assert first.uns["scvi"]["history"]["epoch"].tolist() == [1.0, 2.0, 3.0]
    steps = []
    step = TrainingPlan.training_step
    monkeypatch.setattr(
        TrainingPlan, "training_step", lambda s, b, i: steps.append(i) or step(s, b, i)
    )
    again = cv.tl.scvi_train(registered, copy=True, checkpoint_dir=folder, resume=True, **options)
    assert steps == []
    np.testing.assert_array_equal(again.uns["scvi"]["weights"], first.uns["scvi"]["weights"])
