"""Rebuild the bundled ``pbmc_10x.h5ad`` from the shared multi-batch PBMC file.

Not imported by the package. Run from the repository root::

    python -m cellvi.datasets._make_pbmc_10x [SOURCE] [--n-top-genes 2000] [--output PATH]

``SOURCE`` defaults to ``../shared/data/pbmc_multibatch.h5ad``. Gene selection uses
``scanpy.pp.highly_variable_genes(flavor="seurat_v3")``, which needs ``scikit-misc``.

Only the 10x Genomics public batches (CC BY 4.0) are kept; all cells of those batches are
kept. Counts are written unchanged as an unsigned/signed integer CSR matrix with gzip and
shuffle filters. If the file exceeds the size budget, fewer genes are selected (in steps
of 200, not below ``--min-genes``).
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from importlib.metadata import version
from pathlib import Path

import anndata
import h5py
import numpy as np
import pandas as pd
import scanpy as sc
import scipy.sparse as sp

from cellvi.datasets._pbmc import PBMC_10X_BATCHES, PBMC_10X_FILENAME

DEFAULT_SOURCE = "../shared/data/pbmc_multibatch.h5ad"
DEFAULT_OUTPUT = Path(__file__).resolve().parent / "_data" / PBMC_10X_FILENAME
OBS_KEEP = ["batch", "cell_type", "cell_type_original", "chemistry", "has_curated_label"]
UNLABELLED_SOURCE_VALUE = "unlabeled"
UNKNOWN = "unknown"


def _resolve_source(source: str) -> Path:
    path = Path(source)
    if path.exists():
        return path.resolve()
    # Also try relative to the repository root (this file is src/cellvi/datasets/...).
    repo_root = Path(__file__).resolve().parents[3]
    alt = repo_root / source
    if alt.exists():
        return alt.resolve()
    raise FileNotFoundError(f"source file not found: {source}")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_10x_cells(source: Path) -> anndata.AnnData:
    """All cells of the 10x public batches, all genes, raw counts and cleaned obs."""
    full = anndata.read_h5ad(source)
    missing = set(PBMC_10X_BATCHES) - set(full.obs["batch"].astype(str))
    if missing:
        raise ValueError(f"batches missing from {source}: {sorted(missing)}")
    adata = full[full.obs["batch"].isin(PBMC_10X_BATCHES)].copy()
    del full

    X = sp.csr_matrix(adata.X)
    if X.data.size and (X.data.min() < 0 or not np.array_equal(X.data, np.round(X.data))):
        raise ValueError("expected raw non-negative integer counts in X")
    adata.X = X

    obs = adata.obs[OBS_KEEP].copy()
    obs["batch"] = pd.Categorical(obs["batch"].astype(str), categories=sorted(PBMC_10X_BATCHES))
    cell_type = obs["cell_type"].astype(str)
    cell_type = cell_type.where(cell_type != UNLABELLED_SOURCE_VALUE, UNKNOWN)
    obs["cell_type"] = pd.Categorical(cell_type, categories=sorted(set(cell_type)))
    for key in ("cell_type_original", "chemistry"):
        obs[key] = obs[key].astype(str).astype("category")
    obs["has_curated_label"] = obs["has_curated_label"].astype(bool)
    adata.obs = obs
    adata.var = pd.DataFrame(index=adata.var_names.astype(str))
    adata.uns = {}
    return adata


def select_genes(adata: anndata.AnnData, n_top_genes: int) -> np.ndarray:
    """Boolean mask (source gene order) of the top batch-aware seurat_v3 HVGs."""
    hvg = sc.pp.highly_variable_genes(
        adata, flavor="seurat_v3", batch_key="batch", n_top_genes=n_top_genes, inplace=False
    )
    mask = hvg["highly_variable"].to_numpy(dtype=bool)
    if mask.sum() != n_top_genes:
        raise RuntimeError(f"selected {mask.sum()} genes, expected {n_top_genes}")
    return mask


def to_storage(adata: anndata.AnnData, mask: np.ndarray, info: dict) -> anndata.AnnData:
    """Gene subset with counts in the smallest lossless integer dtype."""
    sub = adata[:, mask].copy()
    X = sp.csr_matrix(sub.X)
    max_count = int(X.data.max()) if X.data.size else 0
    dtype = np.uint16 if max_count <= np.iinfo(np.uint16).max else np.int32
    data = X.data.astype(dtype)
    if not np.array_equal(data.astype(np.float64), X.data.astype(np.float64)):
        raise RuntimeError("integer cast of the counts is not lossless")
    stored = sp.csr_matrix(
        (data, X.indices.astype(np.int32), X.indptr.astype(np.int64)), shape=X.shape
    )
    stored.sort_indices()
    sub.X = stored
    sub.uns["build"] = {**info, "n_top_genes": int(mask.sum()), "max_count": max_count}
    return sub


def write(adata: anndata.AnnData, output: Path) -> int:
    output.parent.mkdir(parents=True, exist_ok=True)
    # Scalars in uns cannot take filter options, so uns is written separately.
    uns = dict(adata.uns)
    body = adata.copy()
    body.uns = {}
    anndata.io.write_h5ad(output, body, compression="gzip", compression_opts=9, shuffle=True)
    with h5py.File(output, "a") as f:
        del f["uns"]
        anndata.io.write_elem(f, "uns", uns)
    return output.stat().st_size


def build(
    source: str = DEFAULT_SOURCE,
    output: Path = DEFAULT_OUTPUT,
    n_top_genes: int = 2000,
    min_genes: int = 1200,
    max_bytes: int = 4_000_000,
) -> anndata.AnnData:
    src = _resolve_source(source)
    adata = load_10x_cells(src)
    info = {
        "source_file": src.name,
        "source_sha256": _sha256(src),
        "hvg_flavor": "seurat_v3",
        "hvg_batch_key": "batch",
        "anndata_version": version("anndata"),
        "scanpy_version": version("scanpy"),
    }
    n = n_top_genes
    while True:
        stored = to_storage(adata, select_genes(adata, n), info)
        size = write(stored, Path(output))
        if size <= max_bytes or n - 200 < min_genes:
            break
        n -= 200
    if size > max_bytes:
        print(f"warning: {size} bytes exceeds the budget of {max_bytes}", file=sys.stderr)

    totals = np.asarray(stored.X.sum(axis=1)).ravel()
    print(f"wrote {output}")
    print(f"shape: {stored.n_obs} cells x {stored.n_vars} genes, {size / 1e6:.2f} MB")
    print(f"cells with zero counts in the kept genes: {int((totals == 0).sum())}")
    print(f"max count: {stored.uns['build']['max_count']}, dtype {stored.X.dtype}")
    print(stored.obs["batch"].value_counts().sort_index().to_string())
    print(pd.crosstab(stored.obs["batch"], stored.obs["cell_type"]).to_string())
    return stored


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", nargs="?", default=DEFAULT_SOURCE)
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--n-top-genes", type=int, default=2000)
    parser.add_argument("--min-genes", type=int, default=1200)
    parser.add_argument("--max-bytes", type=int, default=4_000_000)
    args = parser.parse_args(argv)
    build(args.source, args.output, args.n_top_genes, args.min_genes, args.max_bytes)


if __name__ == "__main__":
    main()
