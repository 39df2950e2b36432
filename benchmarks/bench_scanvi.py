"""scANVI cell-type annotation: accuracy and training speed of cellvi against scvi-tools' SCANVI.

Semi-supervised annotation on real counts, on the CPU, each tool in its own fresh Python process
(its own interpreter and environment), on the same cells with the same given labels:

1. Each dataset (``--datasets``) is prepared once: ``pbmc_multibatch.h5ad`` restricted to its
   curated labels (6,024 cells, 2 batches, ``obs["cell_type"]``) and reduced to 2,000 highly
   variable genes as in ``bench_scvi_speed.py`` (scanpy ``flavor="seurat"``, per batch, on a
   log-normalised copy; the raw counts are kept); ``mouse_bladder_han18_top2000.h5ad`` (one
   batch, 16 types in ``obs["label"]``) with all its genes; ``pancreas_endocrinogenesis_2k_genes
   .h5ad`` (one batch, 8 clusters in ``obs["clusters"]``) with all its genes.
2. A seeded 10 % of the cells of each class keep their label (at least one cell per class,
   rounded to the nearest cell); every other cell gets ``"Unknown"``. The mask is written into
   the h5ad both workers read (``obs["label_given"]``).
3. Each worker trains scVI (the tool's defaults, ``--scvi-epochs``), then scANVI from it (the
   tool's defaults: 10 epochs), timing each training call, and returns the scVI latent, the
   scANVI predictions and their confidence.
4. Scored here, the same way for both tools, on the cells whose label was hidden: accuracy and
   macro F1 of the scANVI predictions, and of a 15-nearest-neighbour classifier fitted on the
   labelled cells of the tool's own scVI latent. Speed: cells x epochs run / training seconds.
5. ``--query`` (cellvi only; default on when ``pbmc_multibatch`` is in ``--datasets``): for each
   pair of ``--query-pairs`` (:data:`QUERY_PAIRS`), a fully labelled reference batch and a query
   batch of another technology without labels (``zheng17_sorted`` -> ``pbmc4k_v2`` of the curated
   PBMCs; the CITE-seq PBMC RNA of ``cite_pbmc_2batch.h5mu`` both ways), mapped with
   ``cv.tl.map_query``; the query's scANVI predictions against its true labels, next to kNN
   transfer on the mapped scVI latent; both again with ``freeze=False``.

Run it on an otherwise idle machine, and report the ratios rather than absolute cells/s. See
``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_scvi_speed import (  # noqa: E402
    DEFAULT_SCVI_VENV,
    REPO_ROOT,
    SCVI_TOOLS_VERSION,
    TOOLS,
    TORCH_VERSION,
    WorkerError,
    _tail,
    _venv_python,
    check_environments,
    fail,
    highly_variable,
)

BENCH_DIR = Path(__file__).resolve().parent
DEFAULT_DATA_DIR = REPO_ROOT.parent / "shared" / "data"
DEFAULT_OUTPUT = BENCH_DIR / "results" / "scanvi.json"
WORKERS = {
    "scvi": BENCH_DIR / "_worker_scanvi_scvi.py",
    "cellvi": BENCH_DIR / "_worker_scanvi_cellvi.py",
}
LABELS_KEY = "label_given"  # what the workers register: the given labels, "Unknown" elsewhere
UNLABELED = "Unknown"
N_NEIGHBORS = 15


@dataclasses.dataclass(frozen=True)
class Dataset:
    file: str
    labels_key: str
    batch_key: str | None  # None: one batch
    subset_key: str | None  # boolean obs column of the cells to keep; None: all cells
    hvg: bool  # pick --n-top-genes highly variable genes (else keep every gene)
    description: str


DATASETS = {
    "pbmc_multibatch": Dataset(
        file="pbmc_multibatch.h5ad",
        labels_key="cell_type",
        batch_key="batch",
        subset_key="has_curated_label",
        hvg=True,
        description="PBMCs with curated labels: zheng17_sorted + pbmc4k_v2 (2 batches, 6 "
        "coarse types), HVGs per batch",
    ),
    "mouse_bladder_han18": Dataset(
        file="mouse_bladder_han18_top2000.h5ad",
        labels_key="label",
        batch_key=None,
        subset_key=None,
        hvg=False,
        description="Han et al. 2018 mouse bladder (one batch, 16 types), all 2,003 genes",
    ),
    "pancreas_bastidas19": Dataset(
        file="pancreas_endocrinogenesis_2k_genes.h5ad",
        labels_key="clusters",
        batch_key=None,
        subset_key=None,
        hvg=False,
        description="Bastidas-Ponce et al. 2019 mouse pancreas, endocrinogenesis (one batch, 8 "
        "clusters along a differentiation), all 2,000 genes, spliced counts",
    ),
}


@dataclasses.dataclass(frozen=True)
class QueryPair:
    """A fully labelled reference batch and a query batch of another technology, in one file."""

    file: str
    modality: str | None  # the MuData modality with the RNA counts; None: an h5ad
    labels_key: str
    batch_key: str
    subset_key: str | None  # boolean obs column of the cells to keep; None: all cells
    drop_labels: tuple[str, ...]  # cells with these labels have no type: left out
    hvg: bool  # pick --n-top-genes highly variable genes on reference + query
    reference_batch: str
    query_batch: str
    description: str


_CITE_RNA = {"file": "cite_pbmc_2batch.h5mu", "modality": "rna", "labels_key": "cell_type",
             "batch_key": "batch", "subset_key": None, "drop_labels": ("unknown",), "hvg": False}  # fmt: skip
QUERY_PAIRS = {
    "pbmc_v1_to_v2": QueryPair(
        file="pbmc_multibatch.h5ad",
        modality=None,
        labels_key="cell_type",
        batch_key="batch",
        subset_key="has_curated_label",
        drop_labels=(),
        hvg=True,
        reference_batch="zheng17_sorted",
        query_batch="pbmc4k_v2",
        description="curated PBMCs: FACS-sorted 10x v1 reference, 10x v2 query",
    ),  # fmt: skip
    "cite_10k_to_inhouse": QueryPair(
        **_CITE_RNA,
        reference_batch="pbmc10k_protein_v3",
        query_batch="bremsc_inhouse",
        description="CITE-seq PBMC RNA (689 genes): 10x pbmc10k reference, in-house query",
    ),
    "cite_inhouse_to_10k": QueryPair(
        **_CITE_RNA,
        reference_batch="bremsc_inhouse",
        query_batch="pbmc10k_protein_v3",
        description="CITE-seq PBMC RNA (689 genes): the small in-house batch as reference",
    ),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--datasets",
        default=",".join(DATASETS),
        help=f"comma-separated datasets, from {sorted(DATASETS)}",
    )
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR, help="folder of the files")
    p.add_argument(
        "--query",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="run the query-mapping section (cellvi only); None: on when pbmc_multibatch is "
        "among --datasets",
    )
    p.add_argument(
        "--query-pairs",
        default=",".join(QUERY_PAIRS),
        help=f"comma-separated reference -> query pairs of the query section, from {sorted(QUERY_PAIRS)}",
    )
    p.add_argument(
        "--max-cells", type=int, default=None, help="seeded subsample of cells (quick checks)"
    )
    p.add_argument(
        "--query-max-cells",
        type=int,
        default=None,
        help="seeded subsample of the query section's reference + query cells (None: --max-cells)",
    )
    p.add_argument("--n-top-genes", type=int, default=2000, help="HVGs of pbmc_multibatch")
    p.add_argument(
        "--label-fraction", type=float, default=0.1, help="fraction of each class kept labelled"
    )
    p.add_argument("--scvi-epochs", type=int, default=100, help="scVI epochs (both tools)")
    p.add_argument("--pairs", type=int, default=1, help="runs of scvi-tools then cellvi; medians")
    p.add_argument("--threads", type=int, default=2, help="torch threads per worker")
    p.add_argument("--seed", type=int, default=0, help="seed of subsample, label mask, training")
    p.add_argument(
        "--cellvi-precision",
        default="auto",
        help="cellvi's precision argument (scvi-tools always runs at its default, float32)",
    )
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
        help=f"create the scvi-tools venv at --scvi-python first (torch=={TORCH_VERSION}, "
        f"scvi-tools=={SCVI_TOOLS_VERSION}), as bench_scvi_speed.py does",
    )
    p.add_argument("--base-python", default="python3", help="interpreter for --setup-scvi")
    p.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="keep the prepared h5ad files, worker outputs and logs here (default: a "
        "temporary directory, removed at the end)",
    )
    p.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="results JSON")
    p.add_argument(
        "--worker-timeout", type=float, default=None, help="seconds before a worker is killed"
    )
    args = p.parse_args(argv)

    if args.scvi_python is None:
        env = os.environ.get("SCVI_PYTHON")
        args.scvi_python = Path(env) if env else _venv_python(DEFAULT_SCVI_VENV)
    args.datasets = [d.strip() for d in args.datasets.split(",") if d.strip()]
    unknown = [d for d in args.datasets if d not in DATASETS]
    if unknown:
        p.error(f"--datasets takes a comma-separated list of {sorted(DATASETS)}, got {unknown}")
    if args.query is None:
        args.query = "pbmc_multibatch" in args.datasets
    args.query_pairs = [q.strip() for q in args.query_pairs.split(",") if q.strip()]
    unknown = [q for q in args.query_pairs if q not in QUERY_PAIRS]
    if unknown:
        p.error(
            f"--query-pairs takes a comma-separated list of {sorted(QUERY_PAIRS)}, got {unknown}"
        )
    if args.query and not args.query_pairs:
        p.error("--query with no --query-pairs: name at least one pair, or pass --no-query")
    if not args.datasets and not args.query:
        p.error("nothing to run: no --datasets and --no-query")
    if args.query_max_cells is None:
        args.query_max_cells = args.max_cells
    for name in ("scvi_epochs", "pairs", "threads", "n_top_genes"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be a positive integer")
    for name in ("max_cells", "query_max_cells"):
        if getattr(args, name) is not None and getattr(args, name) < 50:
            p.error(f"--{name.replace('_', '-')} must be at least 50")
    if not 0.0 < args.label_fraction < 1.0:
        p.error("--label-fraction must be in (0, 1)")
    # what bench_scvi_speed.check_environments reads
    args.order = ["scvi", "cellvi"] if args.datasets else ["cellvi"]
    return args


# ---------------------------------------------------------------------------------------------
# data


def _clean_counts(adata, keep_obs: dict):
    """``adata`` with CSR float32 counts, only the ``keep_obs`` columns and nothing else."""
    import numpy as np
    import pandas as pd
    import scipy.sparse as sp

    if not sp.issparse(adata.X):
        adata.X = sp.csr_matrix(adata.X)
    adata.X = adata.X.astype(np.float32)
    adata.obs = pd.DataFrame(keep_obs, index=adata.obs_names)
    adata.var = pd.DataFrame(index=adata.var_names)
    adata.uns = {}
    adata.obsm.clear()
    adata.layers.clear()
    return adata


def _drop_empty(adata):
    """Cells with no counts in the kept genes have no library size: left out for both tools."""
    import numpy as np

    totals = np.asarray(adata.X.sum(axis=1)).ravel()
    n_empty = int((totals <= 0).sum())
    return (adata[totals > 0].copy() if n_empty else adata), n_empty


def _subsample(adata, max_cells: int | None, seed: int):
    import numpy as np

    if max_cells is None or max_cells >= adata.n_obs:
        return adata.copy()
    rng = np.random.default_rng(seed)
    return adata[np.sort(rng.choice(adata.n_obs, size=max_cells, replace=False))].copy()


def label_mask(labels, fraction: float, seed: int) -> tuple:
    """Boolean mask of the cells that keep their label: ``fraction`` of each class (classes in
    sorted order, one generator), rounded to the nearest cell (halves up), at least one."""
    import numpy as np

    rng = np.random.default_rng(seed)
    labels = np.asarray(labels, dtype=str)
    given = np.zeros(labels.shape[0], dtype=bool)
    per_class = {}
    for c in sorted(set(labels.tolist())):
        idx = np.flatnonzero(labels == c)
        k = min(len(idx), max(1, int(np.floor(fraction * len(idx) + 0.5))))
        given[rng.choice(idx, size=k, replace=False)] = True
        per_class[c] = {"n_cells": int(len(idx)), "n_labelled": int(k)}
    return given, per_class


def prepare_dataset(name: str, args: argparse.Namespace, workdir: Path) -> dict:
    """Writes ``<name>.h5ad`` (counts, ``obs["batch"]`` if any, ``obs["label_given"]``);
    returns its description plus the true labels and the mask (kept out of the file)."""
    import anndata as ad
    import numpy as np
    import pandas as pd

    ds = DATASETS[name]
    t0 = time.perf_counter()
    path = args.data_dir / ds.file
    adata = ad.read_h5ad(path)
    n_file, g_file = adata.n_obs, adata.n_vars
    if ds.subset_key is not None:
        adata = adata[adata.obs[ds.subset_key].to_numpy().astype(bool)]
    n_subset = adata.n_obs
    adata = _subsample(adata, args.max_cells, args.seed)
    keep = {"label_true": adata.obs[ds.labels_key].astype(str).to_numpy()}
    if ds.batch_key is not None:
        keep["batch"] = pd.Categorical(adata.obs[ds.batch_key].astype(str).to_numpy())
    adata = _clean_counts(adata, keep)
    if ds.hvg and adata.n_vars > args.n_top_genes:
        adata = highly_variable(adata, args.n_top_genes, "batch" if ds.batch_key else None)
    adata, n_empty = _drop_empty(adata)

    truth = adata.obs.pop("label_true").to_numpy().astype(str)
    if UNLABELED in set(truth):
        fail(f"{name}: {UNLABELED!r} is a real label there; it cannot mark hidden labels")
    given, per_class = label_mask(truth, args.label_fraction, args.seed)
    classes = sorted(per_class)
    adata.obs[LABELS_KEY] = pd.Categorical(
        np.where(given, truth, UNLABELED), categories=[*classes, UNLABELED]
    )
    file = workdir / f"{name}.h5ad"
    adata.write_h5ad(file)
    info = {
        "name": name,
        "description": ds.description,
        "path": str(path.resolve()),
        "n_cells_in_file": int(n_file),
        "n_genes_in_file": int(g_file),
        "subset_key": ds.subset_key,
        "n_cells_in_subset": int(n_subset),
        "max_cells": args.max_cells,
        "n_cells_dropped_zero_counts": n_empty,
        "n_cells": int(adata.n_obs),
        "n_genes": int(adata.n_vars),
        "genes": (
            {"hvg": {"n_top_genes": int(adata.n_vars), "flavor": "seurat", "batch_key": "batch"}}
            if ds.hvg
            else "all genes of the file"
        ),
        "labels_key_in_file": ds.labels_key,
        "batch_key": "batch" if ds.batch_key else None,
        "cells_per_batch": (
            {str(k): int(v) for k, v in adata.obs["batch"].value_counts(sort=False).items()}
            if ds.batch_key
            else None
        ),
        "n_classes": len(classes),
        "n_labelled": int(given.sum()),
        "n_unlabelled": int((~given).sum()),
        "labelled_per_class": per_class,
        "prepare_seconds": time.perf_counter() - t0,
    }
    names = adata.obs_names.to_numpy().astype(str)
    return {"info": info, "file": file, "truth": truth, "given": given, "names": names}


def prepare_query(name: str, args: argparse.Namespace, workdir: Path) -> dict:
    """``<name>_reference.h5ad`` (every cell labelled) and ``<name>_query.h5ad`` (no labels
    column) of the query pair ``name``; query cells of a type the reference lacks are left out
    (they cannot be predicted right)."""
    import anndata as ad
    import numpy as np
    import pandas as pd

    pair = QUERY_PAIRS[name]
    t0 = time.perf_counter()
    path = args.data_dir / pair.file
    if pair.modality is None:
        adata = ad.read_h5ad(path)
    else:
        import mudata as md

        adata = md.read_h5mu(path)[pair.modality]
    batch = adata.obs[pair.batch_key].astype(str).to_numpy()
    labels = adata.obs[pair.labels_key].astype(str).to_numpy()
    keep = np.isin(batch, [pair.reference_batch, pair.query_batch]) & ~np.isin(labels, pair.drop_labels)  # fmt: skip
    if pair.subset_key is not None:
        keep &= adata.obs[pair.subset_key].to_numpy().astype(bool)
    reference_types = set(labels[keep & (batch == pair.reference_batch)].tolist())
    unknown_to_reference = keep & (batch == pair.query_batch) & ~np.isin(labels, list(reference_types))  # fmt: skip
    keep &= ~unknown_to_reference
    adata = _subsample(adata[keep], args.query_max_cells, args.seed)
    adata = _clean_counts(
        adata,
        {
            "batch": adata.obs[pair.batch_key].astype(str).to_numpy(),
            "label_true": adata.obs[pair.labels_key].astype(str).to_numpy(),
        },
    )
    adata.obs["batch"] = pd.Categorical(adata.obs["batch"])
    if pair.hvg and adata.n_vars > args.n_top_genes:
        adata = highly_variable(adata, args.n_top_genes, "batch")
    adata, n_empty = _drop_empty(adata)

    parts = {}
    for role, b in (("reference", pair.reference_batch), ("query", pair.query_batch)):
        part = adata[adata.obs["batch"].to_numpy() == b].copy()
        truth = part.obs.pop("label_true").to_numpy().astype(str)
        part.obs["batch"] = pd.Categorical([b] * part.n_obs)
        if role == "reference":  # fully labelled: the given labels are the true ones
            part.obs[LABELS_KEY] = pd.Categorical(truth, categories=sorted(set(truth)))
        file = workdir / f"{name}_{role}.h5ad"
        part.write_h5ad(file)
        names = part.obs_names.to_numpy().astype(str)
        parts[role] = {"file": file, "truth": truth, "names": names, "n_cells": int(part.n_obs)}
    info = {
        "pair": name,
        "description": pair.description,
        "path": str(path.resolve()),
        "modality": pair.modality,
        "reference_batch": pair.reference_batch,
        "query_batch": pair.query_batch,
        "max_cells": args.query_max_cells,
        "labels_left_out": list(pair.drop_labels),
        "n_query_cells_of_types_the_reference_lacks": int(unknown_to_reference.sum()),
        "n_cells_dropped_zero_counts": n_empty,
        "n_reference_cells": parts["reference"]["n_cells"],
        "n_query_cells": parts["query"]["n_cells"],
        "n_genes": int(adata.n_vars),
        "genes": (
            {
                "hvg": {
                    "n_top_genes": int(adata.n_vars),
                    "flavor": "seurat",
                    "batch_key": "batch",
                    "on": "reference + query cells",
                }
            }
            if pair.hvg
            else "all genes of the file"
        ),  # fmt: skip
        "reference_cells_per_class": _counts(parts["reference"]["truth"]),
        "query_cells_per_class": _counts(parts["query"]["truth"]),
        "query_labels": "hidden: the query h5ad has no labels column",
        "prepare_seconds": time.perf_counter() - t0,
    }
    return {"info": info, **parts}


def _counts(values) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in values:
        out[str(v)] = out.get(str(v), 0) + 1
    return dict(sorted(out.items()))


# ---------------------------------------------------------------------------------------------
# workers


def _worker_env(tool: str, threads: int) -> dict[str, str]:
    env = dict(os.environ)
    t = str(threads)
    env.update(OMP_NUM_THREADS=t, MKL_NUM_THREADS=t, OPENBLAS_NUM_THREADS=t, PYTHONUNBUFFERED="1")
    if tool == "cellvi":  # a source checkout works without an editable install
        src = str(REPO_ROOT / "src")
        env["PYTHONPATH"] = os.pathsep.join([src, *filter(None, [env.get("PYTHONPATH")])])
    else:
        env.pop("PYTHONPATH", None)  # keep the scvi-tools environment clean of cellvi's paths
    return env


def run_worker(tool: str, args, workdir: Path, tag: str, worker_args: list[str]) -> dict:
    """One worker process; returns its JSON with the .npz arrays under ``"arrays"``."""
    import numpy as np

    python = args.scvi_python if tool == "scvi" else args.cellvi_python
    out_json, out_npz = workdir / f"{tag}.json", workdir / f"{tag}.npz"
    for f in (out_json, out_npz):
        f.unlink(missing_ok=True)
    cmd = [str(python), str(WORKERS[tool]), "--out-json", str(out_json), "--out-npz",
           str(out_npz), "--threads", str(args.threads), "--seed", str(args.seed),
           "--scvi-epochs", str(args.scvi_epochs), *worker_args]  # fmt: skip
    if tool == "cellvi":
        cmd += ["--precision", args.cellvi_precision]
    label = TOOLS[tool]
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    print(f"[{tag}] {label} ...", flush=True)
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(
            cmd,
            cwd=workdir,  # Lightning / scvi-tools log folders land in the work directory
            env=_worker_env(tool, args.threads),
            capture_output=True,
            text=True,
            timeout=args.worker_timeout,
        )
    except subprocess.TimeoutExpired as exc:
        stderr = exc.stderr.decode() if isinstance(exc.stderr, bytes) else exc.stderr or ""
        raise WorkerError(label, f"timed out after {args.worker_timeout} s", stderr) from None
    wall = time.perf_counter() - t0
    (workdir / f"{tag}.stderr.log").write_text(proc.stderr)
    if proc.returncode != 0:
        raise WorkerError(label, f"exited with status {proc.returncode}", proc.stderr)
    if not (out_json.exists() and out_npz.exists()):
        raise WorkerError(label, "finished without writing its results", proc.stderr)
    result = json.loads(out_json.read_text())
    with np.load(out_npz) as z:
        arrays = {k: z[k] for k in z.files}
    result.update(
        tool=label,
        total_wall_seconds=wall,
        load_avg_before=list(load) if load is not None else None,
        arrays=arrays,
    )
    return result


# ---------------------------------------------------------------------------------------------
# scores


def classification_scores(truth, predicted) -> dict:
    from sklearn.metrics import accuracy_score, f1_score

    return {
        "accuracy": float(accuracy_score(truth, predicted)),
        "macro_f1": float(f1_score(truth, predicted, average="macro", zero_division=0)),
    }


def knn_transfer(train_x, train_y, test_x) -> tuple:
    """Labels of ``test_x`` from a 15-NN classifier on ``train_x`` (fewer neighbours only when
    there are fewer than 15 training cells, i.e. on tiny subsamples)."""
    from sklearn.neighbors import KNeighborsClassifier

    k = min(N_NEIGHBORS, len(train_y))
    knn = KNeighborsClassifier(n_neighbors=k).fit(train_x, train_y)
    return knn.predict(test_x), k


def score_annotation(result: dict, data: dict) -> dict:
    """Scores of one worker's run on the cells whose label was hidden."""
    import numpy as np

    arrays = result.pop("arrays")
    truth, given = data["truth"], data["given"]
    if result["n_cells"] != len(truth) or not np.array_equal(arrays["obs_names"], data["names"]):
        raise WorkerError(result["tool"], "returned cells other than the prepared ones", "")
    hidden = ~given
    latent = arrays["scvi_latent"]
    knn_pred, k = knn_transfer(latent[given], truth[given], latent[hidden])
    pred = arrays["prediction"]
    return {
        "scanvi": classification_scores(truth[hidden], pred[hidden]),
        "knn": {**classification_scores(truth[hidden], knn_pred), "n_neighbors": k},
        "scanvi_accuracy_on_labelled": float(np.mean(pred[given] == truth[given])),
        "scanvi_mean_confidence_unlabelled": float(np.mean(arrays["confidence"][hidden])),
        "n_scored": int(hidden.sum()),
    }


