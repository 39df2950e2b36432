"""Synthetic partly labelled data shared by the scANVI tests."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

import cellvi as cv

FAST = {"batch_size": 64, "seed": 0, "precision": "32-true", "n_hidden": 32}


def annotated(n_cells: int = 600, n_genes: int = 80, n_types: int = 5, seed: int = 0,
              fraction: float = 0.1) -> ad.AnnData:  # fmt: skip
    """Cell types that share most of their expression (a type adds a weak programme of its
    own), two batches; ``fraction`` of each type keeps its label (``obs["label"]``), the
    rest are ``"Unknown"``; the truth is in ``obs["cell_type"]``."""
    rng = np.random.default_rng(seed)
    types = rng.integers(0, n_types, n_cells)
    batches = rng.integers(0, 2, n_cells)
    shared = rng.gamma(1.0, 1.0, n_genes)
    own = rng.gamma(0.3, 1.0, size=(n_types, n_genes))
    batch_effect = rng.lognormal(0.0, 0.3, size=(2, n_genes))
    rates = (shared + 0.6 * own[types]) * batch_effect[batches]
    rates = rates / rates.sum(1, keepdims=True) * rng.lognormal(np.log(300), 0.4, n_cells)[:, None]
    counts = rng.negative_binomial(3, 3 / (3 + rates)).astype(np.float32)
    names = np.array([f"type{t}" for t in types])
    label = np.full(n_cells, "Unknown", dtype=object)
    for t in np.unique(names):
        cells = np.flatnonzero(names == t)
        keep = rng.choice(cells, max(1, round(fraction * len(cells))), replace=False)
        label[keep] = t
    obs = pd.DataFrame(
        {"cell_type": pd.Categorical(names), "label": pd.Categorical(label),
         "batch": pd.Categorical([f"b{b}" for b in batches])},
        index=[f"cell{i}" for i in range(n_cells)],
    )  # fmt: skip
    adata = ad.AnnData(sp.csr_matrix(counts), obs=obs)
    adata.var_names = [f"gene{j}" for j in range(n_genes)]
    adata.layers["counts"] = adata.X.copy()
    cv.pp.setup_registry(adata, layer="counts", batch_key="batch", labels_key="label")
    return adata


def unlabelled_accuracy(adata: ad.AnnData, key: str = "scanvi") -> float:
    unlabelled = (adata.obs["label"] == "Unknown").to_numpy()
    pred = adata.obs[f"{key}_prediction"].astype(str).to_numpy()
    return float((pred == adata.obs["cell_type"].astype(str).to_numpy())[unlabelled].mean())
