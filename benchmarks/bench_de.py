"""Differential expression speed: 10 groups on 10,000 cells x 2,000 genes, cellvi vs scvi-tools.

Data: 10,000 cells drawn (seed 0) from ``../shared/data/pbmc_multibatch.h5ad`` (raw counts, 8
batches), the 2,000 batch-aware HVGs (scanpy ``flavor="seurat"``), and 10 groups from k-means
(k=10, seed 0) on PCA(20) of the log-normalised counts, so neither tool's latent defines them.

Each tool, in its own fresh process (``_worker_de.py``), trains its default scVI for a few
epochs on all cells, then runs DE of every group against the rest, ``mode="change"``,
``delta=0.25``, ``n_samples`` draws per group (default 5,000, both tools' default). Only the
DE call is timed. The tools alternate (scvi-tools, cellvi, scvi-tools, cellvi, ...) so that a
busy machine slows both alike; the ratio is reported per pair.

Measured on a quiet 2-core VM (load about 1; 5 training epochs, 2 threads), three pairs:
DE cellvi 4.7 / 4.6 / 4.6 s, scvi-tools 5.8 / 6.1 / 5.5 s (ratio 1.2-1.3x). An earlier pair
on the same VM under heavy load (about 13) gave 77 s vs 424 s: absolute times and even the
ratio move with load, so compare pairs run together.

Run from the repository root::

    .venv/bin/python benchmarks/bench_de.py --scvi-python /work/venv-scvi/bin/python
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "pbmc_multibatch.h5ad"


def prepare(path: Path, n_cells: int, n_genes: int, n_groups: int) -> None:
    import anndata as ad
    import numpy as np
    import scanpy as sc
    from sklearn.cluster import KMeans

    adata = ad.read_h5ad(DATA)
    adata = adata[np.asarray(adata.X.sum(axis=1)).ravel() > 0]
    rng = np.random.default_rng(0)
    adata = adata[np.sort(rng.choice(adata.n_obs, n_cells, replace=False))].copy()
    lognorm = adata.copy()
    sc.pp.normalize_total(lognorm, target_sum=1e4)
    sc.pp.log1p(lognorm)
    sc.pp.highly_variable_genes(lognorm, flavor="seurat", batch_key="batch", n_top_genes=n_genes)
    keep = lognorm.var["highly_variable"].to_numpy()
    lognorm = lognorm[:, keep].copy()
    sc.pp.pca(lognorm, n_comps=20, random_state=0)
    groups = KMeans(n_clusters=n_groups, n_init=3, random_state=0).fit_predict(
        lognorm.obsm["X_pca"]
    )
    out = adata[:, keep].copy()
    out = out[np.asarray(out.X.sum(axis=1)).ravel() > 0].copy()
    out.obs["group"] = [f"c{g}" for g in groups[np.isin(adata.obs_names, out.obs_names)]]
    out.obs["group"] = out.obs["group"].astype("category")
    out.obs = out.obs[["batch", "group"]]
    out.write_h5ad(path)


def run_worker(python: str, tool: str, data: Path, out: Path, args) -> dict:
    cmd = [
        python, str(ROOT / "benchmarks" / "_worker_de.py"), "--tool", tool, "--data", str(data),
        "--out", str(out), "--epochs", str(args.epochs), "--n-samples", str(args.n_samples),
        "--threads", str(args.threads),
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"{tool} worker failed:\n{proc.stderr[-3000:]}")
    return json.loads(out.read_text())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--scvi-python", default=None, help="python of a scvi-tools env (optional)")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--n-samples", type=int, default=5000)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "bench_de.json"))
    args = p.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "de.h5ad"
        prepare(data, n_cells=10_000, n_genes=2_000, n_groups=10)
        for r in range(args.repeats):
            pair = {}
            tools = (["scvi"] if args.scvi_python else []) + ["cellvi"]
            for tool in tools:
                python = args.scvi_python if tool == "scvi" else sys.executable
                pair[tool] = run_worker(python, tool, data, Path(tmp) / f"{tool}{r}.json", args)
                print(f"[{r}] {tool:>6}: DE {pair[tool]['de_seconds']:.1f}s "
                      f"(train {pair[tool]['train_seconds']:.1f}s, {pair[tool]['n_de_fdr']} calls)",
                      flush=True)  # fmt: skip
            if "scvi" in pair:
                ratio = pair["scvi"]["de_seconds"] / pair["cellvi"]["de_seconds"]
                print(f"[{r}] scvi-tools / cellvi DE time: {ratio:.1f}x", flush=True)
            results.append(pair)
            # written after every pair, so that an interrupted run keeps what it measured
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps(results, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
