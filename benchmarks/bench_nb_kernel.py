"""Per-call time of the NB / ZINB likelihood kernel, forward and backward, by build.

One fresh Python process per build (its own kernel cache folder, filled before timing), one
thread, the same synthetic minibatch (``--cells`` x ``--genes``, default 128 x 2,000, counts
drawn from the model's own means, non-zero entries as coordinates, as in training):

- ``gcc``: ``CC=gcc`` (glibc's vector math as far as this glibc has it);
- ``gcc-glibc2.28``: ``CC="gcc -DCELLVI_ASSUME_GLIBC=228"``: the vector declarations of a
  glibc 2.28 system (RHEL 8): vector ``expf`` / ``logf``, no vector ``log1pf``;
- ``zig-clang``: ``python -m ziglang cc -target <arch>-linux-gnu.2.28``;
- ``torch``: the torch implementation (``cellvi.settings.native_kernels = False``);
- ``--cc NAME=COMMAND`` adds a build.

The protein mixture likelihood of the same C file is timed too (``--cells`` x ``--proteins``).

Each kernel build is timed through the kernel even where cellvi would not use it (a build
without vector math: the torch likelihood runs instead), so the two can be compared; the
``used`` column says what cellvi picks for that build. Each number is the median over
``--rounds`` rounds of ``--calls`` calls. The builds are measured one after the other, so run
it on a quiet machine and compare ratios taken in one run. Not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
ZIG = f"{sys.executable} -m ziglang cc -target {platform.machine()}-linux-gnu.2.28"


def _data(n_cells: int, n_genes: int, seed: int = 0):
    import torch

    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n_cells, n_genes, generator=g) * 1.5
    log_lib = torch.log(torch.rand(n_cells, generator=g) * 7000 + 1000)
    theta = torch.exp(torch.randn(n_genes, generator=g))
    rho = torch.randn(n_cells, n_genes, generator=g) - 2
    mu = torch.softmax(logits, -1) * torch.exp(log_lib).unsqueeze(-1)
    x = torch.poisson(mu, generator=g)
    rows, cols = torch.nonzero(x, as_tuple=True)
    return {
        "logits": logits,
        "log_lib": log_lib,
        "theta": theta,
        "rho": rho,
        "rows": rows,
        "cols": cols,
        "values": x[rows, cols],
        "lxf": torch.lgamma(x + 1).sum(1),
        "density": len(rows) / x.numel(),
    }


def worker(args) -> dict:
    """Runs in the build's own process: times every case, returns the numbers."""
    import torch

    import cellvi as cv
    from cellvi.distributions import _likelihood
    from cellvi.distributions import _native_likelihood as nl
    from cellvi.utils import native

    torch.set_num_threads(1)
    torch_path = os.environ.get("CELLVI_NATIVE_KERNELS") == "0"
    nl.USE_SCALAR_BUILD = True  # time the kernel also where cellvi would not use it
    status = native.status()["nb_likelihood"]
    if not torch_path and nl._kernel() is None:
        return {"status": status, "error": "the kernel did not load"}
    d = _data(args.cells, args.genes)
    out = {"status": status, "density": d["density"], "build": native.build_info(),
           "used": "torch" if torch_path or not status == "loaded" else "kernel"}  # fmt: skip
    for case in ("nb", "zinb"):
        rho = d["rho"] if case == "zinb" else None
        leaves = [t.clone().requires_grad_() for t in (d["logits"], d["log_lib"], d["theta"])]
        rho_leaf = rho.clone().requires_grad_() if rho is not None else None
        inputs = [*leaves, *([rho_leaf] if rho_leaf is not None else [])]

        def call(leaves=leaves, rho_leaf=rho_leaf, inputs=inputs):
            if torch_path:
                nz = _likelihood._NonZero(None, d["rows"], d["cols"], d["values"],
                                          n_genes=args.genes)  # fmt: skip
                loglik = _likelihood._NegBinomialLogLik.apply(
                    *leaves, rho_leaf, nz.rows, nz.cols, nz.flat, nz.x, d["lxf"]
                )
            else:  # through the kernel, also where cellvi would not pick it
                loglik = nl.nb_log_likelihood_native(*leaves, rho_leaf, d["rows"], d["cols"],
                                                     d["values"], d["lxf"])  # fmt: skip
            torch.autograd.grad(loglik.sum(), inputs)

        out[case] = _time(args, call)
    # the protein mixture of the same file (totalVI), --cells x --proteins
    from cellvi.distributions._mixture_likelihood import nb_mixture_log_likelihood

    g = torch.Generator().manual_seed(1)
    n, p = args.cells, args.proteins
    y = torch.poisson(torch.rand(n, p, generator=g) * 300)
    back = torch.randn(n, p, generator=g) + 2
    mix = [back, back + torch.rand(n, p, generator=g) * 3, torch.exp(torch.randn(p, generator=g)),
           torch.randn(n, p, generator=g) * 2]  # fmt: skip
    mix = [t.requires_grad_() for t in mix]
    fn = nb_mixture_log_likelihood if torch_path else nl.nb_mixture_log_likelihood_native
    out["mixture"] = _time(args, lambda: torch.autograd.grad(fn(y, *mix).sum(), mix))
    del cv
    return out


