"""totalVI: training speed, held-out ELBO and Leiden ARI of cellvi against scvi-tools' TOTALVI.

Both tools train the same architecture (20 latent dimensions, 256 hidden units, 2 encoder
layers, 1 decoder layer, dropout 0.2, NB genes, batch as a covariate) with the same settings
(epochs, KL warm-up over the first quarter, minibatches of 256, Adam lr 4e-3, all training
cells used, seed 0) on the same cells, each in a fresh process of its own environment:

1. ``cite_pbmc_2batch.h5mu`` (RNA + 8 proteins, 2 batches) keeps its RNA genes (all of them
   when there are fewer than ``--n-top-genes``; otherwise that many highly variable genes) and
   all proteins, and is split, seeded, into 90 % training and 10 % held-out cells.
2. The tools run in interleaved pairs (scvi-tools, cellvi, then cellvi, scvi-tools, ...);
   each pair's speed ratio is printed, since the machine's load drifts between pairs.
3. The held-out ELBO is the same sum of terms for both (see ``_worker_totalvi_scvi.py``);
   scvi-tools' own ``get_elbo`` is reported next to it. The cell-type ARI of Leiden clusters
   (15 neighbours, resolution 1) on each tool's latent of the training cells is computed here,
   the same way for both.

Usage: ``python benchmarks/bench_totalvi_speed.py --epochs 100 --pairs 2``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
DEFAULT_DATA = REPO_ROOT.parent / "shared" / "data" / "cite_pbmc_2batch.h5mu"
DEFAULT_SCVI_PYTHON = os.environ.get(
    "SCVI_PYTHON", str(REPO_ROOT / ".venv-scvi" / "bin" / "python")
)  # as bench_scvi_speed.py
WORKERS = {"cellvi": "_worker_totalvi_cellvi.py", "scvi": "_worker_totalvi_scvi.py"}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--n-top-genes", type=int, default=2000)
    p.add_argument("--max-cells", type=int, default=None, help="seeded subsample (quick runs)")
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--pairs", type=int, default=1, help="interleaved (scvi-tools, cellvi) pairs")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--same-seed",
        dest="vary_seed",
        action="store_false",
        help="train every pair with --seed (default: pair k uses --seed + k)",
    )
    p.add_argument("--cellvi-precision", default="auto")
    p.add_argument("--scvi-python", default=DEFAULT_SCVI_PYTHON)
    p.add_argument("--output", type=Path, default=BENCH_DIR / "results" / "totalvi_speed.json")
    return p.parse_args(argv)


def prepare_data(
    path: Path, n_top_genes: int, seed: int, workdir: Path, max_cells: int | None = None
) -> dict:
    """Write train.h5mu / test.h5mu; return their paths and the training cells' labels."""
    import mudata as mu
    import numpy as np
    import scanpy as sc

    mdata = mu.read_h5mu(path)
    rna = mdata.mod["rna"]
    if rna.n_vars > n_top_genes:
        lognorm = rna.copy()
        sc.pp.normalize_total(lognorm, target_sum=1e4)
        sc.pp.log1p(lognorm)
        sc.pp.highly_variable_genes(lognorm, n_top_genes=n_top_genes, batch_key="batch")
        mdata.mod["rna"] = rna[:, lognorm.var["highly_variable"].to_numpy()].copy()
    keep = np.asarray(mdata.mod["rna"].X.sum(1)).ravel() > 0
    rng = np.random.default_rng(seed)
    order = rng.permutation(np.flatnonzero(keep))[:max_cells]
    n_test = int(round(0.1 * len(order)))
    parts = {"test": np.sort(order[:n_test]), "train": np.sort(order[n_test:])}
    out = {}
    for name, idx in parts.items():
        sub = mu.MuData({m: mdata.mod[m][idx].copy() for m in ("rna", "prot")})
        sub.obs["batch"] = mdata.mod["rna"].obs["batch"].to_numpy()[idx]
        sub.mod["rna"].obs["batch"] = sub.obs["batch"].to_numpy()
        file = workdir / f"{name}.h5mu"
        sub.write_h5mu(file)
        out[name] = str(file)
    out["labels"] = mdata.mod["rna"].obs["cell_type"].to_numpy()[parts["train"]].astype(str)
    out["n_genes"] = int(mdata.mod["rna"].n_vars)
    out["n_proteins"] = int(mdata.mod["prot"].n_vars)
    return out


