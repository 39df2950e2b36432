"""Benchmark worker: train cellvi's scVI on train.h5ad, evaluate on test.h5ad, write JSON.

Started by ``bench_scvi_speed.py`` in a fresh interpreter; not meant to be run by hand (but it
can be, see ``--help``). Only the ``cv.tl.scvi_train`` call is inside the training timer.
"""

from __future__ import annotations

import time

_T_START = time.perf_counter()

import json  # noqa: E402
import sys  # noqa: E402

from _worker_common import versions, worker_parser  # noqa: E402


def main() -> None:
    p = worker_parser(__doc__)
    p.add_argument("--precision", default="auto")
    args = p.parse_args()

    import torch

    torch.set_num_threads(args.threads)

    import anndata as ad

    import cellvi as cv

    cv.settings.progress_bar = False
    cv.settings.verbosity = 1  # warnings and errors only
    t_imported = time.perf_counter()

    train = ad.read_h5ad(args.train)
    test = ad.read_h5ad(args.test)
    cv.pp.setup_registry(train, layer=None, batch_key="batch")
    t_ready = time.perf_counter()

    t0 = time.perf_counter()
    cv.tl.scvi_train(
        train,
        max_epochs=args.epochs,
        batch_size=args.batch_size,
        n_hidden=args.n_hidden,
        n_latent=args.n_latent,
        n_layers=args.n_layers,
        gene_likelihood="zinb",
        dispersion="gene",
        lr=args.lr,
        n_epochs_kl_warmup=args.kl_warmup,
        train_size=1.0,
        seed=args.seed,
        accelerator="cpu",
        precision=args.precision,
    )
    train_seconds = time.perf_counter() - t0

    t1 = time.perf_counter()
    res = cv.tl.scvi_evaluate(test, model_from=train)
    eval_seconds = time.perf_counter() - t1

    n_train = int(train.n_obs)
    result = {
        "tool": "cellvi",
        "train_seconds": train_seconds,
        "n_train_cells": n_train,
        "n_test_cells": int(test.n_obs),
        "n_genes": int(train.n_vars),
        "epochs": args.epochs,
        "kl_warmup_epochs": args.kl_warmup,
        "cells_per_s": n_train * args.epochs / train_seconds,
        "heldout_elbo": float(res["elbo"]),
        "heldout_reconstruction_error": float(res["reconstruction_error"]),
        "heldout_kl": float(res["kl"]),
        "torch_threads": torch.get_num_threads(),
        "precision": str(train.uns["scvi"]["params"]["precision"]),
        "native_kernels": str(train.uns["scvi"]["versions"].get("cellvi_native_kernels")),
        "phase_seconds": {
            "import": t_imported - _T_START,
            "load_and_setup": t_ready - t_imported,
            "train": train_seconds,
            "evaluate": eval_seconds,
            "worker_total": time.perf_counter() - _T_START,
        },
        "timed_call": "cv.tl.scvi_train (includes computing the latent and storing the model)",
        "versions": versions("cellvi", getattr(cv, "__version__", None)),
        "python_executable": sys.executable,
    }
    with open(args.out, "w") as fh:
        json.dump(result, fh, indent=2)


if __name__ == "__main__":
    main()
