"""Storage resolution and joining studies."""

from __future__ import annotations

import optuna
import pytest
from optuna.storages import InMemoryStorage, JournalStorage

from cellvi.tune._study import open_study, resolve_storage


def test_storage_kinds(tmp_path):
    assert resolve_storage(None) == (None, "")
    url, text = resolve_storage("postgresql://alice:s3cret@db.example.org:5432/tune")
    assert url == "postgresql://alice:s3cret@db.example.org:5432/tune"
    assert text == "postgresql://alice:***@db.example.org:5432/tune"
    assert resolve_storage("sqlite:///tune.db") == ("sqlite:///tune.db", "sqlite:///tune.db")
    journal, text = resolve_storage(tmp_path / "tune.log")
    assert isinstance(journal, JournalStorage) and text == f"journal file {tmp_path / 'tune.log'}"
    memory = InMemoryStorage()
    assert resolve_storage(memory) == (memory, "InMemoryStorage")
    with pytest.raises(TypeError, match="storage must be"):
        resolve_storage(3)


def _open(storage, **tags):
    return open_study(
        storage,
        study_name="s",
        direction="maximize",
        sampler=optuna.samplers.RandomSampler(seed=0),
        pruner=optuna.pruners.NopPruner(),
        tags={"cellvi_model": "scvi", "cellvi_metric": "elbo_validation", **tags},
    )


def test_an_rdb_study_is_joined_and_its_tags_must_agree(tmp_path):
    url = f"sqlite:///{tmp_path / 'tune.db'}"
    first = _open(url)
    first.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=2)
    joined = _open(url)
    assert len(joined.trials) == 2
    with pytest.raises(ValueError, match="created with cellvi_model='scvi', not 'totalvi'"):
        _open(url, cellvi_model="totalvi")
