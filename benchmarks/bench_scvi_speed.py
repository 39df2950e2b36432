"""Training speed and held-out ELBO of cellvi's scVI against scvi-tools' SCVI on the CPU.

Both tools train the same architecture with the same settings on the same cells, each in its
own fresh Python process (its own interpreter and environment), one after the other:

1. ``pbmc_multibatch.h5ad`` (raw counts, 8 batches) is reduced to 2,000 highly variable genes
   (scanpy, ``flavor="seurat"``, per batch, on a log-normalised copy; the raw counts of those
   genes are kept) and split, seeded, into 90 % training and 10 % held-out cells.
2. Each worker trains on the training cells (``train_size=1.0``: no validation) and reports the
   wall-clock time of the training call only, and the per-cell mean ELBO of the held-out cells.
3. The table shows cells/s (training cells x epochs / training seconds) and held-out ELBO per
   tool, with the speed ratio cellvi / scvi-tools and the relative ELBO difference.

Run it on an otherwise idle machine, and report the ratios rather than absolute seconds.
See ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
DEFAULT_DATA = REPO_ROOT.parent / "shared" / "data" / "pbmc_multibatch.h5ad"
DEFAULT_OUTPUT = BENCH_DIR / "results" / "scvi_speed.json"
DEFAULT_SCVI_VENV = REPO_ROOT / ".venv-scvi"
SCVI_TOOLS_VERSION = "1.4.2"
TORCH_VERSION = "2.13.0"
TOOLS = {"scvi": "scvi-tools", "cellvi": "cellvi"}
WORKERS = {"scvi": BENCH_DIR / "_worker_scvi.py", "cellvi": BENCH_DIR / "_worker_cellvi.py"}
STDERR_TAIL_LINES = 40


def _venv_python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="input .h5ad (raw counts)")
    p.add_argument(
        "--max-cells", type=int, default=None, help="seeded subsample of cells (quick checks)"
    )
    p.add_argument("--n-top-genes", type=int, default=2000, help="highly variable genes kept")
    p.add_argument("--test-fraction", type=float, default=0.1, help="held-out cell fraction")
    p.add_argument("--epochs", type=int, default=100, help="training epochs (both tools)")
    p.add_argument("--threads", type=int, default=2, help="torch threads per worker")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--n-hidden", type=int, default=128)
    p.add_argument("--n-latent", type=int, default=10)
    p.add_argument("--n-layers", type=int, default=1)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0, help="seed of subsample, split and training")
    p.add_argument(
        "--cellvi-precision",
        default="auto",
        help="cellvi's precision argument (default 'auto'; '32-true' for float32 throughout); "
        "scvi-tools always runs at its default (float32)",
    )
    p.add_argument(
        "--order",
        default="scvi,cellvi",
        help="comma-separated tools to run, in this order (scvi, cellvi)",
    )
    p.add_argument("--repeats", type=int, default=1, help="runs of each tool (median reported)")
    p.add_argument(
        "--scvi-python",
        type=Path,
        default=None,
        help="python of the scvi-tools environment (default: $SCVI_PYTHON, else "
        "<repo>/.venv-scvi/bin/python)",
    )
    p.add_argument(
        "--cellvi-python",
        type=Path,
        default=Path(sys.executable),
        help="python of the cellvi environment (default: the one running this script)",
    )
    p.add_argument(
        "--setup-scvi",
        action="store_true",
        help=f"create the scvi-tools venv at the --scvi-python location first (torch=="
        f"{TORCH_VERSION}, then scvi-tools=={SCVI_TOOLS_VERSION}); kept if it already works",
    )
    p.add_argument(
        "--base-python",
        default="python3",
        help="interpreter used by --setup-scvi to create the venv",
    )
    p.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="where train.h5ad, test.h5ad and worker outputs go (default: a temporary "
        "directory, removed at the end)",
    )
    p.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="results JSON")
    p.add_argument(
        "--worker-timeout", type=float, default=None, help="seconds before a worker is killed"
    )
    args = p.parse_args(argv)

    if args.scvi_python is None:
        env = os.environ.get("SCVI_PYTHON")
        args.scvi_python = Path(env) if env else _venv_python(DEFAULT_SCVI_VENV)
    args.order = [t.strip() for t in args.order.split(",") if t.strip()]
    unknown = [t for t in args.order if t not in TOOLS]
    if unknown or not args.order:
        p.error(f"--order takes a comma-separated list of {sorted(TOOLS)}, got {unknown}")
    if len(set(args.order)) != len(args.order):
        p.error("--order lists a tool twice; use --repeats for repeated runs")
    for name in ("epochs", "threads", "batch_size", "repeats", "n_top_genes"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be a positive integer")
    if args.max_cells is not None and args.max_cells < 10:
        p.error("--max-cells must be at least 10")
    if not 0.0 < args.test_fraction < 1.0:
        p.error("--test-fraction must be in (0, 1)")
    return args


def fail(message: str, code: int = 2) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(code)


# ---------------------------------------------------------------------------------------------
# scvi-tools environment


def _scvi_env_version(python: Path) -> str | None:
    """scvi-tools version importable by ``python``, or None."""
    if not python.exists():
        return None
    code = "from importlib.metadata import version; print(version('scvi-tools'))"
    proc = subprocess.run([str(python), "-c", code], capture_output=True, text=True)
    return proc.stdout.strip() if proc.returncode == 0 else None


def setup_scvi_env(python: Path, base_python: str) -> None:
    """Create the scvi-tools venv that owns ``python`` (``<venv>/bin/python``)."""
    found = _scvi_env_version(python)
    if found == SCVI_TOOLS_VERSION:
        print(f"scvi-tools {found} already installed for {python}; nothing to set up")
        return
    venv = python.parent.parent
    if python.name not in ("python", "python3", "python.exe") or python.parent.name not in (
        "bin",
        "Scripts",
    ):
        fail(f"--setup-scvi needs --scvi-python to be <venv>/bin/python, got {python}")
    pip = venv / ("Scripts/pip.exe" if os.name == "nt" else "bin/pip")
    steps = []
    if not python.exists():
        steps.append([base_python, "-m", "venv", str(venv)])
    # torch first, pinned, so that pip keeps the CPU build instead of pulling a CUDA one
    steps.append([str(pip), "install", f"torch=={TORCH_VERSION}"])
    steps.append([str(pip), "install", f"scvi-tools=={SCVI_TOOLS_VERSION}"])
    for cmd in steps:
        print("+ " + " ".join(cmd), flush=True)
        if subprocess.run(cmd).returncode != 0:
            fail(f"setting up the scvi-tools environment failed at: {' '.join(cmd)}", code=1)
    found = _scvi_env_version(python)
    if found != SCVI_TOOLS_VERSION:
        fail(f"after set-up, {python} has scvi-tools {found!r}, not {SCVI_TOOLS_VERSION}", 1)


def check_environments(args: argparse.Namespace) -> None:
    if "scvi" in args.order:
        if args.setup_scvi:
            setup_scvi_env(args.scvi_python, args.base_python)
        elif not args.scvi_python.exists():
            fail(
                f"scvi-tools python not found at {args.scvi_python}. Create it with "
                "--setup-scvi, or point --scvi-python / $SCVI_PYTHON at an environment with "
                f"scvi-tools=={SCVI_TOOLS_VERSION}."
            )
        else:
            found = _scvi_env_version(args.scvi_python)
            if found is None:
                fail(f"{args.scvi_python} cannot import scvi-tools (try --setup-scvi)")
            if found != SCVI_TOOLS_VERSION:
                print(
                    f"warning: {args.scvi_python} has scvi-tools {found}, the benchmark is "
                    f"written for {SCVI_TOOLS_VERSION}",
                    file=sys.stderr,
                )
    if "cellvi" in args.order and not args.cellvi_python.exists():
        fail(f"cellvi python not found at {args.cellvi_python}")


# ---------------------------------------------------------------------------------------------
# data


def highly_variable(adata, n_top_genes: int, batch_key: str | None):
    """``adata`` restricted to its ``n_top_genes`` highly variable genes, with the raw counts:
    chosen by scanpy's ``flavor="seurat"`` (per batch when ``batch_key``) on a log-normalised
    copy."""
    import scanpy as sc

    lognorm = adata.copy()
    sc.pp.normalize_total(lognorm)
    sc.pp.log1p(lognorm)
    n_top = min(n_top_genes, adata.n_vars)
    sc.pp.highly_variable_genes(lognorm, n_top_genes=n_top, batch_key=batch_key, flavor="seurat")
    return adata[:, lognorm.var["highly_variable"].to_numpy()].copy()


def prepare_data(args: argparse.Namespace, workdir: Path) -> dict:
    """HVG selection, train/test split; writes train.h5ad and test.h5ad into ``workdir``."""
    import anndata as ad
    import numpy as np
    import pandas as pd
    import scipy.sparse as sp

    t0 = time.perf_counter()
    adata = ad.read_h5ad(args.data)
    n_cells_file, n_genes_file = adata.n_obs, adata.n_vars
    if "batch" not in adata.obs:
        fail(f'{args.data} has no obs["batch"] column')
    rng = np.random.default_rng(args.seed)
    if args.max_cells is not None and args.max_cells < adata.n_obs:
        keep = np.sort(rng.choice(adata.n_obs, size=args.max_cells, replace=False))
        adata = adata[keep].copy()
    else:
        adata = adata.copy()
    if not sp.issparse(adata.X):
        adata.X = sp.csr_matrix(adata.X)
    adata.X = adata.X.astype(np.float32)
    batch = adata.obs["batch"].astype(str)
    adata.obs = pd.DataFrame({"batch": pd.Categorical(batch)}, index=adata.obs_names)
    adata.var = pd.DataFrame(index=adata.var_names)
    adata.uns = {}
    adata.obsm.clear()
    adata.layers.clear()

    adata = highly_variable(adata, args.n_top_genes, "batch")

    # cells with no counts in the selected genes have no library size: left out for both tools
    totals = np.asarray(adata.X.sum(axis=1)).ravel()
    n_empty = int((totals <= 0).sum())
    if n_empty:
        adata = adata[totals > 0].copy()

    n = adata.n_obs
    order = rng.permutation(n)
    n_test = max(1, round(args.test_fraction * n))
    n_train = n - n_test
    # a training set whose last minibatch has 1-2 cells trips BatchNorm in scvi-tools (cellvi
    # merges such a batch into the previous one); move those cells to the test set so that
    # both tools see exactly the same minibatch sizes
    tail = n_train % args.batch_size
    if n_train > args.batch_size and 0 < tail < 3:
        n_train -= tail
        n_test += tail
    train_idx = np.sort(order[:n_train])
    test_idx = np.sort(order[n_train:])
    train, test = adata[train_idx].copy(), adata[test_idx].copy()
    # same batch categories (all of them) in both files
    cats = adata.obs["batch"].cat.categories
    for part in (train, test):
        part.obs["batch"] = pd.Categorical(part.obs["batch"].astype(str), categories=cats)
    train.write_h5ad(workdir / "train.h5ad")
    test.write_h5ad(workdir / "test.h5ad")

    return {
        "path": str(args.data.resolve()),
        "n_cells_in_file": int(n_cells_file),
        "n_genes_in_file": int(n_genes_file),
        "max_cells": args.max_cells,
        "n_cells_used": int(n),
        "n_cells_dropped_zero_counts": n_empty,
        "n_genes": int(adata.n_vars),
        "hvg": {"n_top_genes": int(adata.n_vars), "flavor": "seurat", "batch_key": "batch"},
        "n_train_cells": int(train.n_obs),
        "n_test_cells": int(test.n_obs),
        "n_batches": len(cats),
        "train_cells_per_batch": {
            str(k): int(v) for k, v in train.obs["batch"].value_counts(sort=False).items()
        },
        "prepare_seconds": time.perf_counter() - t0,
    }


# ---------------------------------------------------------------------------------------------
# workers


def _tail(text: str, n: int = STDERR_TAIL_LINES) -> str:
    return "\n".join(text.rstrip().splitlines()[-n:])


def run_worker(
    tool: str,
    args: argparse.Namespace,
    workdir: Path,
    run_id: int,
    env_extra: dict[str, str] | None = None,
    label: str | None = None,
) -> dict:
    """One worker process; ``env_extra`` is added to its environment (e.g. ``CC``), ``label``
    names it in the output and its files (default: the tool's name)."""
    python = args.scvi_python if tool == "scvi" else args.cellvi_python
    tag = tool if label is None else label
    out_json = workdir / f"result_{tag}_{run_id}.json"
    out_json.unlink(missing_ok=True)
    cmd = [
        str(python),
        str(WORKERS[tool]),
        "--train",
        str(workdir / "train.h5ad"),
        "--test",
        str(workdir / "test.h5ad"),
        "--out",
        str(out_json),
        "--epochs",
        str(args.epochs),
        "--kl-warmup",
        str(args.kl_warmup),
        "--threads",
        str(args.threads),
        "--batch-size",
        str(args.batch_size),
        "--n-hidden",
        str(args.n_hidden),
        "--n-latent",
        str(args.n_latent),
        "--n-layers",
        str(args.n_layers),
        "--lr",
        repr(args.lr),
        "--seed",
        str(args.seed),
    ]
    if tool == "cellvi":
        cmd += ["--precision", args.cellvi_precision]
    env = dict(os.environ)
    threads = str(args.threads)
    env.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads, OPENBLAS_NUM_THREADS=threads)
    env["PYTHONUNBUFFERED"] = "1"
    if tool == "cellvi":
        # a source checkout works without an editable install
        src = str(REPO_ROOT / "src")
        env["PYTHONPATH"] = os.pathsep.join([src, *filter(None, [env.get("PYTHONPATH")])])
    else:
        env.pop("PYTHONPATH", None)  # keep the scvi-tools environment clean of cellvi's paths

    env.update(env_extra or {})
    label = TOOLS[tool] if label is None else label
    print(f"[run {run_id}] {label}: training ({args.epochs} epochs) ...", flush=True)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(
            cmd,
            cwd=workdir,  # Lightning / scvi-tools log folders land in the work directory
            env=env,
            capture_output=True,
            text=True,
            timeout=args.worker_timeout,
        )
    except subprocess.TimeoutExpired as exc:
        stderr = exc.stderr.decode() if isinstance(exc.stderr, bytes) else exc.stderr or ""
        raise WorkerError(label, f"timed out after {args.worker_timeout} s", stderr) from None
    wall = time.perf_counter() - t0
    (workdir / f"stderr_{tag}_{run_id}.log").write_text(proc.stderr)
    if proc.returncode != 0:
        raise WorkerError(label, f"exited with status {proc.returncode}", proc.stderr)
    if not out_json.exists():
        raise WorkerError(label, "finished without writing its result", proc.stderr)
    result = json.loads(out_json.read_text())
    result.update(run=run_id, total_wall_seconds=wall, load_avg_1min_before=load)
    print(
        f"[run {run_id}] {label}: train {result['train_seconds']:.1f} s, "
        f"{result['cells_per_s']:,.0f} cells/s, held-out ELBO {result['heldout_elbo']:.2f}, "
        f"process total {wall:.1f} s",
        flush=True,
    )
    return result


