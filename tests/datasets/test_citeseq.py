from importlib.resources import files

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from cellvi.datasets import pbmc_citeseq

N_OBS = 2500
N_GENES = 698
PROTEINS = [
    "CD3", "CD4", "CD8a", "CD14", "CD15", "CD16", "CD56",
    "CD19", "CD25", "CD45RA", "CD45RO", "PD-1", "TIGIT", "CD127",
]  # fmt: skip
CELL_TYPES = {
    "B cells": 222,
    "CD14+ monocytes": 582,
    "CD16+ monocytes": 36,
    "CD4+ T cells": 907,
    "CD8+ T cells": 409,
    "Dendritic cells": 39,
    "NK cells": 305,
}
DATA_DIR = files("cellvi.datasets").joinpath("_data")


@pytest.fixture(scope="module")
def mdata():
    return pbmc_citeseq()


def test_shape_and_names(mdata):
    assert set(mdata.mod) == {"rna", "prot"}
    assert mdata["rna"].shape == (N_OBS, N_GENES)
    assert mdata["prot"].shape == (N_OBS, len(PROTEINS))
    assert mdata.n_obs == N_OBS
    assert mdata.var_names.is_unique and mdata.obs_names.is_unique
    assert mdata["rna"].obs_names.equals(mdata["prot"].obs_names)
    assert {"MS4A1", "LYZ", "NKG7", "CD8A"} <= set(mdata["rna"].var_names)
    assert not mdata["rna"].var_names.str.startswith("unresolved").any()


def test_protein_names(mdata):
    prot = mdata["prot"]
    assert prot.var["protein"].tolist() == PROTEINS
    assert prot.var_names.tolist() == [f"{p}_TotalSeqB" for p in PROTEINS]


@pytest.mark.parametrize("modality", ["rna", "prot"])
def test_raw_integer_counts(mdata, modality):
    X = mdata[modality].X
    assert sp.issparse(X) and X.format == "csr"
    assert X.dtype == np.float32 and X.indices.dtype == np.int32
    assert X.has_sorted_indices
    assert X.data.min() >= 0
    np.testing.assert_array_equal(X.data, np.round(X.data))
    assert X.data.max() > 100  # raw counts, not normalised


def test_protein_signal_matches_labels(mdata):
    # Real CITE-seq: CD19 ADT is high on B cells, CD14 on CD14+ monocytes.
    prot = pd.DataFrame(
        mdata["prot"].X.toarray(), columns=mdata["prot"].var["protein"], index=mdata.obs_names
    )
    means = prot.groupby(mdata.obs["cell_type"], observed=True).median()
    assert means["CD19"].idxmax() == "B cells"
    assert means["CD14"].idxmax() == "CD14+ monocytes"
    assert means.loc["CD4+ T cells", "CD3"] > 5 * means.loc["B cells", "CD3"]


def test_cell_type_labels(mdata):
    for obj in (mdata, mdata["rna"], mdata["prot"]):
        cell_type = obj.obs["cell_type"]
        assert isinstance(cell_type.dtype, pd.CategoricalDtype)
        assert cell_type.value_counts().to_dict() == CELL_TYPES


def test_uns_dataset(mdata):
    info = mdata.uns["dataset"]
    assert info["name"] == "pbmc_citeseq"
    for key in ("description", "source", "license", "attribution"):
        assert isinstance(info[key], str) and info[key]
    assert "CC BY 4.0" in info["license"]
    assert "10x Genomics" in info["attribution"]
    assert info["build"]["n_cells"] == N_OBS


def test_calls_are_independent():
    first = pbmc_citeseq()
    first["rna"].X.data[:] = -1
    first["prot"].X.data[:] = -1
    first.obs["cell_type"] = "mutated"
    first["prot"].var["protein"] = "mutated"
    first.uns["dataset"]["name"] = "mutated"

    second = pbmc_citeseq()
    assert second["rna"].X.data.min() >= 0
    assert second["prot"].X.data.min() >= 0
    assert second.obs["cell_type"].nunique() == len(CELL_TYPES)
    assert second["prot"].var["protein"].tolist() == PROTEINS
    assert second.uns["dataset"]["name"] == "pbmc_citeseq"


def test_file_size_and_notice():
    data_file = DATA_DIR.joinpath("pbmc_citeseq.h5mu")
    assert data_file.is_file()
    assert len(data_file.read_bytes()) < 2 * 1024 * 1024
    text = DATA_DIR.joinpath("NOTICE.md").read_text(encoding="utf-8")
    assert "pbmc_citeseq.h5mu" in text
    assert "PBMC 10k with TotalSeq-B" in text
