"""Benchmark worker: train cellvi's totalVI on train.h5mu, evaluate on test.h5mu, write JSON.

Started by ``bench_totalvi_speed.py`` in a fresh interpreter. Only the ``cv.tl.totalvi_train``
call is inside the training timer. The latent of the training cells goes to ``--latent-out``.
"""

from __future__ import annotations

import time

_T_START = time.perf_counter()

import json  # noqa: E402
import warnings  # noqa: E402

from _worker_common import versions, worker_parser  # noqa: E402


def main() -> None:
    p = worker_parser(__doc__)
    p.add_argument("--precision", default="auto")
    p.add_argument("--latent-out", required=True)
    args = p.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=FutureWarning)

    import mudata as mu
    import numpy as np

    import cellvi as cv

    cv.settings.progress_bar = False
    cv.settings.verbosity = 1
    train = mu.read_h5mu(args.train)
    test = mu.read_h5mu(args.test)
    cv.pp.setup_registry(train, batch_key="batch")

    t0 = time.perf_counter()
    cv.tl.totalvi_train(
        train,
        max_epochs=args.epochs,
        batch_size=args.batch_size,
        n_hidden=args.n_hidden,
        n_latent=args.n_latent,
        n_layers_encoder=args.n_layers,
        lr=args.lr,
        n_epochs_kl_warmup=args.kl_warmup,
        train_size=1.0,
        seed=args.seed,
        accelerator="cpu",
        precision=args.precision,
    )
    train_seconds = time.perf_counter() - t0
    res = cv.tl.totalvi_evaluate(test, model_from=train)
    np.save(args.latent_out, np.asarray(train.obsm["X_totalvi"]))
    result = {
        "tool": "cellvi",
        "train_seconds": train_seconds,
        "n_train_cells": int(train.n_obs),
        "n_test_cells": int(test.n_obs),
        "cells_per_s": train.n_obs * args.epochs / train_seconds,
        "heldout_elbo": float(res["elbo"]),
        "heldout_terms": {k: float(v) for k, v in res.items()},
        "precision": str(train.uns["totalvi"]["params"]["precision"]),
        "worker_seconds": time.perf_counter() - _T_START,
        "versions": versions("cellvi", cv.__version__),
    }
    with open(args.out, "w") as fh:
        json.dump(result, fh, indent=2)


if __name__ == "__main__":
    main()