class WorkerError(RuntimeError):
    def __init__(self, tool: str, what: str, stderr: str) -> None:
        super().__init__(f"{tool} worker {what}")
        self.tool, self.stderr = tool, stderr


# ---------------------------------------------------------------------------------------------
# summary


def summarise(runs: list[dict], order: list[str]) -> dict:
    summary: dict = {"tools": {}}
    for tool in order:
        label = TOOLS[tool]
        mine = [r for r in runs if r["tool"] == label]
        if not mine:
            continue
        summary["tools"][label] = {
            "n_runs": len(mine),
            "cells_per_s_median": statistics.median(r["cells_per_s"] for r in mine),
            "train_seconds_median": statistics.median(r["train_seconds"] for r in mine),
            "total_wall_seconds_median": statistics.median(r["total_wall_seconds"] for r in mine),
            "heldout_elbo_mean": statistics.fmean(r["heldout_elbo"] for r in mine),
            "cells_per_s_all": [r["cells_per_s"] for r in mine],
            "heldout_elbo_all": [r["heldout_elbo"] for r in mine],
        }
    tools = summary["tools"]
    if "cellvi" in tools and "scvi-tools" in tools:
        c, s = tools["cellvi"], tools["scvi-tools"]
        summary["speed_ratio_cellvi_over_scvi"] = c["cells_per_s_median"] / s["cells_per_s_median"]
        # the ratio within each interleaved pair of runs: on a noisy machine its spread says
        # more than the ratio of the medians
        pairs = zip(c["cells_per_s_all"], s["cells_per_s_all"], strict=False)
        summary["speed_ratio_per_pair"] = [a / b for a, b in pairs]
        summary["elbo_relative_difference_percent"] = (
            100.0 * (c["heldout_elbo_mean"] - s["heldout_elbo_mean"]) / abs(s["heldout_elbo_mean"])
        )
    return summary


