"""Does ``cv.tl.tune`` find better scVI settings than the defaults, and what does pruning save?

Data: the bundled ``cv.datasets.pbmc_10x()`` (5,030 PBMCs, 4 batches, 2,000 HVGs), a seeded
subsample of ``--cells`` cells and the first ``--genes`` genes. A seeded 80 / 20 split gives the
tuning cells and test cells; the test cells take no part in tuning or selection.

1. ``cv.tl.tune`` on the tuning cells: default search space, ``elbo_validation`` (10 % of the
   tuning cells), ``--trials`` trials of ``--epochs`` epochs, default TPE sampler and median
   pruner, seed 0.
2. The default settings and the best settings are each trained on the tuning cells with the
   same epochs and seed (``train_best=True`` for the latter), and their full ELBO per cell is
   measured on the test cells with ``cv.tl.scvi_evaluate``.

Reported: trial states, epochs run against the epoch budget (trials x epochs), wall time, the
test ELBO of both models and their difference. Writes ``benchmarks/results/tune.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

import cellvi as cv


def _data(n_cells: int, n_genes: int, seed: int):
    adata = cv.datasets.pbmc_10x()
    rng = np.random.default_rng(seed)
    cells = np.sort(rng.choice(adata.n_obs, size=min(n_cells, adata.n_obs), replace=False))
    adata = adata[cells, :n_genes].copy()
    test = np.zeros(adata.n_obs, dtype=bool)
    test[rng.choice(adata.n_obs, size=adata.n_obs // 5, replace=False)] = True
    return adata[~test].copy(), adata[test].copy()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cells", type=int, default=2500)
    p.add_argument("--genes", type=int, default=1000)
    p.add_argument("--trials", type=int, default=12)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "tune.json"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    cv.settings.progress_bar, cv.settings.verbosity = False, 1
    tuning, test = _data(args.cells, args.genes, seed=0)
    cv.pp.setup_registry(tuning, layer="counts", batch_key="batch")
    start = time.perf_counter()
    cv.tl.tune(tuning, n_trials=args.trials, max_epochs=args.epochs, train_best=True, seed=0)
    tune_s = time.perf_counter() - start
    cv.tl.scvi_train(tuning, max_epochs=args.epochs, seed=0, key_added="default")
    res = tuning.uns["scvi_tune"]
    elbo = {
        key: cv.tl.scvi_evaluate(test, model_from=tuning, key=key)["elbo"]
        for key in ("default", "scvi")
    }
    report = {
        "cells_tuning": tuning.n_obs,
        "cells_test": test.n_obs,
        "genes": tuning.n_vars,
        "trials": dict(res["n_trials"]),
        "epochs_run": int(res["trials"]["epochs"].sum()),
        "epoch_budget": args.trials * args.epochs,
        "tune_wall_s": round(tune_s, 1),
        "best_params": {
            k: (v.item() if hasattr(v, "item") else v) for k, v in res["best_params"].items()
        },
        "best_validation_elbo": res["best_value"],
        "test_elbo_default": elbo["default"],
        "test_elbo_best": elbo["scvi"],
        "test_elbo_gain": elbo["scvi"] - elbo["default"],
        "threads": args.threads,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
