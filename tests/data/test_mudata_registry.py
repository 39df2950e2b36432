"""Registering RNA + protein data: MuData and AnnData with proteins in .obsm."""

from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from tests.conftest import synthetic_citeseq

import cellvi as cv

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


def test_mudata_registry_fields():
    mdata, _ = synthetic_citeseq(n_cells=60, n_proteins=5)
    cv.pp.setup_registry(mdata, batch_key="batch", labels_key="cell_type")
    registry = mdata.uns["cellvi_registry"]
    spec = registry["protein"]
    assert spec["source"] == "modality"
    assert list(spec["protein_names"]) == [f"prot{j}" for j in range(5)]
    assert spec["protein_batch_mask"].shape == (2, 5)
    assert spec["protein_batch_mask"].all()
    assert registry["n_vars"] == 40 and registry["n_batch"] == 2 and registry["n_labels"] == 3
    assert "cellvi_registry" not in mdata["rna"].uns  # the registry lives on the MuData


def test_unmeasured_protein_batch_is_masked():
    mdata, _ = synthetic_citeseq(n_cells=60, n_proteins=5)
    b1 = (mdata["prot"].obs["batch"] == "b1").to_numpy()
    mdata["prot"].X[np.ix_(b1, [2, 3])] = 0.0
    with pytest.warns(UserWarning, match="2 \\(batch, protein\\) pairs have only zero counts"):
        cv.pp.setup_registry(mdata, batch_key="batch")
    mask = mdata.uns["cellvi_registry"]["protein"]["protein_batch_mask"]
    np.testing.assert_array_equal(mask, [[1, 1, 1, 1, 1], [1, 1, 0, 0, 1]])


def test_obsm_dataframe_array_and_sparse_agree():
    mdata, _ = synthetic_citeseq(n_cells=60, n_proteins=5)
    counts = mdata["prot"].X
    names = list(mdata["prot"].var_names)
    registries = []
    for value, kwargs in (
        (pd.DataFrame(counts, index=mdata["rna"].obs_names, columns=names), {}),
        (counts, {"protein_names": names}),
        (sp.csr_matrix(counts), {"protein_names": names}),
    ):
        adata = mdata["rna"].copy()
        adata.obsm["protein_expression"] = value
        cv.pp.setup_registry(
            adata, batch_key="batch", protein_obsm_key="protein_expression", **kwargs
        )
        registries.append(adata.uns["cellvi_registry"]["protein"])
    for spec in registries:
        assert list(spec["protein_names"]) == names
        np.testing.assert_array_equal(
            spec["protein_batch_mask"], registries[0]["protein_batch_mask"]
        )


def _snapshot(mdata):
    return {
        "uns": set(mdata.uns),
        "rna_uns": set(mdata["rna"].uns),
        "prot": np.array(mdata["prot"].X, copy=True),
    }


def _assert_unchanged(mdata, before):
    assert set(mdata.uns) == before["uns"]
    assert set(mdata["rna"].uns) == before["rna_uns"]
    np.testing.assert_array_equal(mdata["prot"].X, before["prot"])


def test_clr_normalised_proteins_refused():
    mdata, _ = synthetic_citeseq(n_cells=60, n_proteins=5)
    x = np.log1p(mdata["prot"].X)
    mdata["prot"].X = x - x.mean(1, keepdims=True)  # CLR-like: negative, non-integer
    before = _snapshot(mdata)
    with pytest.raises(ValueError, match="negative"):
        cv.pp.setup_registry(mdata, batch_key="batch")
    _assert_unchanged(mdata, before)


def test_nan_proteins_refused():
    mdata, _ = synthetic_citeseq(n_cells=60, n_proteins=5)
    mdata["prot"].X[3, 1] = np.nan
    before = _snapshot(mdata)
    with pytest.raises(ValueError, match="NaN"):
        cv.pp.setup_registry(mdata, batch_key="batch")
    _assert_unchanged(mdata, before)


def test_mismatched_cells_refused():
    import mudata as mu

    mdata, _ = synthetic_citeseq(n_cells=60, n_proteins=5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        partial = mu.MuData({"rna": mdata["rna"], "prot": mdata["prot"][:50].copy()})
    with pytest.raises(ValueError, match="same cells in the same order"):
        cv.pp.setup_registry(partial, batch_key="batch")
    assert "cellvi_registry" not in partial.uns


def test_layer_options_checked():
    mdata, _ = synthetic_citeseq(n_cells=60, n_proteins=5)
    with pytest.raises(KeyError, match="no layer 'counts'"):
        cv.pp.setup_registry(mdata, protein_layer="counts")
    with pytest.raises(ValueError, match="differ"):
        cv.pp.setup_registry(mdata, layer="a", rna_layer="b")
    adata = ad.AnnData(np.ones((4, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="for RNA \\+ protein data"):
        cv.pp.setup_registry(adata, protein_layer="x")
    with pytest.raises(KeyError, match="adata.obsm has no 'prot'"):
        cv.pp.setup_registry(adata, protein_obsm_key="prot")
    assert "cellvi_registry" not in mdata.uns and "cellvi_registry" not in adata.uns
