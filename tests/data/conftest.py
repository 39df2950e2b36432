"""Shared fixtures for the data tests: a small synthetic AnnData and an "unchanged" check."""

from __future__ import annotations

import copy
from collections.abc import Callable

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from scipy import sparse

from cellvi.data.registry import registries_equal

N_CELLS, N_VARS = 60, 30


def _make_adata(fmt=sparse.csr_matrix, dtype=np.float32, seed: int = 0) -> ad.AnnData:
    """60 cells × 30 genes of Poisson counts in X and layers['counts'], in three batches."""
    rng = np.random.default_rng(seed)
    # Gene 0 gets one extra count in every cell so that no cell is empty unless a test wants it.
    counts = rng.poisson(2.0, (N_CELLS, N_VARS)) + (np.arange(N_VARS) == 0)
    obs = pd.DataFrame(
        {
            "batch": np.repeat(["b0", "b1", "b2"], N_CELLS // 3),
            "cell_type": pd.Categorical(rng.choice(["T", "B", "NK"], N_CELLS)),
            "donor": rng.choice([3, 1, 2], N_CELLS),
            "pct_mito": rng.random(N_CELLS),
            "sf": rng.uniform(0.5, 2.0, N_CELLS),
        },
        index=[f"cell{i}" for i in range(N_CELLS)],
    )
    var = pd.DataFrame(index=[f"gene{j}" for j in range(N_VARS)])
    adata = ad.AnnData(fmt(counts.astype(dtype)), obs=obs, var=var)
    adata.layers["counts"] = fmt(counts.astype(dtype))
    return adata


def _dense(matrix) -> np.ndarray:
    return matrix.toarray() if sparse.issparse(matrix) else np.array(matrix)


def _snapshot(adata: ad.AnnData) -> dict:
    """A deep copy of everything setup_registry could change."""
    return {
        "X": (type(adata.X), adata.X.dtype, _dense(adata.X)),
        "layers": {key: (type(v), v.dtype, _dense(v)) for key, v in adata.layers.items()},
        "obs": adata.obs.copy(deep=True),
        "var": adata.var.copy(deep=True),
        "uns": copy.deepcopy(dict(adata.uns)),
        "is_view": adata.is_view,
        "shape": adata.shape,
    }


def _assert_unchanged(adata: ad.AnnData, before: dict) -> None:
    after = _snapshot(adata)
    assert set(before["layers"]) == set(after["layers"])
    pairs = [(before["X"], after["X"])]
    pairs += [(before["layers"][key], after["layers"][key]) for key in before["layers"]]
    for old, new in pairs:
        assert old[:2] == new[:2]  # same container type and dtype
        np.testing.assert_array_equal(old[2], new[2])
    pd.testing.assert_frame_equal(before["obs"], after["obs"])
    pd.testing.assert_frame_equal(before["var"], after["var"])
    assert registries_equal(before["uns"], after["uns"])
    assert (before["is_view"], before["shape"]) == (after["is_view"], after["shape"])


@pytest.fixture
def make_adata() -> Callable[..., ad.AnnData]:
    """Factory ``make_adata(fmt=sparse.csr_matrix, dtype=np.float32, seed=0)``."""
    return _make_adata


@pytest.fixture
def snapshot() -> Callable[[ad.AnnData], dict]:
    """Deep snapshot of an AnnData, to compare with ``assert_unchanged`` later."""
    return _snapshot


@pytest.fixture
def assert_unchanged() -> Callable[[ad.AnnData, dict], None]:
    """``assert_unchanged(adata, snapshot)``: nothing in adata differs from the snapshot."""
    return _assert_unchanged