def summarise(runs: list[dict]) -> dict:
    out: dict = {"tools": {}}
    for label in TOOLS.values():
        mine = [r for r in runs if r["tool"] == label]
        if not mine:
            continue
        med = {}
        for field in ("scvi_cells_per_s", "scanvi_cells_per_s", "scvi_seconds", "scanvi_seconds"):
            med[field] = statistics.median(r[field] for r in mine)
        for part in ("scanvi", "knn"):
            for m in ("accuracy", "macro_f1"):
                med[f"{part}_{m}"] = statistics.median(r["scores"][part][m] for r in mine)
        med.update(
            n_runs=len(mine),
            scvi_epochs_run=sorted({r["scvi_epochs_run"] for r in mine}),
            scanvi_epochs_run=sorted({r["scanvi_epochs_run"] for r in mine}),
            scanvi_cells_per_s_all=[r["scanvi_cells_per_s"] for r in mine],
            scvi_cells_per_s_all=[r["scvi_cells_per_s"] for r in mine],
        )
        if label == "cellvi":
            med["precision"] = sorted({r["precision"] for r in mine})
            med["native_kernels"] = mine[-1]["native_kernels"]
        out["tools"][label] = med
    tools = out["tools"]
    if "cellvi" in tools and "scvi-tools" in tools:
        c, s = tools["cellvi"], tools["scvi-tools"]
        for part in ("scvi", "scanvi"):
            key = f"{part}_cells_per_s"
            out[f"{part}_speed_ratio_cellvi_over_scvi"] = c[key] / s[key]
            pairs = zip(c[f"{key}_all"], s[f"{key}_all"], strict=False)
            out[f"{part}_speed_ratio_per_pair"] = [a / b for a, b in pairs]
        for part in ("scanvi", "knn"):
            for m in ("accuracy", "macro_f1"):
                out[f"{part}_{m}_cellvi_minus_scvi"] = c[f"{part}_{m}"] - s[f"{part}_{m}"]
    return out


