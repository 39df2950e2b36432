"""Benchmark worker: cellvi's scVI then scANVI on one prepared h5ad; writes JSON and .npz.

Started by ``bench_scanvi.py`` in a fresh interpreter (cellvi's environment, ``src/`` on
``PYTHONPATH``); not meant to be run by hand (but it can be, see ``--help``). Two tasks:

``annotate``
    ``cv.pp.setup_registry(adata, labels_key="label_given")``, ``cv.tl.scvi_train`` with
    cellvi's defaults but ``--scvi-epochs``, then ``cv.tl.scanvi_train`` from it with its
    defaults (10 epochs from scVI). Each training call is timed on its own. The .npz holds the
    scVI latent (``obsm["X_scvi"]``), the scANVI predictions and their confidence.
``query``
    Reference (fully labelled) scVI with ``encode_covariates=True``, scANVI from it, then
    ``cv.tl.map_query`` of the query cells (no labels column) onto both models. A failing
    ``map_query`` is recorded in the JSON (its exception text and traceback), not raised, so
    that the other mapping and the timings still come back.
"""

from __future__ import annotations

import time

_T_START = time.perf_counter()

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import traceback  # noqa: E402

from _worker_common import versions  # noqa: E402

LABELS_KEY = "label_given"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--task", choices=("annotate", "query"), default="annotate")
    p.add_argument("--data", help="annotate: the prepared h5ad")
    p.add_argument("--reference", help="query: the reference h5ad (fully labelled)")
    p.add_argument("--query", help="query: the query h5ad (no labels column)")
    p.add_argument("--out-json", required=True)
    p.add_argument("--out-npz", required=True)
    p.add_argument("--batch-key", default="", help="obs column of the batch ('' for none)")
    p.add_argument("--unlabeled-category", default="Unknown")
    p.add_argument("--scvi-epochs", type=int, default=100)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--precision", default="auto")
    args = p.parse_args()
    need = ("data",) if args.task == "annotate" else ("reference", "query")
    missing = [f"--{n}" for n in need if getattr(args, n) is None]
    if missing:
        p.error(f"--task {args.task} needs {', '.join(missing)}")
    return args


def _epochs_run(adata, key: str) -> int:
    return len(adata.uns[key]["history"].get("epoch", []))


def _model_info(adata, key: str) -> dict:
    uns = adata.uns[key]
    return {
        "precision": str(uns["params"]["precision"]),
        "native_kernels": str(uns["versions"].get("cellvi_native_kernels")),
        "max_epochs": int(uns["params"]["max_epochs"]),
        "epochs_run": _epochs_run(adata, key),
    }


def _as_str(values):
    import numpy as np

    return np.asarray([str(v) for v in values], dtype=str)


def annotate(args, cv) -> tuple[dict, dict]:
    import anndata as ad
    import numpy as np

    t_load = time.perf_counter()
    adata = ad.read_h5ad(args.data)
    cv.pp.setup_registry(adata, layer=None, batch_key=args.batch_key or None, labels_key=LABELS_KEY)
    t_ready = time.perf_counter()

    t0 = time.perf_counter()
    cv.tl.scvi_train(
        adata,
        max_epochs=args.scvi_epochs,
        seed=args.seed,
        accelerator="cpu",
        precision=args.precision,
    )
    scvi_seconds = time.perf_counter() - t0

    t1 = time.perf_counter()
    cv.tl.scanvi_train(
        adata,
        unlabeled_category=args.unlabeled_category,
        seed=args.seed,
        accelerator="cpu",
        precision=args.precision,
    )
    scanvi_seconds = time.perf_counter() - t1

    arrays = {
        "obs_names": _as_str(adata.obs_names),
        "scvi_latent": np.asarray(adata.obsm["X_scvi"], dtype=np.float32),
        "prediction": _as_str(adata.obs["scanvi_prediction"]),
        "confidence": np.asarray(adata.obs["scanvi_confidence"], dtype=np.float64),
    }
    scvi_info, scanvi_info = _model_info(adata, "scvi"), _model_info(adata, "scanvi")
    n = int(adata.n_obs)
    result = {
        "n_cells": n,
        "n_genes": int(adata.n_vars),
        "scvi_seconds": scvi_seconds,
        "scanvi_seconds": scanvi_seconds,
        "scvi_epochs_run": scvi_info["epochs_run"],
        "scanvi_epochs_run": scanvi_info["epochs_run"],
        "scvi_cells_per_s": n * scvi_info["epochs_run"] / scvi_seconds,
        "scanvi_cells_per_s": n * scanvi_info["epochs_run"] / scanvi_seconds,
        "scvi": scvi_info,
        "scanvi": scanvi_info,
        "precision": scanvi_info["precision"],
        "native_kernels": {
            "scvi": scvi_info["native_kernels"],
            "scanvi": scanvi_info["native_kernels"],
        },
        "load_and_setup_seconds": t_ready - t_load,
        "timed_calls": "cv.tl.scvi_train, cv.tl.scanvi_train (each includes computing its "
        "outputs for all cells and storing the model)",
    }
    return result, arrays


