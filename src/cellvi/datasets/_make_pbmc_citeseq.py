"""Rebuild the bundled ``pbmc_citeseq.h5mu`` from the shared 10x PBMC 10k CITE-seq subset.

Not imported by the package. Run from the repository root::

    python -m cellvi.datasets._make_pbmc_citeseq [SOURCE] [--n-cells 2500] [--seed 0]

``SOURCE`` defaults to ``../shared/data/cite_pbmc10k_subset.h5mu`` (the 10x Genomics
"PBMC 10k with TotalSeq-B proteins, v3" data, CC BY 4.0). Cells are sampled at random,
stratified by cell type; types with fewer than ``--min-per-type`` cells are kept whole. Only
genes with a resolved symbol are kept (``var["name_resolved"]``), and every protein (10x
antibody names as ``var_names``, short names in ``var["protein"]``). Counts
are written unchanged as integer CSR matrices with gzip and shuffle filters.
"""

from __future__ import annotations

import argparse
import hashlib
from importlib.metadata import version
from pathlib import Path

import anndata
import h5py
import mudata
import numpy as np
import pandas as pd
import scipy.sparse as sp

from cellvi.datasets._citeseq import PBMC_CITESEQ_FILENAME

DEFAULT_SOURCE = "../shared/data/cite_pbmc10k_subset.h5mu"
DEFAULT_OUTPUT = Path(__file__).resolve().parent / "_data" / PBMC_CITESEQ_FILENAME
ANTIBODY_SUFFIX = "_TotalSeqB"


def _resolve_source(source: str) -> Path:
    path = Path(source)
    if path.exists():
        return path.resolve()
    # Also try relative to the repository root (this file is src/cellvi/datasets/...).
    alt = Path(__file__).resolve().parents[3] / source
    if alt.exists():
        return alt.resolve()
    raise FileNotFoundError(f"source file not found: {source}")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sample_cells(cell_type: pd.Series, n_cells: int, min_per_type: int, seed: int) -> np.ndarray:
    """Sorted positions of a cell-type-stratified random subset of ``n_cells`` cells."""
    rng = np.random.default_rng(seed)
    counts = cell_type.value_counts().sort_index()
    small = counts[counts < min_per_type]
    large = counts[counts >= min_per_type]
    budget = n_cells - int(small.sum())
    # Largest-remainder rounding so that the quota sums exactly to the budget.
    exact = large / large.sum() * budget
    quota = np.floor(exact).astype(int)
    quota[(exact - quota).sort_values(ascending=False).index[: budget - quota.sum()]] += 1
    quota = pd.concat([small, quota])
    codes = cell_type.to_numpy()
    picked = [
        rng.choice(np.flatnonzero(codes == name), size=int(k), replace=False)
        for name, k in quota.sort_index().items()
    ]
    return np.sort(np.concatenate(picked))


def _integer_csr(matrix) -> sp.csr_matrix:
    X = sp.csr_matrix(matrix)
    if X.data.size and (X.data.min() < 0 or not np.array_equal(X.data, np.round(X.data))):
        raise ValueError("expected raw non-negative integer counts")
    dtype = np.uint16 if (X.data.max() if X.data.size else 0) <= 65535 else np.int32
    out = sp.csr_matrix(
        (X.data.astype(dtype), X.indices.astype(np.int32), X.indptr.astype(np.int64)),
        shape=X.shape,
    )
    out.sort_indices()
    return out


def subset(source: mudata.MuData, cells: np.ndarray) -> dict[str, anndata.AnnData]:
    """RNA (named genes) and protein modalities of the chosen cells, counts as integers."""
    rna_src, prot_src = source.mod["rna"], source.mod["prot"]
    if not rna_src.obs_names.equals(prot_src.obs_names):
        raise ValueError("rna and prot modalities hold different cells")
    obs = pd.DataFrame(
        {"cell_type": rna_src.obs["cell_type"].astype(str).to_numpy()[cells]},
        index=rna_src.obs_names[cells].astype(str),
    )
    genes = rna_src.var["name_resolved"].to_numpy(dtype=bool)
    rna = anndata.AnnData(
        X=_integer_csr(rna_src.X[cells][:, genes]),
        obs=obs.copy(),
        var=pd.DataFrame(index=rna_src.var_names[genes].astype(str)),
    )
    antibody = prot_src.var_names.astype(str)
    prot = anndata.AnnData(
        X=_integer_csr(prot_src.X[cells]),
        obs=obs.copy(),
        # The 10x antibody names stay the var_names: short names such as CD4 or CD14 would
        # clash with gene symbols in the MuData's joint var_names.
        var=pd.DataFrame(
            {"protein": antibody.str.removesuffix(ANTIBODY_SUFFIX).to_numpy()},
            index=antibody,
        ),
    )
    return {"rna": rna, "prot": prot}


def write(mods: dict[str, anndata.AnnData], build_info: dict, output: Path) -> int:
    output.parent.mkdir(parents=True, exist_ok=True)
    with mudata.set_options(pull_on_update=False):
        combined = mudata.MuData(mods)
    combined.write_h5mu(output, compression="gzip", compression_opts=9, shuffle=True)
    # Scalars in uns cannot take filter options, so uns is written separately.
    with h5py.File(output, "a") as f:
        if "uns" in f:
            del f["uns"]
        anndata.io.write_elem(f, "uns", {"build": build_info})
    return output.stat().st_size


def build(
    source: str = DEFAULT_SOURCE,
    output: Path = DEFAULT_OUTPUT,
    n_cells: int = 2500,
    min_per_type: int = 100,
    seed: int = 0,
) -> dict[str, anndata.AnnData]:
    src = _resolve_source(source)
    full = mudata.read_h5mu(src)
    cells = sample_cells(full.mod["rna"].obs["cell_type"].astype(str), n_cells, min_per_type, seed)
    mods = subset(full, cells)
    info = {
        "source_file": src.name,
        "source_sha256": _sha256(src),
        "n_cells": int(n_cells),
        "min_per_type": int(min_per_type),
        "seed": int(seed),
        "genes": "var['name_resolved'] of the source",
        "anndata_version": version("anndata"),
        "mudata_version": version("mudata"),
    }
    size = write(mods, info, Path(output))
    print(f"wrote {output} ({size / 1e6:.2f} MB)")
    print(f"rna {mods['rna'].shape}, prot {mods['prot'].shape}")
    print(mods["rna"].obs["cell_type"].value_counts().to_string())
    return mods


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", nargs="?", default=DEFAULT_SOURCE)
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--n-cells", type=int, default=2500)
    parser.add_argument("--min-per-type", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    build(args.source, args.output, args.n_cells, args.min_per_type, args.seed)


if __name__ == "__main__":
    main()
