"""differential_expression: planted DE genes are found, scanpy reads the results, h5ad-safe."""

from __future__ import annotations

import anndata as ad
import matplotlib
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
import scipy.sparse as sp
import torch

import cellvi as cv

matplotlib.use("Agg")

UP, DOWN = range(0, 10), range(10, 15)
PLANTED = {f"gene{j}" for j in [*UP, *DOWN]}
KEY = "rank_genes_groups_scvi"


def planted_counts(n_cells=400, n_genes=100, seed=0) -> ad.AnnData:
    """Three groups on one baseline; group g0 has 10 genes 4x up and 5 genes 4x down."""
    rng = np.random.default_rng(seed)
    groups, batches = rng.integers(0, 3, n_cells), rng.integers(0, 2, n_cells)
    fold = np.ones((3, n_genes))
    fold[0, list(UP)], fold[0, list(DOWN)] = 4.0, 0.25
    rates = (rng.gamma(1.0, 1.0, n_genes) + 0.05) * fold[groups]
    rates *= rng.lognormal(0.0, 0.3, (2, n_genes))[batches]
    rates *= rng.lognormal(np.log(1000), 0.3, n_cells)[:, None] / rates.sum(1, keepdims=True)
    counts = rng.negative_binomial(10, 10 / (10 + rates)).astype(np.float32)
    obs = pd.DataFrame(
        {
            "group": pd.Categorical([f"g{g}" for g in groups]),
            "batch": pd.Categorical([f"b{b}" for b in batches]),
        },
        index=[f"c{i}" for i in range(n_cells)],
    )
    var = pd.DataFrame(index=[f"gene{j}" for j in range(n_genes)])
    return ad.AnnData(sp.csr_matrix(counts), obs=obs, var=var)


@pytest.fixture(scope="module")
def trained() -> ad.AnnData:
    cv.settings.progress_bar = False
    torch.set_num_threads(1)
    adata = planted_counts()
    cv.pp.setup_registry(adata, batch_key="batch")
    cv.tl.scvi_train(adata, max_epochs=100, n_hidden=32, batch_size=64, gene_likelihood="nb")
    return adata


@pytest.fixture
def adata_de(trained) -> ad.AnnData:
    adata = trained.copy()
    cv.tl.differential_expression(adata, groupby="group", n_samples=2000)
    return adata


def test_planted_genes_on_top_and_fdr_near_target(adata_de):
    df = cv.tl.differential_expression_df(adata_de, "g0")
    top = set(df.sort_values("proba_de", ascending=False)["names"][:15])
    assert top == PLANTED
    called = set(df.loc[df["is_de_fdr"], "names"])
    # measured: 16 called, all 15 planted among them
    assert len(called & PLANTED) >= 13
    assert len(called - PLANTED) / len(called) <= 0.15
    by_gene = df.set_index("names")
    up = by_gene.loc[[f"gene{j}" for j in UP]]
    down = by_gene.loc[[f"gene{j}" for j in DOWN]]
    assert (up["logfoldchanges"] > 0.7).all() and (down["logfoldchanges"] < -0.7).all()
    # scores rank up-regulated genes first, down-regulated last
    assert set(df["names"][:10]) == {f"gene{j}" for j in UP}
    assert set(df["names"][-5:]) == {f"gene{j}" for j in DOWN}
    # the other groups differ from the rest only through g0's planted genes
    for group in ("g1", "g2"):
        other = cv.tl.differential_expression_df(adata_de, group)
        assert set(other.loc[other["is_de_fdr"], "names"]) <= PLANTED


def test_scanpy_reads_the_results(adata_de):
    df = sc.get.rank_genes_groups_df(adata_de, "g0", key=KEY)
    assert list(df.columns[:5]) == ["names", "scores", "logfoldchanges", "pvals", "pvals_adj"]
    assert len(df) == adata_de.n_vars and set(df["names"][:10]) == {f"gene{j}" for j in UP}
    ours = cv.tl.differential_expression_df(adata_de, "g0")
    np.testing.assert_allclose(df["pvals_adj"], ours["pvals_adj"])
    assert ((ours["pvals_adj"] <= 0.05) == ours["is_de_fdr"]).all()
    np.testing.assert_allclose(ours["pvals"], 1 - ours["proba_de"])
    sc.pl.rank_genes_groups(adata_de, key=KEY, n_genes=5, show=False)
    sc.pl.rank_genes_groups_dotplot(adata_de, key=KEY, n_genes=3, dendrogram=False, show=False)
    assert "pct_nz_group" in df.columns


