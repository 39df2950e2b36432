"""cv.tl.tune: trials run, pruning prunes, failures are contained, results survive h5ad."""

from __future__ import annotations

import functools

import anndata as ad
import numpy as np
import optuna
import pytest
import torch

import cellvi as cv
from cellvi.families import registry as family_registry
from cellvi.tune import _models

SPACE = {"n_latent": ("int", 2, 6), "lr": ("float_log", 1e-3, 2e-2)}
FIXED = {"n_hidden": 16, "batch_size": 64}


@pytest.fixture
def registered(adata):
    cv.pp.setup_registry(adata, layer="counts", batch_key="batch", labels_key="cell_type")
    return adata


@pytest.fixture
def tuned(registered):
    storage = optuna.storages.InMemoryStorage()
    cv.tl.tune(
        registered,
        n_trials=4,
        max_epochs=3,
        search_space=SPACE,
        train_kwargs=FIXED,
        storage=storage,
    )
    return registered, storage


class EveryOtherTrial(optuna.pruners.BasePruner):
    """Deterministic: prunes odd-numbered trials once they reported epoch 2."""

    def prune(self, study, trial) -> bool:
        return trial.number % 2 == 1 and trial.last_step is not None and trial.last_step >= 2


def test_trials_complete_and_results_are_recorded(tuned):
    adata, storage = tuned
    res = adata.uns["scvi_tune"]
    trials = res["trials"]
    assert list(trials["state"]) == ["COMPLETE"] * 4 and list(trials["epochs"]) == [3] * 4
    best = int(np.argmax(trials["value"]))
    assert res["best_value"] == trials["value"][best] and res["best_trial"] == best
    assert res["best_params"] == {
        "n_latent": int(trials["param_n_latent"][best]),
        "lr": float(trials["param_lr"][best]),
    }
    assert res["metric"] == "elbo_validation" and res["direction"] == "maximize"
    assert res["fixed_params"] == {**FIXED, "max_epochs": 3, "seed": 0}
    assert res["params"]["sampler"] == "TPESampler" and res["params"]["pruner"] == "MedianPruner"
    assert res["storage"] == "InMemoryStorage" and res["n_trials"]["complete"] == 4
    assert set(res["param_importances"]) == {"n_latent", "lr"}
    assert np.all(trials["duration_s"] > 0)
    # nothing of a trial reached the caller's AnnData
    assert list(adata.obsm) == [] and set(adata.uns) == {"cellvi_registry", "scvi_tune"}
    # one report per epoch: the validation ELBO, ending near the final full evaluation
    study = optuna.load_study(study_name=res["study_name"], storage=storage)
    for trial in study.trials:
        assert sorted(trial.intermediate_values) == [1, 2, 3]
        assert trial.intermediate_values[3] == pytest.approx(trial.value, rel=0.02)


def test_results_survive_h5ad_and_best_params_rebuild_a_model(tuned, tmp_path):
    adata, _ = tuned
    adata.write_h5ad(tmp_path / "tuned.h5ad")
    back = ad.read_h5ad(tmp_path / "tuned.h5ad")
    res, orig = back.uns["scvi_tune"], adata.uns["scvi_tune"]
    assert res["best_params"] == orig["best_params"] and res["best_value"] == orig["best_value"]
    for name, column in orig["trials"].items():
        assert np.array_equal(res["trials"][name], column), name
    cv.tl.scvi_train(back, max_epochs=2, **FIXED, **res["best_params"])
    assert back.obsm["X_scvi"].shape == (back.n_obs, orig["best_params"]["n_latent"])
    assert back.uns["scvi"]["params"]["lr"] == orig["best_params"]["lr"]


def test_pruned_trials_stop_early_and_study_goes_on(registered):
    cv.tl.tune(
        registered,
        n_trials=4,
        max_epochs=4,
        search_space=SPACE,
        train_kwargs=FIXED,
        pruner=EveryOtherTrial(),
    )
    trials = registered.uns["scvi_tune"]["trials"]
    assert list(trials["state"]) == ["COMPLETE", "PRUNED"] * 2
    assert list(trials["epochs"]) == [4, 2, 4, 2]
    assert np.isfinite(trials["value"]).all()  # pruned trials keep their last reported value
    assert registered.uns["scvi_tune"]["n_trials"]["pruned"] == 2


def test_nothing_written_when_every_trial_is_pruned(registered):
    with pytest.raises(RuntimeError, match="No trial .* completed"):
        cv.tl.tune(
            registered,
            n_trials=2,
            max_epochs=3,
            search_space=SPACE,
            pruner=optuna.pruners.ThresholdPruner(lower=0.0),  # every ELBO is negative
        )
    assert "scvi_tune" not in registered.uns


OUT_OF_MEMORY = (
    torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
    RuntimeError("DefaultCPUAllocator: not enough memory: you tried to allocate 8 GB."),
)


@pytest.mark.parametrize("memory_error", OUT_OF_MEMORY, ids=["cuda", "cpu"])
def test_nan_and_out_of_memory_fail_trials_not_the_study(registered, monkeypatch, memory_error):
    original = cv.families.trainer("scvi")
    calls = []

    @functools.wraps(original)
    def flaky(adata, **kwargs):
        calls.append(kwargs["lr"])
        if len(calls) == 2:
            raise memory_error
        return original(adata, **kwargs)

    monkeypatch.setitem(family_registry._TRAINERS, "scvi", flaky)
    sampler = optuna.samplers.GridSampler({"lr": [1e4, 1e-3, 2e-3]}, seed=0)
    cv.tl.tune(
        registered,
        n_trials=3,
        max_epochs=2,
        search_space={"lr": ("cat", [1e4, 1e-3, 2e-3])},
        sampler=sampler,
    )
    trials = registered.uns["scvi_tune"]["trials"]
    # lr=1e4 diverges (NaN loss), the second trial runs out of memory: both fail
    failed = trials["state"] == "FAIL"
    assert failed.sum() == 2 and np.isnan(trials["value"][failed]).all()
    assert 1e4 in trials["param_lr"][failed] and 1e4 in calls
    assert trials["param_lr"][~failed][0] != 1e4