def score_query(result: dict, parts: dict) -> dict:
    import numpy as np

    arrays = result.pop("arrays")
    ref_y, q_y = parts["reference"]["truth"], parts["query"]["truth"]
    for role in ("reference", "query"):
        if not np.array_equal(arrays[f"{role}_obs_names"], parts[role]["names"]):
            raise WorkerError("cellvi", f"returned {role} cells other than the prepared ones", "")
    scores: dict = {}
    for suffix in ("", "_unfrozen"):  # map_query's default, and freeze=False
        if f"query_scanvi{suffix}_prediction" in arrays:
            predicted = arrays[f"query_scanvi{suffix}_prediction"]
            scores[f"scanvi_map_query{suffix}"] = classification_scores(q_y, predicted)
        if f"query_scvi{suffix}_latent" in arrays:
            latent = arrays[f"query_scvi{suffix}_latent"]
            pred, k = knn_transfer(arrays["reference_scvi_latent"], ref_y, latent)
            scores[f"knn_scvi_map_query{suffix}"] = {**classification_scores(q_y, pred), "n_neighbors": k}  # fmt: skip
    scores["reference_scanvi_accuracy"] = classification_scores(
        ref_y, arrays["reference_scanvi_prediction"]
    )["accuracy"]
    return scores


# ---------------------------------------------------------------------------------------------
# printing


