"""Benchmark worker: train scvi-tools' SCVI on train.h5ad, evaluate on test.h5ad, write JSON.

Started by ``bench_scvi_speed.py`` with the scvi-tools interpreter, in a fresh process; not
meant to be run by hand (but it can be, see ``--help``). Only the ``model.train`` call is inside
the training timer.
"""

from __future__ import annotations

import time

_T_START = time.perf_counter()

import json  # noqa: E402
import logging  # noqa: E402
import sys  # noqa: E402

from _worker_common import versions, worker_parser  # noqa: E402


def main() -> None:
    p = worker_parser(__doc__)
    args = p.parse_args()

    import torch

    torch.set_num_threads(args.threads)

    import anndata as ad
    import scvi

    scvi.settings.verbosity = logging.WARNING
    scvi.settings.dl_num_workers = 0
    scvi.settings.seed = args.seed
    scvi.settings.num_threads = args.threads
    t_imported = time.perf_counter()

    train = ad.read_h5ad(args.train)
    test = ad.read_h5ad(args.test)
    scvi.model.SCVI.setup_anndata(train, batch_key="batch")
    model = scvi.model.SCVI(
        train,
        n_hidden=args.n_hidden,
        n_latent=args.n_latent,
        n_layers=args.n_layers,
        gene_likelihood="zinb",
        dispersion="gene",
    )
    t_ready = time.perf_counter()

    # train_size=1.0: every cell trains, no validation set, so no validation pass is run
    t0 = time.perf_counter()
    model.train(
        max_epochs=args.epochs,
        batch_size=args.batch_size,
        train_size=1.0,
        plan_kwargs={"lr": args.lr, "n_epochs_kl_warmup": args.kl_warmup},
        accelerator="cpu",
        devices=1,
        enable_progress_bar=False,
    )
    train_seconds = time.perf_counter() - t0

    # not part of the timed training; measured so it can be compared with cellvi, whose
    # training call also computes the latent representation of the training cells
    t1 = time.perf_counter()
    model.get_latent_representation()
    latent_seconds = time.perf_counter() - t1

    t2 = time.perf_counter()
    elbo = model.get_elbo(adata=test)
    eval_seconds = time.perf_counter() - t2

    trainer = getattr(model, "trainer", None)
    epochs_run = int(trainer.current_epoch) if trainer is not None else None
    n_train = int(train.n_obs)
    result = {
        "tool": "scvi-tools",
        "train_seconds": train_seconds,
        "n_train_cells": n_train,
        "n_test_cells": int(test.n_obs),
        "n_genes": int(train.n_vars),
        "epochs": args.epochs,
        "epochs_run": epochs_run,
        "kl_warmup_epochs": args.kl_warmup,
        "cells_per_s": n_train * args.epochs / train_seconds,
        "heldout_elbo": float(elbo),
        "torch_threads": torch.get_num_threads(),
        "phase_seconds": {
            "import": t_imported - _T_START,
            "load_and_setup": t_ready - t_imported,
            "train": train_seconds,
            "latent_after_train": latent_seconds,
            "evaluate": eval_seconds,
            "worker_total": time.perf_counter() - _T_START,
        },
        "timed_call": "model.train",
        "versions": versions("scvi-tools", scvi.__version__),
        "python_executable": sys.executable,
    }
    with open(args.out, "w") as fh:
        json.dump(result, fh, indent=2)


if __name__ == "__main__":
    main()
