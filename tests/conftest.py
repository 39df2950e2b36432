"""Shared fixtures: small synthetic count data with a known structure."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

import cellvi as cv

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(autouse=True)
def _quiet_and_small():
    """Fast, quiet, reproducible tests on the 2-core CI machine."""
    cv.settings.progress_bar = False
    torch.set_num_threads(1)
    yield


def synthetic_counts(
    n_cells: int = 240,
    n_genes: int = 60,
    n_types: int = 3,
    n_batch: int = 2,
    seed: int = 0,
    sparse: bool = True,
) -> ad.AnnData:
    """Counts from a few cell types (distinct gene programmes) and batches (a gene-wise shift)."""
    rng = np.random.default_rng(seed)
    types = rng.integers(0, n_types, n_cells)
    batches = rng.integers(0, n_batch, n_cells)
    programmes = rng.gamma(0.6, 1.0, size=(n_types, n_genes))
    batch_effect = rng.lognormal(0.0, 0.4, size=(n_batch, n_genes))
    rates = programmes[types] * batch_effect[batches]
    rates = rates / rates.sum(1, keepdims=True) * rng.lognormal(np.log(400), 0.3, n_cells)[:, None]
    counts = rng.negative_binomial(5, 5 / (5 + rates)).astype(np.float32)
    obs = pd.DataFrame(
        {
            "cell_type": pd.Categorical([f"type{t}" for t in types]),
            "batch": pd.Categorical([f"b{b}" for b in batches]),
        },
        index=[f"cell{i}" for i in range(n_cells)],
    )
    var = pd.DataFrame(index=[f"gene{j}" for j in range(n_genes)])
    adata = ad.AnnData(sp.csr_matrix(counts) if sparse else counts, obs=obs, var=var)
    adata.layers["counts"] = adata.X.copy()
    return adata


@pytest.fixture
def adata() -> ad.AnnData:
    return synthetic_counts()