def test_other_errors_end_the_study(registered, monkeypatch):
    original = cv.families.trainer("scvi")

    def broken(adata, **kwargs):
        raise RuntimeError("a bug, not a memory problem")

    broken = functools.wraps(original)(broken)
    monkeypatch.setitem(family_registry._TRAINERS, "scvi", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        cv.tl.tune(registered, n_trials=2, max_epochs=2, search_space=SPACE)


def test_integration_metric_and_train_best(registered):
    out = cv.tl.tune(
        registered,
        n_trials=2,
        max_epochs=3,
        metric="integration",
        search_space=SPACE,
        train_kwargs=FIXED,
        train_best=True,
        key_added="tuned",
        copy=True,
    )
    assert "tuned" not in registered.uns and "X_scvi" not in registered.obsm
    res = out.uns["tuned"]
    trials = res["trials"]
    assert res["direction"] == "maximize" and np.all((trials["value"] > 0) & (trials["value"] < 1))
    expected = 0.6 * trials["bio_conservation"] + 0.4 * trials["batch_mixing"]
    np.testing.assert_allclose(trials["value"], expected)
    # the retrained model is the one scvi_train builds from the same settings
    assert out.uns["scvi"]["params"]["n_latent"] == res["best_params"]["n_latent"]
    again = cv.tl.scvi_train(
        registered, max_epochs=3, seed=0, copy=True, **FIXED, **res["best_params"]
    )
    np.testing.assert_array_equal(out.obsm["X_scvi"], again.obsm["X_scvi"])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"model": "peakvi"},
            "model='peakvi' cannot be tuned .* available: \\[.*'scvi', 'totalvi'.*\\]",  # and any family a test registered
        ),
        ({"metric": "accuracy"}, "metric='accuracy' is not known"),
        ({"search_space": {"n_latnt": ("int", 2, 5)}}, "are not arguments"),
        ({"train_kwargs": {"n_latent": 5}, "search_space": SPACE}, "both searched and fixed"),
        ({"train_kwargs": {"max_epochs": 5}}, "tune's own arguments"),
        ({"train_kwargs": {"train_size": 1.0}}, "needs validation cells"),
        ({"n_trials": 0}, "n_trials and max_epochs must be >= 1"),
        ({"storage": 3}, "storage must be None"),
    ],
)
def test_bad_options_fail_before_anything_changes(registered, kwargs, message):
    before = set(registered.uns)
    with pytest.raises((ValueError, TypeError), match=message):
        cv.tl.tune(registered, max_epochs=2, **kwargs)
    assert set(registered.uns) == before and list(registered.obsm) == []


def test_integration_needs_labels(adata):
    cv.pp.setup_registry(adata, layer="counts", batch_key="batch")
    with pytest.raises(ValueError, match="register a batch_key .* and a labels_key"):
        cv.tl.tune(adata, metric="integration")


def test_needs_a_registry(adata):
    with pytest.raises((KeyError, ValueError), match="setup_registry"):
        cv.tl.tune(adata)


def test_joining_a_study_with_another_metric_is_refused(registered, tmp_path):
    path = str(tmp_path / "study.log")
    cv.tl.tune(
        registered, n_trials=1, max_epochs=2, search_space=SPACE, storage=path, study_name="shared"
    )
    assert registered.uns["scvi_tune"]["storage"] == f"journal file {path}"
    with pytest.raises(ValueError, match="set to maximize; the metric needs minimize"):
        cv.tl.tune(
            registered,
            n_trials=1,
            max_epochs=2,
            search_space=SPACE,
            storage=path,
            study_name="shared",
            metric="reconstruction_validation",
        )


def test_default_space_leaves_out_fixed_arguments(registered):
    from cellvi.tl._tune import _objective

    objective = _objective(
        registered,
        model="scvi",
        search_space=None,
        metric="elbo_validation",
        train_kwargs={"n_hidden": 32, "max_epochs": 2, "seed": 0},
        n_cells_integration=100,
        seed=0,
    )
    default = set(_models.get_model("scvi").default_search_space)
    assert set(objective.space.names) == default - {"n_hidden"}
    assert objective.trial_overrides == {"check_val_every_n_epoch": 1}


def test_reconstruction_metric_is_minimised(registered):
    cv.tl.tune(
        registered,
        n_trials=2,
        max_epochs=2,
        search_space=SPACE,
        train_kwargs=FIXED,
        metric="reconstruction_validation",
    )
    res = registered.uns["scvi_tune"]
    values = res["trials"]["value"]
    assert res["direction"] == "minimize" and np.all(values > 0)
    assert res["best_value"] == values.min() and res["best_trial"] == int(np.argmin(values))


def test_import_leaves_optuna_until_tune_is_used():
    """``import cellvi`` does not load optuna or scikit-learn; ``cv.tl.tune`` loads them."""
    import subprocess
    import sys

    code = (
        "import sys, cellvi as cv\n"
        "before = sorted(m for m in ('optuna', 'sklearn') if m in sys.modules)\n"
        "assert 'tune' in dir(cv.tl)\n"
        "from cellvi.tl import tune\n"
        "assert tune is cv.tl.tune and callable(tune)\n"
        "print(before, 'optuna' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["[]", "True"]
    with pytest.raises(AttributeError, match="no attribute 'tunes'"):
        cv.tl.tunes  # noqa: B018