def test_same_results_after_h5ad_round_trip(adata_de, trained, tmp_path):
    path = tmp_path / "de.h5ad"
    trained.write_h5ad(path)
    back = ad.read_h5ad(path)
    cv.tl.differential_expression(back, groupby="group", n_samples=2000)
    pd.testing.assert_frame_equal(
        cv.tl.differential_expression_df(back), cv.tl.differential_expression_df(adata_de)
    )
    adata_de.write_h5ad(path)
    again = cv.tl.differential_expression_df(ad.read_h5ad(path))
    pd.testing.assert_frame_equal(again, cv.tl.differential_expression_df(adata_de))


def test_reference_group_vanilla_and_batch_correction(trained):
    out = cv.tl.differential_expression(
        trained, groupby="group", groups=["g0"], reference="g1", mode="vanilla",
        batch_correction=True, n_samples=500, copy=True, key_added="de",
    )  # fmt: skip
    assert "de" not in trained.uns
    df = cv.tl.differential_expression_df(out, key="de")
    assert list(df["group"].unique()) == ["g0"]
    assert out.uns["de"]["params"]["reference"] == "g1"
    top = set(df.sort_values("proba_de", ascending=False)["names"][:15])
    assert len(top & PLANTED) >= 13
    # vanilla: P(m1 > m2) is near 1 for up genes, near 0 for down genes
    by_gene = df.set_index("names")
    assert (by_gene.loc[[f"gene{j}" for j in UP], "bayes_factor"] > 2).all()
    assert (by_gene.loc[[f"gene{j}" for j in DOWN], "bayes_factor"] < -2).all()


def test_large_groups_are_subsampled(trained):
    """With fewer draws than cells, each group's encoder sees at most n_samples cells."""
    from cellvi.analysis.de_sampling import cells_for_draws

    rng = np.random.default_rng(0)
    many = cells_for_draws(np.arange(1000), 300, rng)
    assert len(many) == 300 and len(np.unique(many)) == 300
    few = cells_for_draws(np.arange(7), 30, rng)
    assert np.bincount(few).min() == 4 and np.bincount(few).max() == 5
    cv.tl.differential_expression(trained, groupby="group", n_samples=50, key_added="small")
    df = cv.tl.differential_expression_df(trained, "g0", key="small")
    assert len(set(df.sort_values("proba_de", ascending=False)["names"][:15]) & PLANTED) >= 10


def test_unused_categories_and_unassigned_cells_are_ignored(trained):
    adata = trained.copy()
    cv.tl.differential_expression(adata, groupby="group", n_samples=300, key_added="plain")
    adata.obs["padded"] = adata.obs["group"].cat.add_categories(["empty"])
    adata.obs["padded"] = adata.obs["padded"].cat.reorder_categories(["empty", "g0", "g1", "g2"])
    cv.tl.differential_expression(adata, groupby="padded", n_samples=300, key_added="padded")
    pd.testing.assert_frame_equal(
        cv.tl.differential_expression_df(adata, key="plain"),
        cv.tl.differential_expression_df(adata, key="padded"),
    )
    # cells without a group are in no group and in no reference
    adata.obs["partial"] = adata.obs["group"].astype(object)
    adata.obs.loc[adata.obs["group"] == "g2", "partial"] = np.nan
    cv.tl.differential_expression(adata, groupby="partial", n_samples=300, key_added="partial")
    result = adata.uns["partial"]
    assert list(result["names"].dtype.names) == ["g0", "g1"]
    df = cv.tl.differential_expression_df(adata, "g1", key="partial").set_index("names")
    g0 = adata[adata.obs["group"] == "g0"].X.mean(axis=0).A1
    np.testing.assert_allclose(df.loc[adata.var_names, "raw_mean2"], g0, rtol=1e-5)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"groupby": "nope"}, KeyError, "not a column"),
        ({"groupby": "group", "groups": ["g7"]}, ValueError, "have no cells"),
        ({"groupby": "group", "reference": "g9"}, ValueError, "reference"),
        ({"groupby": "group", "mode": "t-test"}, ValueError, "mode"),
        ({"groupby": "group", "delta": -1}, ValueError, "delta"),
        ({"groupby": "group", "fdr_target": 0}, ValueError, "fdr_target"),
        ({"groupby": "group", "n_samples": 1}, ValueError, "n_samples"),
        ({"groupby": "group", "key": "other"}, KeyError, "No trained model"),
        ({"groupby": "group", "groups": ["g0"], "reference": "g0"}, ValueError, "no group left"),
    ],
)
def test_bad_arguments_change_nothing(trained, kwargs, error, match):
    before = set(trained.uns)
    with pytest.raises(error, match=match):
        cv.tl.differential_expression(trained, **kwargs)
    assert set(trained.uns) == before


def test_getter_errors(trained):
    with pytest.raises(KeyError, match="run `cv.tl.differential_expression"):
        cv.tl.differential_expression_df(trained, key="missing")
