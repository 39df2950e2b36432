"""Benchmark worker for ``bench_de.py``: train a model, time differential expression, write JSON.

Runs with either tool's interpreter (``--tool cellvi`` or ``--tool scvi``), in a fresh process.
Only the DE call is inside the DE timer; training is short (DE time hardly depends on how well
the model fits) and timed separately.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--tool", choices=("cellvi", "scvi"), required=True)
    p.add_argument("--data", required=True, help="h5ad with raw counts, obs 'batch' and 'group'")
    p.add_argument("--out", required=True)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--n-samples", type=int, default=5000)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    return p


def _cellvi(adata, args) -> dict:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    import cellvi as cv

    cv.settings.progress_bar = False
    cv.pp.setup_registry(adata, batch_key="batch")
    t0 = time.perf_counter()
    cv.tl.scvi_train(adata, max_epochs=args.epochs, train_size=1.0, seed=args.seed)
    t1 = time.perf_counter()
    cv.tl.differential_expression(adata, groupby="group", n_samples=args.n_samples)
    t2 = time.perf_counter()
    df = cv.tl.differential_expression_df(adata)
    return {"train_seconds": t1 - t0, "de_seconds": t2 - t1, "n_de_fdr": int(df["is_de_fdr"].sum())}


def _scvi(adata, args) -> dict:
    import scvi

    scvi.settings.verbosity = logging.WARNING
    scvi.settings.dl_num_workers = 0
    scvi.settings.seed = args.seed
    scvi.model.SCVI.setup_anndata(adata, batch_key="batch")
    model = scvi.model.SCVI(adata)
    t0 = time.perf_counter()
    model.train(max_epochs=args.epochs, train_size=1.0, accelerator="cpu", devices=1)
    t1 = time.perf_counter()
    df = model.differential_expression(
        groupby="group",
        mode="change",
        delta=0.25,
        fdr_target=0.05,
        n_samples_overall=args.n_samples,
    )
    t2 = time.perf_counter()
    return {
        "train_seconds": t1 - t0,
        "de_seconds": t2 - t1,
        "n_de_fdr": int(df["is_de_fdr_0.05"].sum()),
    }


def main() -> None:
    args = _parser().parse_args()
    import torch

    torch.set_num_threads(args.threads)
    import anndata as ad

    adata = ad.read_h5ad(args.data)
    result = (_cellvi if args.tool == "cellvi" else _scvi)(adata, args)
    result |= {
        "tool": args.tool,
        "n_cells": adata.n_obs,
        "n_genes": adata.n_vars,
        "n_groups": int(adata.obs["group"].nunique()),
        "n_samples": args.n_samples,
        "epochs": args.epochs,
        "threads": args.threads,
    }
    Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
