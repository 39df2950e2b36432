"""Two worker processes share one study through a journal file, as on several machines."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

import cellvi as cv

# what docs/tuning.md tells a user to run on each machine, shrunk to a test
WORKER = """
import sys, anndata as ad, torch, cellvi as cv
torch.set_num_threads(1)
cv.settings.progress_bar = False
adata = ad.read_h5ad(sys.argv[1])
cv.tl.tune(adata, n_trials=2, max_epochs=2, storage=sys.argv[2], study_name="shared",
           seed=int(sys.argv[3]), search_space={"n_latent": ("int", 2, 8)},
           train_kwargs={"n_hidden": 16, "batch_size": 64})
adata.write_h5ad(sys.argv[4])
"""


def test_two_processes_share_a_journal_file_study(adata, tmp_path):
    cv.pp.setup_registry(adata, layer="counts", batch_key="batch", labels_key="cell_type")
    adata.write_h5ad(tmp_path / "data.h5ad")
    journal = tmp_path / "tune.log"
    src = str(Path(cv.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    workers = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                WORKER,
                str(tmp_path / "data.h5ad"),
                str(journal),
                str(seed),
                str(tmp_path / f"out{seed}.h5ad"),
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for seed in (1, 2)
    ]
    for worker in workers:
        output, _ = worker.communicate(timeout=180)
        assert worker.returncode == 0, output
    study = optuna.load_study(
        study_name="shared", storage=JournalStorage(JournalFileBackend(str(journal)))
    )
    trials = study.get_trials()
    assert sorted(t.number for t in trials) == [0, 1, 2, 3]
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    assert study.user_attrs == {"cellvi_model": "scvi", "cellvi_metric": "elbo_validation"}
    # each worker's summary holds its own trials and whatever the other had finished by then
    import anndata as ad

    for seed in (1, 2):
        res = ad.read_h5ad(tmp_path / f"out{seed}.h5ad").uns["scvi_tune"]
        assert 2 <= len(res["trials"]["number"]) <= 4 and res["study_name"] == "shared"
