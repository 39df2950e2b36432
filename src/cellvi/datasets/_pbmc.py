"""Small bundled PBMC dataset built from 10x Genomics public data."""

from __future__ import annotations

from importlib.resources import as_file, files

import anndata
import numpy as np
import pandas as pd
import scipy.sparse as sp

__all__ = ["pbmc_10x"]

#: Name of the bundled file inside ``cellvi/datasets/_data``.
PBMC_10X_FILENAME = "pbmc_10x.h5ad"

#: The 10x Genomics batches of ``pbmc_multibatch.h5ad`` that may be redistributed.
PBMC_10X_BATCHES = ("pbmc4k_v2", "pbmc1k_v2", "pbmc1k_v3", "pbmc8k_5prime_sub1k")

PBMC_10X_DESCRIPTION = (
    "Peripheral blood mononuclear cells (PBMC) from four 10x Genomics public datasets "
    "(PBMC 4k v2, PBMC 1k v2, PBMC 1k v3 and a 1,000-cell subset of the PBMC 8k 5' dataset); "
    "raw UMI counts of the highly variable genes (scanpy flavor='seurat_v3', "
    "batch_key='batch'). Coarse cell-type labels exist only for pbmc4k_v2 (annotation by the "
    "SoupX authors); all other cells are 'unknown'."
)
PBMC_10X_SOURCE = (
    "10x Genomics public datasets (https://www.10xgenomics.com/datasets), as redistributed by "
    "the SoupX R package (constantAmateur/SoupX, pbmc4k_v2 with cell-type labels) and the "
    "scWGParis R package (baj12/scWGParis, the 1k and 5' sets)."
)
PBMC_10X_LICENSE = "CC BY 4.0 (Creative Commons Attribution 4.0 International)"
PBMC_10X_ATTRIBUTION = (
    "Data: 10x Genomics, licensed under CC BY 4.0. Modified for cellvi: cell subset of the "
    "four batches and highly variable gene subset; see cellvi/datasets/_data/NOTICE.md."
)


def _data_file():
    return files(__package__).joinpath("_data", PBMC_10X_FILENAME)


def pbmc_10x() -> anndata.AnnData:
    """Small multi-batch PBMC dataset of raw UMI counts (10x Genomics, CC BY 4.0).

    About 5,000 peripheral blood mononuclear cells from four 10x Genomics public datasets
    (PBMC 4k v2, PBMC 1k v2, PBMC 1k v3 and a 1,000-cell subset of the PBMC 8k 5' dataset),
    restricted to 2,000 highly variable genes selected on the raw counts with
    :func:`scanpy.pp.highly_variable_genes` (``flavor="seurat_v3"``, ``batch_key="batch"``).
    The file ships with cellvi, so no download is needed.

    Each call reads the bundled file and returns a new, independent object.

    Returns
    -------
    anndata.AnnData
        Cells by genes, gene symbols as ``var_names``, with

        - ``X``: raw integer UMI counts as a float32 CSR matrix (int32 indices);
        - ``layers["counts"]``: a separate copy of the same counts;
        - ``obs["batch"]``: the source dataset (categorical, 4 categories);
        - ``obs["cell_type"]``: coarse labels (B cell, CD4 T cell, CD8 T cell, Myeloid,
          NK cell) for ``pbmc4k_v2``; ``"unknown"`` for the unlabelled batches and for cells
          the annotation left unassigned;
        - ``obs["cell_type_original"]``: the labels as given by the source
          (``"unlabeled"`` for the batches without annotation, ``"?"`` for unassigned cells);
        - ``obs["chemistry"]`` and ``obs["has_curated_label"]``;
        - ``uns["dataset"]``: description, source, licence and attribution.

    Notes
    -----
    The counts are 10x Genomics public datasets, licensed under the Creative Commons
    Attribution 4.0 licence (CC BY 4.0) by 10x Genomics. They were obtained as redistributed
    by the SoupX (PBMC 4k v2, with the SoupX authors' cell-type annotation) and scWGParis
    (PBMC 1k v2, PBMC 1k v3, PBMC 8k 5' subset) R packages. cellvi ships a subset of cells
    and genes; the counts themselves are unchanged. Please credit 10x Genomics when using
    these data. See ``cellvi/datasets/_data/NOTICE.md``.

    Examples
    --------
    >>> import cellvi
    >>> adata = cellvi.datasets.pbmc_10x()
    >>> adata.obs["batch"].nunique()
    4
    >>> import scanpy as sc
    >>> sc.pp.normalize_total(adata)  # X is normalised, layers["counts"] keeps raw counts
    """
    with as_file(_data_file()) as path:
        stored = anndata.read_h5ad(path)

    counts = sp.csr_matrix(stored.X)
    counts = sp.csr_matrix(
        (
            counts.data.astype(np.float32),
            counts.indices.astype(np.int32),
            counts.indptr.astype(np.int32),
        ),
        shape=counts.shape,
    )
    counts.sort_indices()

    obs = stored.obs.copy()
    for key in ("batch", "cell_type", "cell_type_original", "chemistry"):
        if key in obs and not isinstance(obs[key].dtype, pd.CategoricalDtype):
            obs[key] = obs[key].astype("category")

    adata = anndata.AnnData(X=counts, obs=obs, var=stored.var.copy())
    adata.layers["counts"] = counts.copy()

    build = dict(stored.uns.get("build", {}))
    adata.uns["dataset"] = {
        "name": "pbmc_10x",
        "description": PBMC_10X_DESCRIPTION,
        "source": PBMC_10X_SOURCE,
        "license": PBMC_10X_LICENSE,
        "attribution": PBMC_10X_ATTRIBUTION,
        "batches": list(PBMC_10X_BATCHES),
        "build": build,
    }
    return adata
