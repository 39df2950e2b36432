"""Training speed of one tool on the GPU, on the bundled 10x PBMC data (see gpu_check.sh).

    python benchmarks/_gpu_speed.py --tool cellvi [--epochs 30] [--precision 32-true]
    /path/to/scvi-venv/bin/python benchmarks/_gpu_speed.py --tool scvi

Same data (5,030 PBMCs x 2,000 genes, raw counts in ``X``, batch covariate), same
model (each tool's scVI defaults), minibatches of 128, all cells used for training, on
``cuda:0``. Prints one JSON line: cells/s of the training call (cells x epochs / seconds) and,
for cellvi, the per-cell ELBO of all cells after training (to compare precisions).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "src" / "cellvi" / "datasets" / "_data" / "pbmc_10x.h5ad"


def run_cellvi(adata, args) -> dict:
    sys.path.insert(0, str(ROOT / "src"))
    import cellvi as cv

    cv.settings.progress_bar = False
    cv.pp.setup_registry(adata, batch_key="batch")
    options = {
        "max_epochs": args.epochs,
        "train_size": 1.0,
        "seed": 0,
        "accelerator": args.accelerator,
    }
    cv.tl.scvi_train(adata, max_epochs=1, train_size=1.0, accelerator=args.accelerator)  # warm-up
    start = time.perf_counter()
    cv.tl.scvi_train(adata, precision=args.precision, **options)
    seconds = time.perf_counter() - start
    elbo = cv.tl.scvi_evaluate(adata)["elbo"]
    return {"seconds": seconds, "elbo_all_cells": elbo, "version": cv.__version__}


def run_scvi(adata, args) -> dict:
    import scvi

    scvi.settings.seed = 0
    scvi.model.SCVI.setup_anndata(adata, batch_key="batch")
    model = scvi.model.SCVI(adata)
    model.train(
        max_epochs=1, train_size=1.0, accelerator=args.accelerator, enable_progress_bar=False
    )
    model = scvi.model.SCVI(adata)
    start = time.perf_counter()
    model.train(
        max_epochs=args.epochs,
        train_size=1.0,
        batch_size=128,
        accelerator=args.accelerator,
        devices=1,
        enable_progress_bar=False,
    )
    seconds = time.perf_counter() - start
    elbo = float(model.get_elbo())  # as in _worker_scvi.py
    return {"seconds": seconds, "elbo_all_cells": elbo, "version": scvi.__version__}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--tool", choices=["cellvi", "scvi"], required=True)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--precision", default="32-true", help="cellvi only")
    p.add_argument("--accelerator", default="gpu", help="'cpu' to try the script without a GPU")
    args = p.parse_args()
    import anndata as ad
    import torch

    adata = ad.read_h5ad(DATA)
    result = (run_cellvi if args.tool == "cellvi" else run_scvi)(adata, args)
    result |= {
        "tool": args.tool,
        "precision": args.precision if args.tool == "cellvi" else "32-true",
        "device": torch.cuda.get_device_name(0) if args.accelerator == "gpu" else "cpu",
        "epochs": args.epochs,
        "cells_per_s": adata.n_obs * args.epochs / result["seconds"],
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
