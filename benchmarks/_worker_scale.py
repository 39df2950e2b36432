"""One timed scVI training epoch (or its first steps) on a synthetic data set, in a fresh process (see bench_scale.py).

Runs in cellvi's environment (``--tool cellvi`` / ``cellvi-backed``) or in scvi-tools' own
(``--tool scvi``), imports only what that tool needs, and writes one JSON record: seconds of the
training epoch (from a Lightning hook at epoch start / end), seconds of each phase, and the
peak resident memory of the process (``ru_maxrss``), which includes the interpreter and every
library loaded.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

TIMES: dict[str, float] = {}


def _time_steps(steps: int, warmup: int) -> None:
    """Time the training steps of every Lightning Trainer of this process (either tool's) from
    step ``warmup`` (the first ones pay one-off costs) to the end of the first epoch, which
    ends after ``steps`` steps when ``steps`` > 0.

    Both tools build a :class:`lightning.pytorch.Trainer`, so the same limit applies to both.
    """
    import lightning.pytorch as pl

    class StepTimer(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if batch_idx == warmup:
                TIMES["start"] = time.perf_counter()

        def on_train_epoch_end(self, trainer, pl_module):
            if "seconds" not in TIMES:
                TIMES["seconds"] = time.perf_counter() - TIMES["start"]
                TIMES["steps"] = trainer.num_training_batches - warmup

    init = pl.Trainer.__init__

    def timed_init(self, *args, **kwargs):
        kwargs["callbacks"] = [*(kwargs.get("callbacks") or []), StepTimer()]
        if steps:
            kwargs["limit_train_batches"] = steps
        init(self, *args, **kwargs)

    pl.Trainer.__init__ = timed_init


def _peak_rss_gib() -> float:
    """High-water mark of this process's resident memory (VmHWM; ru_maxrss would include the
    parent's before exec)."""
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith("VmHWM"))
    return int(line.split()[1]) / 2**20  # kB


def run_cellvi(args, phases: dict) -> dict:
    import anndata as ad
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    import cellvi as cv

    torch.set_num_threads(args.threads)
    cv.settings.progress_bar = False
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

    torch.set_num_threads(args.threads)
    scvi.settings.seed = 0
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
    p.add_argument("--steps", type=int, default=0, help="stop each epoch after this many steps")
    p.add_argument("--warmup-steps", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    phases: dict = {}
    _time_steps(args.steps, args.warmup_steps)
    start = time.perf_counter()
    info = (run_scvi if args.tool == "scvi" else run_cellvi)(args, phases)
    record = {
        "tool": args.tool,
        "path": args.path,
        "epochs": args.epochs,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "timed_steps": TIMES.get("steps"),
        "timed_seconds": TIMES.get("seconds"),
        "phase_seconds": phases,
        "peak_rss_gib": _peak_rss_gib(),
        "total_wall_seconds": time.perf_counter() - start,
        "threads": args.threads,
        **info,
    }
    Path(args.out).write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