def print_table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    rows = [header, *rows]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    for i, r in enumerate(rows):
        cells = [r[0].ljust(widths[0])] + [
            v.rjust(w) for v, w in zip(r[1:], widths[1:], strict=True)
        ]
        print(" | ".join(cells))
        if i == 0:
            print("-+-".join("-" * w for w in widths))


def print_dataset(name: str, info: dict, summary: dict, n_pairs: int) -> None:
    print(
        f"\n{name}: {info['n_cells']:,} cells x {info['n_genes']:,} genes, {info['n_classes']} "
        f"classes, {info['n_labelled']:,} labelled / {info['n_unlabelled']:,} scored "
        f"(medians over {n_pairs} pair(s))"
    )
    rows = []
    for label, t in summary["tools"].items():
        rows.append((
            label, f"{t['scanvi_accuracy']:.3f}", f"{t['scanvi_macro_f1']:.3f}",
            f"{t['knn_accuracy']:.3f}", f"{t['knn_macro_f1']:.3f}",
            f"{t['scvi_cells_per_s']:,.0f}", f"{t['scanvi_cells_per_s']:,.0f}",
            f"{'/'.join(map(str, t['scvi_epochs_run']))}+{'/'.join(map(str, t['scanvi_epochs_run']))}",
        ))  # fmt: skip
    print_table(
        ("tool", "scANVI acc", "scANVI F1", "kNN acc", "kNN F1", "scVI cells/s",
         "scANVI cells/s", "epochs"),
        rows,
    )  # fmt: skip
    if "scanvi_speed_ratio_cellvi_over_scvi" in summary:
        for part, title in (("scvi", "scVI"), ("scanvi", "scANVI")):
            per_pair = ", ".join(f"{r:.2f}x" for r in summary[f"{part}_speed_ratio_per_pair"])
            print(
                f"{title} speed ratio cellvi / scvi-tools: "
                f"{summary[f'{part}_speed_ratio_cellvi_over_scvi']:.2f}x (per pair: {per_pair})"
            )
        print(
            "cellvi - scvi-tools: scANVI accuracy "
            f"{summary['scanvi_accuracy_cellvi_minus_scvi']:+.3f}, macro F1 "
            f"{summary['scanvi_macro_f1_cellvi_minus_scvi']:+.3f}; kNN accuracy "
            f"{summary['knn_accuracy_cellvi_minus_scvi']:+.3f}, macro F1 "
            f"{summary['knn_macro_f1_cellvi_minus_scvi']:+.3f}"
        )


