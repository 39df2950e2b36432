"""Small bundled CITE-seq dataset built from 10x Genomics public data."""

from __future__ import annotations

from importlib.resources import as_file, files

import anndata
import mudata
import numpy as np
import pandas as pd
import scipy.sparse as sp

__all__ = ["pbmc_citeseq"]

#: Name of the bundled file inside ``cellvi/datasets/_data``.
PBMC_CITESEQ_FILENAME = "pbmc_citeseq.h5mu"

PBMC_CITESEQ_DESCRIPTION = (
    "Peripheral blood mononuclear cells (PBMC) from the 10x Genomics 'PBMC 10k with TotalSeq-B "
    "proteins (v3)' dataset: a stratified random subset of the cells, raw UMI counts of the "
    "named genes of a 1,000-gene subset and of all 14 TotalSeq-B antibodies, with the BREM-SC "
    "authors' cell-type labels."
)
PBMC_CITESEQ_SOURCE = (
    "10x Genomics public dataset 'PBMC 10k with TotalSeq-B proteins, v3' "
    "(https://www.10xgenomics.com/datasets), as redistributed by the scMDC package "
    "(xianglin226/scMDC, counts) and the BREMSC R package (tarot0410/BREMSC, barcodes, "
    "protein names and cell-type labels, Wang et al. 2020, NAR)."
)
PBMC_CITESEQ_LICENSE = "CC BY 4.0 (Creative Commons Attribution 4.0 International)"
PBMC_CITESEQ_ATTRIBUTION = (
    "Data: 10x Genomics, licensed under CC BY 4.0. Modified for cellvi: cell and gene subset, "
    "short protein names added; see cellvi/datasets/_data/NOTICE.md."
)


def _data_file():
    return files(__package__).joinpath("_data", PBMC_CITESEQ_FILENAME)


def _float32_csr(matrix) -> sp.csr_matrix:
    counts = sp.csr_matrix(matrix)
    out = sp.csr_matrix(
        (
            counts.data.astype(np.float32),
            counts.indices.astype(np.int32),
            counts.indptr.astype(np.int32),
        ),
        shape=counts.shape,
    )
    out.sort_indices()
    return out


def _modality(stored: anndata.AnnData, obs: pd.DataFrame) -> anndata.AnnData:
    return anndata.AnnData(X=_float32_csr(stored.X), obs=obs.copy(), var=stored.var.copy())


def pbmc_citeseq() -> mudata.MuData:
    """Small CITE-seq PBMC dataset: RNA and 14 surface proteins (10x Genomics, CC BY 4.0).

    2,500 peripheral blood mononuclear cells of the 10x Genomics "PBMC 10k with TotalSeq-B
    proteins (v3)" dataset, measured with RNA and 14 antibody-derived tags (ADTs). The cells
    are a random subset stratified by cell type (the two rare types, dendritic cells and
    CD16+ monocytes, are kept whole). The genes are the 698 named genes of a 1,000-gene subset
    of the data. The file ships with cellvi, so no download is needed.

    Each call reads the bundled file and returns a new, independent object.

    Returns
    -------
    mudata.MuData
        2,500 cells, with the modalities

        - ``"rna"``: 2,500 x 698, gene symbols as ``var_names``;
        - ``"prot"``: 2,500 x 14, the 10x antibody names as ``var_names`` (``CD3_TotalSeqB``,
          ...; they differ from every gene symbol, so the MuData's ``var_names`` are unique)
          and the protein names in ``var["protein"]`` (``CD3``, ``CD4``, ``CD8a``, ``CD14``,
          ``CD15``, ``CD16``, ``CD56``, ``CD19``, ``CD25``, ``CD45RA``, ``CD45RO``, ``PD-1``,
          ``TIGIT``, ``CD127``).

        ``X`` of each modality holds raw integer UMI counts as a float32 CSR matrix (int32
        indices). ``obs["cell_type"]`` (categorical, 7 types: B cells, CD4+ T cells, CD8+ T
        cells, NK cells, CD14+ monocytes, CD16+ monocytes, Dendritic cells) is set on the
        MuData and on both modalities. ``uns["dataset"]`` holds the description, source,
        licence and attribution.

    Notes
    -----
    The counts are a 10x Genomics public dataset, licensed under the Creative Commons
    Attribution 4.0 licence (CC BY 4.0) by 10x Genomics. They were obtained as redistributed
    by the scMDC package (counts) and the BREMSC R package (barcodes, antibody names and the
    BREM-SC authors' cell-type labels; Wang et al. 2020, Nucleic Acids Research). cellvi ships
    a subset of cells and genes; the counts themselves are unchanged. Please credit 10x
    Genomics when using these data. See ``cellvi/datasets/_data/NOTICE.md``.

    Examples
    --------
    >>> import cellvi
    >>> mdata = cellvi.datasets.pbmc_citeseq()
    >>> mdata["prot"].n_vars
    14
    """
    # pull_on_update=False: obs is set explicitly below, and mudata's default would warn.
    with mudata.set_options(pull_on_update=False):
        with as_file(_data_file()) as path:
            stored = mudata.read_h5mu(path)
        cell_type = stored.mod["rna"].obs["cell_type"].astype(str)
        obs = pd.DataFrame(
            {"cell_type": pd.Categorical(cell_type, categories=sorted(set(cell_type)))},
            index=stored.mod["rna"].obs_names.copy(),
        )
        mods = {name: _modality(stored.mod[name], obs) for name in ("rna", "prot")}
        mdata = mudata.MuData(mods)
    mdata.obs = obs.copy()
    mdata.uns["dataset"] = {
        "name": "pbmc_citeseq",
        "description": PBMC_CITESEQ_DESCRIPTION,
        "source": PBMC_CITESEQ_SOURCE,
        "license": PBMC_CITESEQ_LICENSE,
        "attribution": PBMC_CITESEQ_ATTRIBUTION,
        "build": dict(stored.uns.get("build", {})),
    }
    return mdata