def print_table(summary: dict) -> None:
    header = ("tool", "cells/s", "held-out ELBO", "train s", "process s", "runs")
    rows = [header]
    for label, t in summary["tools"].items():
        rows.append(
            (
                label,
                f"{t['cells_per_s_median']:,.0f}",
                f"{t['heldout_elbo_mean']:.3f}",
                f"{t['train_seconds_median']:.2f}",
                f"{t['total_wall_seconds_median']:.2f}",
                str(t["n_runs"]),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    line = "-+-".join("-" * w for w in widths)
    print()
    for i, r in enumerate(rows):
        cells = [r[0].ljust(widths[0])] + [
            v.rjust(w) for v, w in zip(r[1:], widths[1:], strict=True)
        ]
        print(" | ".join(cells))
        if i == 0:
            print(line)
    print()
    if "speed_ratio_cellvi_over_scvi" in summary:
        print(
            f"speed ratio cellvi / scvi-tools (cells/s):   "
            f"{summary['speed_ratio_cellvi_over_scvi']:.3f}x"
        )
        per_pair = ", ".join(f"{r:.2f}x" for r in summary.get("speed_ratio_per_pair", []))
        print(f"ratio within each interleaved pair of runs:  {per_pair}")
        print(
            f"held-out ELBO (cellvi - scvi) / |scvi|:      "
            f"{summary['elbo_relative_difference_percent']:+.3f} %  (negative = cellvi worse)"
        )
    print("(train s: the training call only; process s: the whole worker process, with imports,")
    print(" data loading, set-up and evaluation; medians over runs)")


# ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.kl_warmup = max(1, math.ceil(args.epochs / 4))
    if not args.data.exists():
        fail(
            f"dataset not found: {args.data}\n"
            "The benchmark needs pbmc_multibatch.h5ad (raw counts, obs['batch']); by default "
            "it is read from ../shared/data/ next to the repository. Pass --data PATH."
        )
    check_environments(args)

    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    if load is not None and load[0] > 0.5 * (os.cpu_count() or 1):
        print(
            f"warning: load average {load[0]:.2f} on {os.cpu_count()} CPUs; timings are only "
            "meaningful on an otherwise idle machine",
            file=sys.stderr,
        )

    temp = args.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="bench_scvi_speed_")) if temp else args.workdir
    workdir = workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    started = dt.datetime.now(dt.UTC)
    t_total = time.perf_counter()
    runs: list[dict] = []
    error: dict | None = None
    dataset: dict | None = None
    try:
        print(f"preparing data from {args.data} in {workdir} ...", flush=True)
        dataset = prepare_data(args, workdir)
        print(
            f"{dataset['n_train_cells']:,} training / {dataset['n_test_cells']:,} held-out "
            f"cells x {dataset['n_genes']:,} genes, {dataset['n_batches']} batches; "
            f"{args.epochs} epochs, KL warm-up {args.kl_warmup} epochs, {args.threads} threads",
            flush=True,
        )
        for rep in range(args.repeats):
            for tool in args.order:
                runs.append(run_worker(tool, args, workdir, rep))
    except WorkerError as exc:
        error = {"tool": exc.tool, "message": str(exc), "stderr_tail": _tail(exc.stderr)}
        print(f"\nerror: {exc}; last lines of its stderr:", file=sys.stderr)
        print(_tail(exc.stderr), file=sys.stderr)
    finally:
        if temp:
            shutil.rmtree(workdir, ignore_errors=True)

    summary = summarise(runs, args.order) if runs else {"tools": {}}
    record = {
        "benchmark": "scvi_speed",
        "status": "failed" if error else "ok",
        "error": error,
        "started_utc": started.isoformat(timespec="seconds"),
        "total_wall_seconds": time.perf_counter() - t_total,
        "settings": {
            "epochs": args.epochs,
            "kl_warmup_epochs": args.kl_warmup,
            "batch_size": args.batch_size,
            "n_hidden": args.n_hidden,
            "n_latent": args.n_latent,
            "n_layers": args.n_layers,
            "gene_likelihood": "zinb",
            "dispersion": "gene",
            "lr": args.lr,
            "train_size": 1.0,
            "threads": args.threads,
            "seed": args.seed,
            "order": [TOOLS[t] for t in args.order],
            "repeats": args.repeats,
            "test_fraction": args.test_fraction,
        },
        "dataset": dataset,
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "load_avg_before": list(load) if load is not None else None,
        },
        "python": {
            "driver": sys.executable,
            "cellvi": str(args.cellvi_python),
            "scvi-tools": str(args.scvi_python),
        },
        "runs": runs,
        "summary": summary,
    }
    if runs and not error:
        print_table(summary)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(record, indent=2) + "\n")
    print(f"\nresults written to {args.output.resolve()}")
    return 1 if error else 0


if __name__ == "__main__":
    sys.exit(main())
