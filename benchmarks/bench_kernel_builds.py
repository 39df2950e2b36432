"""cellvi's scVI training speed with its C kernels built by different compilers, and without them.

The same cells and settings as ``bench_scvi_speed.py`` (its data preparation and its cellvi
worker, each run in a fresh Python process), trained once per *build*:

- ``gcc``: the kernels built by ``gcc`` (OpenMP, glibc's vector math where glibc has it);
- ``zig-clang``: built by zig's clang (``python -m ziglang cc -target <arch>-linux-gnu.2.28``):
  no OpenMP (the kernels run on one thread); glibc's vector math through ``-fveclib=libmvec``
  on x86-64 Linux (elsewhere the likelihoods then run in torch, see docs/performance.md);
- ``torch``: no kernels (``CELLVI_NATIVE_KERNELS=0``), the torch implementations;
- ``--cc NAME=COMMAND`` adds a build (e.g. ``--cc clang=clang``).

Each build gets its own kernel cache folder (``CELLVI_CACHE_DIR``), filled before the timed
runs, so no timing includes a compilation. The runs are interleaved (build 1, 2, 3, 1, 2, 3, ...)
so that a change in the machine's load hits every build alike. Report the ratios (``cells/s``
of a build / ``cells/s`` of the torch path), not the seconds. See ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_scvi_speed import DEFAULT_DATA, REPO_ROOT, prepare_data, run_worker  # noqa: E402

DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results" / "kernel_builds.json"
ZIG = f"{sys.executable} -m ziglang cc -target {platform.machine()}-linux-gnu.2.28"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--max-cells", type=int, default=None, help="seeded subsample of cells")
    p.add_argument("--n-top-genes", type=int, default=2000)
    p.add_argument("--test-fraction", type=float, default=0.1)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--threads", type=int, default=2, help="torch threads per worker")
    p.add_argument("--repeats", type=int, default=3, help="runs of each build (median reported)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cellvi-precision", default="auto", help="as in bench_scvi_speed.py")
    p.add_argument(
        "--cc",
        action="append",
        default=[],
        metavar="NAME=COMMAND",
        help="a further build: the kernels compiled by COMMAND ($CC); may be repeated",
    )
    p.add_argument("--no-default-builds", action="store_true", help="only the --cc builds")
    p.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = p.parse_args(argv)
    # what bench_scvi_speed's worker and data preparation read
    args.batch_size, args.n_hidden, args.n_latent, args.n_layers, args.lr = 128, 128, 10, 1, 1e-3
    args.kl_warmup = max(1, math.ceil(args.epochs / 4))
    args.cellvi_python = Path(sys.executable)
    args.scvi_python, args.worker_timeout = None, None
    return args


def builds(args) -> dict[str, dict[str, str]]:
    out = {} if args.no_default_builds else {
        "gcc": {"CC": "gcc"},
        "zig-clang": {"CC": ZIG},
        "torch": {"CELLVI_NATIVE_KERNELS": "0"},
    }  # fmt: skip
    for item in args.cc:
        name, _, command = item.partition("=")
        if not command:
            sys.exit(f"--cc takes NAME=COMMAND, got {item!r}")
        out[name] = {"CC": command}
    return out


def build_kernels(env: dict[str, str]) -> dict[str, str]:
    """Compile the kernels into the build's cache; their status()."""
    code = "import json; from cellvi.utils import native; print(json.dumps(native.status()))"
    src = str(REPO_ROOT / "src")
    full = {**os.environ, **env, "PYTHONPATH": src}
    done = subprocess.run([sys.executable, "-c", code], env=full, capture_output=True, text=True,
                          check=True)  # fmt: skip
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="cellvi-bench-builds-") as tmp:
        workdir = Path(tmp)
        data = prepare_data(args, workdir)
        variants = builds(args)
        status = {}
        for name, env in variants.items():
            env.setdefault("CELLVI_CACHE_DIR", str(workdir / f"cache-{name}"))
            status[name] = build_kernels(env)
            print(f"{name}: {status[name]}", flush=True)
        runs = {name: [] for name in variants}
        for repeat in range(args.repeats):
            for name, env in variants.items():
                runs[name].append(run_worker("cellvi", args, workdir, repeat, env, label=name))
    speed = {n: statistics.median(r["cells_per_s"] for r in rs) for n, rs in runs.items()}
    elbo = {n: statistics.median(r["heldout_elbo"] for r in rs) for n, rs in runs.items()}
    base = "torch" if "torch" in speed else next(iter(speed))
    summary = {
        name: {
            "cells_per_s": speed[name],
            f"speed_vs_{base}": speed[name] / speed[base],
            "heldout_elbo": elbo[name],
            f"elbo_rel_diff_vs_{base}_pct": 100 * (elbo[name] - elbo[base]) / abs(elbo[base]),
            "kernels": runs[name][0]["native_kernels"],
            "status": status[name],
        }
        for name in runs
    }
    print(f"\n{'build':<12} {'cells/s':>9} {'vs ' + base:>9} {'ELBO':>10} {'ELBO diff':>10}")
    for name, row in summary.items():
        print(f"{name:<12} {row['cells_per_s']:>9,.0f} {row[f'speed_vs_{base}']:>8.2f}x "
              f"{row['heldout_elbo']:>10.2f} {row[f'elbo_rel_diff_vs_{base}_pct']:>9.2f}%")  # fmt: skip
    args.output.parent.mkdir(parents=True, exist_ok=True)
    record = {"data": data, "epochs": args.epochs, "threads": args.threads,
              "repeats": args.repeats, "precision": args.cellvi_precision,
              "machine": platform.platform(), "cpu_count": os.cpu_count(),
              "summary": summary, "runs": runs}  # fmt: skip
    args.output.write_text(json.dumps(record, indent=2, default=str))
    print(f"\nwrote {args.output}")


if __name__ == "__main__":
    main()
