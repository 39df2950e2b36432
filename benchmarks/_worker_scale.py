"""One timed scVI training epoch on a synthetic data set, in a fresh process (see bench_scale.py).

Runs in cellvi's environment (``--tool cellvi`` / ``cellvi-backed``) or in scvi-tools' own
(``--tool scvi``), imports only what that tool needs, and writes one JSON record: seconds of the
training epoch (from a Lightning hook at epoch start / end), seconds of each phase, and the
peak resident memory of the process (``ru_maxrss``), which includes the interpreter and every
library loaded.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

EPOCH: dict[str, float] = {}


def _epoch_hooks(cls) -> None:
    """Record the wall time of each training epoch by wrapping the plan's epoch hooks."""
    start, end = cls.on_train_epoch_start, cls.on_train_epoch_end

    def on_start(self, *a, **k):
        EPOCH["start"] = time.perf_counter()
        return start(self, *a, **k)

    def on_end(self, *a, **k):
        EPOCH.setdefault("seconds", []).append(time.perf_counter() - EPOCH["start"])
        return end(self, *a, **k)

    cls.on_train_epoch_start, cls.on_train_epoch_end = on_start, on_end


def _peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # kB on Linux


def run_cellvi(args, phases: dict) -> dict:
    import anndata as ad
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    import cellvi as cv
    from cellvi.train.plan import TrainingPlan

    torch.set_num_threads(args.threads)
    cv.settings.progress_bar = False
    _epoch_hooks(TrainingPlan)
    t = time.perf_counter()
    adata = ad.read_h5ad(args.path, backed="r" if args.tool == "cellvi-backed" else None)
    phases["load"] = time.perf_counter() - t
    phases["rss_after_load_gib"] = _peak_rss_gib()
    t = time.perf_counter()
    cv.pp.setup_registry(adata, batch_key="batch")
    phases["setup"] = time.perf_counter() - t
    t = time.perf_counter()
    cv.tl.scvi_train(
        adata, max_epochs=args.epochs, batch_size=args.batch_size, train_size=1.0, seed=0
    )
    phases["train_call"] = time.perf_counter() - t
    return {"precision": adata.uns["scvi"]["params"]["precision"], "version": cv.__version__}


def run_scvi(args, phases: dict) -> dict:
    import anndata as ad
    import scvi
    import torch
    from scvi.train import TrainingPlan

    torch.set_num_threads(args.threads)
    scvi.settings.seed = 0
    _epoch_hooks(TrainingPlan)
    t = time.perf_counter()
    adata = ad.read_h5ad(args.path)
    phases["load"] = time.perf_counter() - t
    phases["rss_after_load_gib"] = _peak_rss_gib()
    t = time.perf_counter()
    scvi.model.SCVI.setup_anndata(adata, batch_key="batch")
    model = scvi.model.SCVI(adata)
    phases["setup"] = time.perf_counter() - t
    t = time.perf_counter()
    model.train(
        max_epochs=args.epochs,
        batch_size=args.batch_size,
        train_size=1.0,
        enable_progress_bar=False,
        accelerator="cpu",
    )
    phases["train_call"] = time.perf_counter() - t
    return {"precision": "32-true", "version": scvi.__version__}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--tool", choices=["cellvi", "cellvi-backed", "scvi"], required=True)
    p.add_argument("--path", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    phases: dict = {}
    start = time.perf_counter()
    info = (run_scvi if args.tool == "scvi" else run_cellvi)(args, phases)
    record = {
        "tool": args.tool,
        "path": args.path,
        "epochs": args.epochs,
        "epoch_seconds": EPOCH.get("seconds", []),
        "phase_seconds": phases,
        "peak_rss_gib": _peak_rss_gib(),
        "total_wall_seconds": time.perf_counter() - start,
        "threads": args.threads,
        **info,
    }
    Path(args.out).write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