def query(args, cv) -> tuple[dict, dict]:
    import anndata as ad
    import numpy as np

    ref = ad.read_h5ad(args.reference)
    qry = ad.read_h5ad(args.query)
    cv.pp.setup_registry(
        ref, layer=None, batch_key=args.batch_key or "batch", labels_key=LABELS_KEY
    )

    t0 = time.perf_counter()
    cv.tl.scvi_train(
        ref,
        max_epochs=args.scvi_epochs,
        encode_covariates=True,
        seed=args.seed,
        accelerator="cpu",
        precision=args.precision,
    )
    scvi_seconds = time.perf_counter() - t0
    t1 = time.perf_counter()
    cv.tl.scanvi_train(ref, seed=args.seed, accelerator="cpu", precision=args.precision)
    scanvi_seconds = time.perf_counter() - t1

    result: dict = {
        "n_reference_cells": int(ref.n_obs),
        "n_query_cells": int(qry.n_obs),
        "n_genes": int(ref.n_vars),
        "reference_scvi_seconds": scvi_seconds,
        "reference_scanvi_seconds": scanvi_seconds,
        "reference_scvi": _model_info(ref, "scvi"),
        "reference_scanvi": _model_info(ref, "scanvi"),
        "map_query": {},
    }
    arrays = {
        "reference_obs_names": _as_str(ref.obs_names),
        "query_obs_names": _as_str(qry.obs_names),
        "reference_scvi_latent": np.asarray(ref.obsm["X_scvi"], dtype=np.float32),
        "reference_scanvi_prediction": _as_str(ref.obs["scanvi_prediction"]),
    }
    # the default (new batch columns only, scArches) and every weight fine-tuned
    runs = [(key, freeze) for freeze in (True, False) for key in ("scanvi", "scvi")]
    for key, freeze in runs:
        name = key if freeze else f"{key}_unfrozen"
        t = time.perf_counter()
        try:
            mapped = cv.tl.map_query(qry, reference=ref, key=key, freeze=freeze, copy=True)
        except Exception as exc:  # recorded for the report, exactly as raised
            result["map_query"][name] = {
                "status": "failed",
                "error": f"{type(exc).__name__}: {exc}",
                "traceback": traceback.format_exc(),
            }
            continue
        record = mapped.uns[key].get("query_mapping", {})
        result["map_query"][name] = {
            "status": "ok",
            "seconds": time.perf_counter() - t,
            "epochs_run": int(record.get("max_epochs", -1)),
            "new_batches": [str(b) for b in record.get("new_batches", [])],
        }
        arrays[f"query_{name}_latent"] = np.asarray(mapped.obsm[f"X_{key}"], dtype=np.float32)
        if key == "scanvi":
            arrays[f"query_{name}_prediction"] = _as_str(mapped.obs["scanvi_prediction"])
            arrays[f"query_{name}_confidence"] = np.asarray(
                mapped.obs["scanvi_confidence"], dtype=np.float64
            )
    return result, arrays


def main() -> None:
    args = parse_args()

    import torch

    torch.set_num_threads(args.threads)

    import numpy as np

    import cellvi as cv

    cv.settings.progress_bar = False
    cv.settings.verbosity = 1  # warnings and errors only
    t_imported = time.perf_counter()

    result, arrays = (annotate if args.task == "annotate" else query)(args, cv)
    np.savez(args.out_npz, **arrays)
    result.update(
        tool="cellvi",
        task=args.task,
        scvi_epochs_asked=args.scvi_epochs,
        torch_threads=torch.get_num_threads(),
        import_seconds=t_imported - _T_START,
        worker_seconds=time.perf_counter() - _T_START,
        cellvi_file=str(cv.__file__),
        versions=versions("cellvi", getattr(cv, "__version__", None)),
        python_executable=sys.executable,
    )
    with open(args.out_json, "w") as fh:
        json.dump(result, fh, indent=2)


if __name__ == "__main__":
    main()
