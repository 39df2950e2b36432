"""Training at scale: time per epoch and peak memory, in memory and backed, beside scvi-tools.

Generates (once, cached in ``benchmarks/results/``) a synthetic count matrix of up to 1,000,000
cells x 2,000 genes with realistic sparsity (about 9 % non-zero): 12 cell types with their own
gene programmes, 2 batches, log-normal library sizes, negative-binomial-like counts. Then, for
each size (the first N cells), runs one training epoch in a fresh process per tool:

- ``cellvi``: ``anndata.read_h5ad`` into memory, ``cv.tl.scvi_train``;
- ``cellvi-backed``: ``anndata.read_h5ad(backed="r")``, the counts stay on disk;
- ``scvi``: scvi-tools ``SCVI.train`` in its own environment (``--scvi-python``).

Same model for both tools (their defaults: 128 hidden, 10 latent, ZINB, batch covariate),
minibatches of 128, ``train_size=1.0``, one epoch, ``--threads`` torch threads. Reported: the
epoch's wall time and cells/s, the peak RSS of the whole process, and the in-memory CSR size.

    .venv/bin/python benchmarks/bench_scale.py --sizes 100000 300000 1000000
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
WORKER = HERE / "_worker_scale.py"
N_GENES, N_TYPES, THETA = 2000, 12, 2.0


def _library_scale(rng, programmes, density: float) -> float:
    """Library size whose expected fraction of non-zero entries is ``density`` (bisection)."""
    types = rng.integers(0, N_TYPES, 4000)
    libs = rng.lognormal(0.0, 0.5, 4000)

    def frac(scale):
        mean = scale * libs[:, None] * programmes[types]
        return float(np.mean(1.0 - (THETA / (THETA + mean)) ** THETA))

    lo, hi = 10.0, 1e6
    for _ in range(50):
        mid = np.sqrt(lo * hi)
        lo, hi = (mid, hi) if frac(mid) < density else (lo, mid)
    return float(np.sqrt(lo * hi))


def _chunk(rng, programmes, batch_shift, scale, n):
    """``n`` cells as CSR: NB(theta=2) zero pattern, non-zero values 1 + Poisson(excess)."""
    import scipy.sparse as sp

    types = rng.integers(0, N_TYPES, n)
    batches = rng.integers(0, 2, n)
    mean = (scale * rng.lognormal(0.0, 0.5, n))[:, None] * programmes[types] * batch_shift[batches]
    nonzero = 1.0 - (THETA / (THETA + mean)) ** THETA
    mask = rng.random(mean.shape, dtype=np.float32) < nonzero
    rows, cols = np.nonzero(mask)
    m = mean[rows, cols]
    values = 1.0 + rng.poisson(np.maximum(m / nonzero[rows, cols] - 1.0, 0.0))
    X = sp.csr_matrix((values.astype(np.float32), (rows, cols)), shape=(n, N_GENES))
    return X, types, batches


def generate(n_cells: int, density: float, seed: int = 0) -> Path:
    """Write the data set (and its prefixes later) once; later runs reuse the file."""
    import anndata as ad
    import pandas as pd
    import scipy.sparse as sp

    path = RESULTS / f"scale_{n_cells}.h5ad"
    if path.exists():
        return path
    rng = np.random.default_rng(seed)
    programmes = rng.gamma(0.25, 1.0, (N_TYPES, N_GENES))
    programmes /= programmes.sum(1, keepdims=True)
    batch_shift = rng.lognormal(0.0, 0.3, (2, N_GENES))
    scale = _library_scale(rng, programmes, density)
    parts, types, batches = [], [], []
    for start in range(0, n_cells, 20000):
        X, t, b = _chunk(rng, programmes, batch_shift, scale, min(20000, n_cells - start))
        parts.append(X)
        types.append(t)
        batches.append(b)
    X = sp.vstack(parts, format="csr")
    del parts
    X.indices = X.indices.astype(np.int32)
    X.indptr = X.indptr.astype(np.int64 if X.nnz > 2**31 - 1 else np.int32)
    obs = pd.DataFrame(
        {
            "cell_type": pd.Categorical(np.concatenate(types).astype(str)),
            "batch": pd.Categorical(np.char.add("b", np.concatenate(batches).astype(str))),
        },
        index=pd.RangeIndex(n_cells).astype(str),
    )
    var = pd.DataFrame(index=[f"g{j}" for j in range(N_GENES)])
    RESULTS.mkdir(exist_ok=True)
    ad.AnnData(X, obs=obs, var=var).write_h5ad(path)
    print(f"wrote {path}: {n_cells:,} cells, density {X.nnz / (n_cells * N_GENES):.3f}")
    return path


def prefix(full: Path, n_full: int, n: int) -> Path:
    """The first ``n`` cells of the full data set, as their own file."""
    import anndata as ad

    if n == n_full:
        return full
    path = RESULTS / f"scale_{n_full}_first_{n}.h5ad"
    if not path.exists():
        backed = ad.read_h5ad(full, backed="r")
        backed[:n].to_memory().write_h5ad(path)
        backed.file.close()
    return path


def csr_gib(path: Path) -> tuple[float, float]:
    """Size of the CSR (data + indices + indptr) in GiB, and the density."""
    import h5py

    with h5py.File(path, "r") as f:
        x = f["X"]
        n_cells, n_genes = x.attrs["shape"]
        nbytes = sum(x[k].size * x[k].dtype.itemsize for k in ("data", "indices", "indptr"))
        return nbytes / 2**30, x["data"].size / (n_cells * n_genes)


def run(tool: str, path: Path, args) -> dict:
    python = args.scvi_python if tool == "scvi" else sys.executable
    out = RESULTS / f"scale_{path.stem}_{tool}.json"
    command = [python, str(WORKER), "--tool", tool, "--path", str(path), "--out", str(out)]
    command += ["--threads", str(args.threads), "--epochs", "1", "--steps", str(args.steps)]
    command += ["--warmup-steps", str(args.warmup_steps)]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL)
    return json.loads(out.read_text())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[100_000, 300_000, 1_000_000])
    p.add_argument("--density", type=float, default=0.09)
    p.add_argument("--tools", nargs="+", default=["scvi", "cellvi", "cellvi-backed"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=0, help="0: a full epoch")
    p.add_argument("--warmup-steps", type=int, default=10)
    p.add_argument(
        "--scvi-python", default=os.environ.get("SCVI_PYTHON", "/work/venv-scvi/bin/python")
    )
    args = p.parse_args()
    n_full = max(args.sizes)
    full = generate(n_full, args.density)
    rows = []
    for n in sorted(args.sizes):
        path = prefix(full, n_full, n)
        gib, density = csr_gib(path)
        for tool in args.tools:
            record = run(tool, path, args) | {"n_cells": n, "csr_gib": gib, "density": density}
            timed_cells = record["timed_steps"] * record["batch_size"]
            record["cells_per_s"] = timed_cells / record["timed_seconds"]
            record["epoch_seconds"] = seconds = n / record["cells_per_s"]
            rows.append(record)
            print(
                f"{n:>9,} cells  {tool:<13} epoch {seconds:7.1f} s  {n / seconds:8,.0f} cells/s  "
                f"peak RSS {record['peak_rss_gib']:.2f} GiB  (CSR {gib:.2f} GiB, "
                f"{record['peak_rss_gib'] / gib:.2f}x)",
                flush=True,
            )
    (RESULTS / "bench_scale.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