def print_query(info: dict, result: dict, scores: dict) -> None:
    print(
        f"\nquery mapping {info['pair']} (cellvi): reference {info['reference_batch']} "
        f"({info['n_reference_cells']:,} cells, fully labelled) -> query {info['query_batch']} "
        f"({info['n_query_cells']:,} cells, labels hidden), {info['n_genes']:,} genes"
    )
    rows = []
    names = (("scanvi_map_query", "scANVI map_query predictions", "scanvi"),
             ("knn_scvi_map_query", "15-NN on map_query scVI latent", "scvi"),
             ("scanvi_map_query_unfrozen", "scANVI, map_query(freeze=False)", "scanvi_unfrozen"),
             ("knn_scvi_map_query_unfrozen", "15-NN, scVI map_query(freeze=False)", "scvi_unfrozen"))  # fmt: skip
    for key, title, model in names:
        mq = result["map_query"].get(model, {})
        if key in scores:
            s = scores[key]
            rows.append((title, f"{s['accuracy']:.3f}", f"{s['macro_f1']:.3f}",
                         f"{mq['seconds']:.1f}", str(mq["epochs_run"])))  # fmt: skip
        else:
            rows.append((title, "failed", "failed", "-", "-"))
    print_table(("method", "accuracy", "macro F1", "map_query s", "epochs"), rows)
    print(
        f"reference training: scVI {result['reference_scvi_seconds']:.1f} s, scANVI "
        f"{result['reference_scanvi_seconds']:.1f} s; scANVI accuracy on the reference's own "
        f"cells {scores['reference_scanvi_accuracy']:.3f}"
    )
    for model, mq in result["map_query"].items():
        if mq.get("status") == "failed":
            print(f"map_query(key={model!r}) failed: {mq['error']}")