def _time(args, call) -> dict:
    for _ in range(args.warmup):
        call()
    times = []
    for _ in range(args.rounds):
        start = time.perf_counter()
        for _ in range(args.calls):
            call()
        times.append((time.perf_counter() - start) / args.calls * 1e3)
    return {"ms_median": statistics.median(times), "ms_rounds": times}


def builds(args) -> dict[str, dict[str, str]]:
    out = {
        "gcc": {"CC": "gcc"},
        "gcc-glibc2.28": {"CC": "gcc -DCELLVI_ASSUME_GLIBC=228"},
        "zig-clang": {"CC": ZIG},
        "torch": {"CELLVI_NATIVE_KERNELS": "0"},
    }
    for item in args.cc:
        name, _, command = item.partition("=")
        if not command:
            sys.exit(f"--cc takes NAME=COMMAND, got {item!r}")
        out[name] = {"CC": command}
    if args.only:
        out = {k: v for k, v in out.items() if k in args.only}
    return out


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cells", type=int, default=128)
    p.add_argument("--genes", type=int, default=2000)
    p.add_argument("--proteins", type=int, default=100, help="for the protein mixture")
    p.add_argument("--calls", type=int, default=20, help="calls per round")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--cc", action="append", default=[], metavar="NAME=COMMAND")
    p.add_argument("--only", nargs="*", help="only these builds (by name)")
    p.add_argument("--output", type=Path, default=None, help="write the numbers as JSON")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args)))
        return
    passed = [a for a in (argv if argv is not None else sys.argv[1:]) if a != "--worker"]
    results = {}
    with tempfile.TemporaryDirectory(prefix="cellvi-bench-nb-") as tmp:
        for name, env in builds(args).items():
            full = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "src"),
                    "CELLVI_CACHE_DIR": str(Path(tmp) / name), **env}  # fmt: skip
            done = subprocess.run([sys.executable, __file__, "--worker", *passed], env=full,
                                  capture_output=True, text=True, check=False)  # fmt: skip
            if done.returncode != 0:
                results[name] = {"error": done.stderr.strip().splitlines()[-1:]}
            else:
                results[name] = json.loads(done.stdout.strip().splitlines()[-1])
            row = results[name]
            if "nb" in row:
                print(f"{name:<16} NB {row['nb']['ms_median']:7.2f} ms  ZINB "
                      f"{row['zinb']['ms_median']:7.2f} ms  mixture {row['mixture']['ms_median']:6.2f} ms  "
                      f"cellvi uses: {row['used']:<6} "
                      f"status: {row['status']}", flush=True)  # fmt: skip
            else:
                print(f"{name:<16} {row}", flush=True)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        record = {"cells": args.cells, "genes": args.genes, "machine": platform.platform(),
                  "results": results}  # fmt: skip
        args.output.write_text(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
