"""One prepared GPU check: the same code on CUDA, results consistent with the CPU.

Run on a machine with a CUDA GPU (and a CUDA build of torch), from the repository root:

    python benchmarks/gpu_check.py [--epochs 20]

It trains scVI on the bundled 10x PBMC data on the GPU (``accelerator="auto"``), writes and
reads the h5ad, re-embeds and evaluates on the GPU and on the CPU, and checks: finite latent,
training ELBO improved, bit-identical weights after the round trip, GPU and CPU evaluation of the
same model within a small tolerance, normalised expression finite. It prints training cells/s on
the GPU and exits non-zero on any failed check.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import anndata as ad
import numpy as np
import torch

import cellvi as cv
from cellvi.tl import _common


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=20)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device visible to torch; nothing to check", file=sys.stderr)
        return 2
    print(f"torch {torch.__version__}, device {torch.cuda.get_device_name(0)}")
    cv.settings.progress_bar = False
    adata = cv.datasets.pbmc_10x()
    cv.pp.setup_registry(adata, layer="counts", batch_key="batch")
    start = time.perf_counter()
    cv.tl.scvi_train(adata, max_epochs=args.epochs, seed=0)
    seconds = time.perf_counter() - start
    n_train = adata.n_obs - len(adata.uns["scvi"]["validation_indices"])
    print(
        f"trained {args.epochs} epochs in {seconds:.1f}s: {n_train * args.epochs / seconds:,.0f}"
        f" cells/s, precision {adata.uns['scvi']['params']['precision']}"
    )
    failures = []
    history = adata.uns["scvi"]["history"]["elbo_train"]
    if not history[-1] > history[0]:
        failures.append(f"training ELBO did not improve: {history[0]} -> {history[-1]}")
    if not np.isfinite(adata.obsm["X_scvi"]).all():
        failures.append("non-finite latent")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "a.h5ad"
        adata.write_h5ad(path)
        back = ad.read_h5ad(path)
    w0 = _common.load_model(adata, "scvi").module.state_dict()
    w1 = _common.load_model(back, "scvi").module.state_dict()
    if any(not torch.equal(w0[k], w1[k]) for k in w0):
        failures.append("weights changed in the h5ad round trip")
    gpu = cv.tl.scvi_evaluate(back)
    cv.tl.scvi_embed(back, key_added="gpu")
    cv.settings.device = "cpu"
    try:
        cpu = cv.tl.scvi_evaluate(back)
        cv.tl.scvi_embed(back, key_added="cpu")
    finally:
        cv.settings.device = "auto"
    print(f"held-out-free ELBO, GPU {gpu['elbo']:.3f} vs CPU {cpu['elbo']:.3f}")
    if abs(gpu["elbo"] - cpu["elbo"]) > 1e-3 * abs(cpu["elbo"]):
        failures.append("GPU and CPU evaluation differ by more than 0.1 %")
    diff = np.abs(back.obsm["X_gpu"] - back.obsm["X_cpu"]).max()
    print(f"max |latent GPU - latent CPU| = {diff:.2e}")
    if diff > 1e-3:
        failures.append("GPU and CPU latents differ by more than 1e-3")
    cv.tl.scvi_normalize(back)
    if not np.isfinite(back.layers["scvi_normalized"]).all():
        failures.append("non-finite normalised expression")
    for failure in failures:
        print("FAILED:", failure)
    print("all GPU checks passed" if not failures else f"{len(failures)} GPU checks failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
