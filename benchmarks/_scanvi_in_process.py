"""What the in-process scANVI ablations share (bench_scanvi_balance.py, bench_scanvi_options.py):
their command line, the run over the datasets of ``bench_scanvi.py``, and the JSON they write."""

from __future__ import annotations

import argparse
import json
import tempfile
from collections.abc import Callable
from pathlib import Path

from bench_scanvi import DATASETS
from bench_scvi_speed import REPO_ROOT


def parser(description: str, *, seeds: list[int], output: Path) -> argparse.ArgumentParser:
    """The options every ablation takes (the data preparation of ``bench_scanvi.py``)."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    p.add_argument("--data-dir", type=Path, default=REPO_ROOT.parent / "shared" / "data")
    p.add_argument("--seeds", type=int, nargs="+", default=seeds, help="training seeds")
    p.add_argument("--scvi-epochs", type=int, default=100)
    p.add_argument("--max-cells", type=int, default=None, help="quick checks only")
    p.add_argument("--n-top-genes", type=int, default=2000)
    p.add_argument("--label-fraction", type=float, default=0.1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--output", type=Path, default=output)
    return p


def parse(p: argparse.ArgumentParser, argv=None) -> argparse.Namespace:
    args = p.parse_args(argv)
    args.seed = 0  # the label mask and subsample of bench_scanvi.py
    return args


def run_datasets(args, run_dataset: Callable[[str, argparse.Namespace, Path], dict], prefix: str) -> dict:  # fmt: skip
    """``run_dataset(name, args, workdir)`` for each of ``args.datasets``, in this process, with
    ``args.threads`` torch threads and cellvi's progress bar off."""
    import torch

    torch.set_num_threads(args.threads)
    import cellvi as cv

    cv.settings.progress_bar = False
    cv.settings.verbosity = 1
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        return {name: run_dataset(name, args, Path(tmp)) for name in args.datasets}


def write_json(args, results: dict, summaries: dict) -> None:
    """The settings, every run and the summaries, to ``args.output``."""
    args.output.parent.mkdir(parents=True, exist_ok=True)
    settings = {k: str(v) for k, v in vars(args).items()}
    record = {"settings": settings, "results": results, "summary": summaries}
    args.output.write_text(json.dumps(record, indent=2))
