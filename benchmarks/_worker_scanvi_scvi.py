"""Benchmark worker: scvi-tools' SCVI then SCANVI on one prepared h5ad; writes JSON and .npz.

Started by ``bench_scanvi.py`` with the scvi-tools interpreter, in a fresh process; not meant
to be run by hand (but it can be, see ``--help``). ``SCVI.setup_anndata(labels_key=
"label_given")``, ``SCVI(adata)`` with its defaults, ``.train`` with its defaults but
``--scvi-epochs``, then ``SCANVI.from_scvi_model(unlabeled_category=...)`` and ``.train`` with
its defaults (10 epochs when started from scVI; the epochs actually run are read from the
trainer). Only the two ``.train`` calls are timed, each on its own; the latent and the
predictions are computed afterwards (timed separately, outside the training times).
"""

from __future__ import annotations

import time

_T_START = time.perf_counter()

import argparse  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import sys  # noqa: E402
import warnings  # noqa: E402

from _worker_common import versions  # noqa: E402

LABELS_KEY = "label_given"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="the prepared h5ad")
    p.add_argument("--out-json", required=True)
    p.add_argument("--out-npz", required=True)
    p.add_argument("--batch-key", default="", help="obs column of the batch ('' for none)")
    p.add_argument("--unlabeled-category", default="Unknown")
    p.add_argument("--scvi-epochs", type=int, default=100)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args()


def _epochs_run(model) -> int | None:
    trainer = getattr(model, "trainer", None)
    return int(trainer.current_epoch) if trainer is not None else None


def main() -> None:
    args = parse_args()

    import torch

    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")

    import anndata as ad
    import numpy as np
    import scvi

    scvi.settings.verbosity = logging.WARNING
    scvi.settings.dl_num_workers = 0
    scvi.settings.seed = args.seed
    scvi.settings.num_threads = args.threads
    t_imported = time.perf_counter()

    adata = ad.read_h5ad(args.data)
    scvi.model.SCVI.setup_anndata(adata, batch_key=args.batch_key or None, labels_key=LABELS_KEY)
    model = scvi.model.SCVI(adata)
    t_ready = time.perf_counter()

    t0 = time.perf_counter()
    model.train(
        max_epochs=args.scvi_epochs, accelerator="cpu", devices=1, enable_progress_bar=False
    )
    scvi_seconds = time.perf_counter() - t0
    scvi_epochs = _epochs_run(model)

    t1 = time.perf_counter()
    latent = np.asarray(model.get_latent_representation(), dtype=np.float32)
    latent_seconds = time.perf_counter() - t1

    scanvi = scvi.model.SCANVI.from_scvi_model(model, unlabeled_category=args.unlabeled_category)
    t2 = time.perf_counter()
    scanvi.train(accelerator="cpu", devices=1, enable_progress_bar=False)
    scanvi_seconds = time.perf_counter() - t2
    scanvi_epochs = _epochs_run(scanvi)

    t3 = time.perf_counter()
    prediction = np.asarray([str(v) for v in scanvi.predict()], dtype=str)
    soft = scanvi.predict(soft=True)
    confidence = np.asarray(soft, dtype=np.float64).max(axis=1)
    predict_seconds = time.perf_counter() - t3

    np.savez(
        args.out_npz,
        obs_names=np.asarray([str(v) for v in adata.obs_names], dtype=str),
        scvi_latent=latent,
        prediction=prediction,
        confidence=confidence,
    )
    n = int(adata.n_obs)
    result = {
        "tool": "scvi-tools",
        "task": "annotate",
        "n_cells": n,
        "n_genes": int(adata.n_vars),
        "scvi_seconds": scvi_seconds,
        "scanvi_seconds": scanvi_seconds,
        "scvi_epochs_run": scvi_epochs,
        "scanvi_epochs_run": scanvi_epochs,
        "scvi_cells_per_s": n * scvi_epochs / scvi_seconds,
        "scanvi_cells_per_s": n * scanvi_epochs / scanvi_seconds,
        "scvi_epochs_asked": args.scvi_epochs,
        "precision": "32-true (scvi-tools default)",
        "torch_threads": torch.get_num_threads(),
        "import_seconds": t_imported - _T_START,
        "load_and_setup_seconds": t_ready - t_imported,
        "latent_after_train_seconds": latent_seconds,
        "predict_after_train_seconds": predict_seconds,
        "worker_seconds": time.perf_counter() - _T_START,
        "timed_calls": "SCVI.train, SCANVI.train (latent and predictions computed afterwards, "
        "outside the timers)",
        "versions": versions("scvi-tools", scvi.__version__),
        "python_executable": sys.executable,
    }
    with open(args.out_json, "w") as fh:
        json.dump(result, fh, indent=2)


if __name__ == "__main__":
    main()