def run_worker(tool: str, args, data: dict, workdir: Path, run: int) -> dict:
    out = workdir / f"{tool}_{run}.json"
    latent = workdir / f"{tool}_{run}_latent.npy"
    python = sys.executable if tool == "cellvi" else args.scvi_python
    cmd = [
        python, str(BENCH_DIR / WORKERS[tool]), "--train", data["train"], "--test",
        data["test"], "--out", str(out), "--latent-out", str(latent), "--epochs",
        str(args.epochs), "--kl-warmup", str(max(1, -(-args.epochs // 4))), "--threads",
        str(args.threads), "--batch-size", "256", "--n-hidden", "256", "--n-latent", "20",
        "--n-layers", "2", "--lr", "4e-3", "--seed", str(_training_seed(args, run)),
    ]  # fmt: skip
    if tool == "cellvi":
        cmd += ["--precision", args.cellvi_precision]
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT / "src"))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=BENCH_DIR)
    if proc.returncode != 0:
        raise RuntimeError(f"{tool} worker failed:\n{proc.stderr[-4000:]}")
    result = json.loads(out.read_text())
    result["training_seed"] = _training_seed(args, run)
    result["leiden_ari"] = leiden_ari(latent, data["labels"], args.seed)
    return result


def _training_seed(args, run: int) -> int:
    """Pair ``run`` trains both tools with seed ``seed + run`` (the data split keeps ``seed``):
    one seed says little about a held-out ELBO that moves by about 1 % between seeds."""
    return args.seed + run if args.vary_seed else args.seed


def leiden_ari(latent_file: Path, labels, seed: int) -> float:
    """Cell-type ARI of Leiden clusters on a latent (same procedure for both tools)."""
    import anndata as ad
    import numpy as np
    import scanpy as sc
    from sklearn.metrics import adjusted_rand_score

    a = ad.AnnData(obsm={"X": np.load(latent_file)}, obs={"ct": labels})
    sc.pp.neighbors(a, use_rep="X", n_neighbors=15, random_state=seed)
    sc.tl.leiden(a, resolution=1.0, random_state=seed, flavor="igraph", n_iterations=2)
    return float(adjusted_rand_score(a.obs["ct"], a.obs["leiden"]))


def report(runs: list[tuple[dict, dict]]) -> dict:
    ratios = [c["cells_per_s"] / s["cells_per_s"] for s, c in runs]
    elbo_diff = [
        100 * (c["heldout_elbo"] - s["heldout_elbo"]) / abs(s["heldout_elbo"]) for s, c in runs
    ]
    mean_elbo = {
        tool: statistics.fmean(r["heldout_elbo"] for r in side)
        for tool, side in (("scvi", [s for s, _ in runs]), ("cellvi", [c for _, c in runs]))
    }
    summary = {
        "speed_ratio_median": statistics.median(ratios),
        "speed_ratios": ratios,
        "elbo_rel_diff_percent": elbo_diff,
        "scvi_heldout_elbo_mean": mean_elbo["scvi"],
        "cellvi_heldout_elbo_mean": mean_elbo["cellvi"],
        "elbo_mean_rel_diff_percent": 100
        * (mean_elbo["cellvi"] - mean_elbo["scvi"])
        / abs(mean_elbo["scvi"]),
        "cellvi_leiden_ari": [c["leiden_ari"] for _, c in runs],
        "scvi_leiden_ari": [s["leiden_ari"] for s, _ in runs],
    }
    print(f"speed ratio (median over pairs): {summary['speed_ratio_median']:.2f}x")
    print(
        f"held-out ELBO (mean over pairs): scvi-tools {mean_elbo['scvi']:.2f}, cellvi "
        f"{mean_elbo['cellvi']:.2f} ({summary['elbo_mean_rel_diff_percent']:+.2f} %)"
    )
    return summary


def main(argv=None) -> int:
    args = parse_args(argv)
    warnings.filterwarnings("ignore")
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        data = prepare_data(args.data, args.n_top_genes, args.seed, workdir, args.max_cells)
        print(
            f"{len(data['labels'])} training cells, {data['n_genes']} genes, "
            f"{data['n_proteins']} proteins, {args.epochs} epochs",
            flush=True,
        )
        runs = []
        for pair in range(args.pairs):
            order = ("scvi", "cellvi") if pair % 2 == 0 else ("cellvi", "scvi")
            res = {tool: run_worker(tool, args, data, workdir, pair) for tool in order}
            runs.append((res["scvi"], res["cellvi"]))
            s, c = res["scvi"], res["cellvi"]
            print(
                f"pair {pair + 1} (seed {c['training_seed']}): cells/s scvi-tools {s['cells_per_s']:.0f}, cellvi "
                f"{c['cells_per_s']:.0f} (ratio {c['cells_per_s'] / s['cells_per_s']:.2f}x, "
                f"cellvi precision {c['precision']}); held-out ELBO scvi-tools "
                f"{s['heldout_elbo']:.2f} (its get_elbo {s['scvi_get_elbo']:.2f}), cellvi "
                f"{c['heldout_elbo']:.2f} ({100 * (c['heldout_elbo'] - s['heldout_elbo']) / abs(s['heldout_elbo']):+.2f} %); "
                f"Leiden ARI scvi-tools {s['leiden_ari']:.3f}, cellvi {c['leiden_ari']:.3f}",
                flush=True,
            )
        summary = report(runs)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(
        json.dumps(
            {"args": {k: str(v) for k, v in vars(args).items()}, "runs": runs, "summary": summary},
            indent=2,
        )  # fmt: skip
    )
    print(f"results: {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