# ---------------------------------------------------------------------------------------------


def run_dataset(name: str, args, workdir: Path, record: dict) -> None:
    print(f"\npreparing {name} ...", flush=True)
    data = prepare_dataset(name, args, workdir)
    info = data["info"]
    entry = {"dataset": info, "runs": [], "summary": None, "error": None}
    record["datasets"][name] = entry
    print(
        f"{info['n_cells']:,} cells x {info['n_genes']:,} genes, {info['n_classes']} classes, "
        f"{info['n_labelled']:,} labelled; scVI {args.scvi_epochs} epochs, "
        f"{args.threads} threads",
        flush=True,
    )
    batch_args = ["--batch-key", "batch"] if info["batch_key"] else ["--batch-key", ""]
    worker_args = ["--data", str(data["file"]), *batch_args, "--unlabeled-category", UNLABELED]
    try:
        for pair in range(args.pairs):
            for tool in ("scvi", "cellvi"):  # each pair: scvi-tools, then cellvi
                tag = f"{name}_{tool}_{pair}"
                res = run_worker(tool, args, workdir, tag, worker_args)
                res["pair"] = pair
                res["scores"] = score_annotation(res, data)
                entry["runs"].append(res)
                s = res["scores"]
                print(
                    f"[{tag}] scVI {res['scvi_seconds']:.1f} s ({res['scvi_epochs_run']} ep), "
                    f"scANVI {res['scanvi_seconds']:.1f} s ({res['scanvi_epochs_run']} ep); "
                    f"scANVI acc {s['scanvi']['accuracy']:.3f}, kNN acc {s['knn']['accuracy']:.3f}",
                    flush=True,
                )
    except WorkerError as exc:
        entry["error"] = {"tool": exc.tool, "message": str(exc), "stderr_tail": _tail(exc.stderr)}
        print(f"\nerror: {exc}; last lines of its stderr:", file=sys.stderr)
        print(_tail(exc.stderr), file=sys.stderr)
    if entry["runs"]:
        entry["summary"] = summarise(entry["runs"])


def run_query(name: str, args, workdir: Path, record: dict) -> None:
    print(f"\npreparing the query-mapping data of {name} ...", flush=True)
    parts = prepare_query(name, args, workdir)
    entry: dict = {"dataset": parts["info"], "result": None, "scores": None, "error": None}
    record["query"][name] = entry
    worker_args = ["--task", "query", "--reference", str(parts["reference"]["file"]),
                   "--query", str(parts["query"]["file"]), "--batch-key", "batch"]  # fmt: skip
    try:
        res = run_worker("cellvi", args, workdir, f"query_{name}_cellvi", worker_args)
    except WorkerError as exc:
        entry["error"] = {"tool": exc.tool, "message": str(exc), "stderr_tail": _tail(exc.stderr)}
        print(f"\nerror: {exc}; last lines of its stderr:", file=sys.stderr)
        print(_tail(exc.stderr), file=sys.stderr)
        return
    try:
        entry["scores"] = score_query(res, parts)
    except WorkerError as exc:
        entry["error"] = {"tool": exc.tool, "message": str(exc)}
        print(f"\nerror: {exc}", file=sys.stderr)
        return
    entry["result"] = res
    failed = {k: v["error"] for k, v in res["map_query"].items() if v["status"] != "ok"}
    if failed:
        entry["error"] = {"tool": "cellvi", "message": "map_query failed", "map_query": failed}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    files = {DATASETS[d].file for d in args.datasets}
    if args.query:
        files |= {QUERY_PAIRS[q].file for q in args.query_pairs}
    missing = sorted(f for f in files if not (args.data_dir / f).exists())
    if missing:
        fail(
            f"dataset file(s) not found in {args.data_dir}: {', '.join(missing)}\n"
            "By default they are read from ../shared/data/ next to the repository; pass "
            "--data-dir PATH."
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
    workdir = Path(tempfile.mkdtemp(prefix="bench_scanvi_")) if temp else args.workdir
    workdir = workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    started = dt.datetime.now(dt.UTC)
    t_total = time.perf_counter()
    record: dict = {
        "benchmark": "scanvi",
        "status": None,
        "started_utc": started.isoformat(timespec="seconds"),
        "settings": {
            "datasets": args.datasets,
            "query": args.query,
            "query_pairs": args.query_pairs if args.query else [],
            "label_fraction": args.label_fraction,
            "label_mask": "per class, numpy default_rng(seed), classes in sorted order, "
            "round half up, at least 1 cell",
            "unlabeled_category": UNLABELED,
            "scvi_epochs": args.scvi_epochs,
            "scanvi_epochs": "each tool's default from a trained scVI model (10)",
            "other_training_settings": "each tool's defaults (train_size 0.9, batch 128, lr 1e-3)",
            "knn_neighbors": N_NEIGHBORS,
            "threads": args.threads,
            "seed": args.seed,
            "pairs": args.pairs,
            "pair_order": ["scvi-tools", "cellvi"],
            "max_cells": args.max_cells,
            "query_max_cells": args.query_max_cells,
            "n_top_genes": args.n_top_genes,
            "cellvi_precision": args.cellvi_precision,
        },
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
        "datasets": {},
        "query": {},
    }
    try:
        for name in args.datasets:
            run_dataset(name, args, workdir, record)
        if args.query:
            for pair in args.query_pairs:
                run_query(pair, args, workdir, record)
    finally:
        if temp:
            shutil.rmtree(workdir, ignore_errors=True)

    for name, entry in record["datasets"].items():
        if entry["summary"] is not None:
            print_dataset(name, entry["dataset"], entry["summary"], args.pairs)
    for q in record["query"].values():
        if q["result"] is not None:
            print_query(q["dataset"], q["result"], q["scores"])
    print("\n(cells/s: cells x epochs run / seconds of the training call; each tool at its default")
    print(" precision and settings; report the ratios, measured on an otherwise idle machine)")

    errors = [e["error"] for e in record["datasets"].values() if e["error"]]
    errors += [q["error"] for q in record["query"].values() if q["error"]]
    record["status"] = "failed" if errors else "ok"
    record["total_wall_seconds"] = time.perf_counter() - t_total
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(record, indent=2, default=_json_default) + "\n")
    print(f"\nresults written to {args.output.resolve()}")
    return 1 if errors else 0


def _json_default(value):
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


if __name__ == "__main__":
    sys.exit(main())
