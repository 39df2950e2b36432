"""differential_expression on a totalVI model: planted RNA and protein DE are found."""

from __future__ import annotations

import anndata as ad
import mudata as mu
import numpy as np
import pandas as pd
import pytest
import torch
from tests.tl.test_de import PLANTED, planted_counts

import cellvi as cv

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")
KEY = "rank_genes_groups_totalvi"


def planted_citeseq() -> mu.MuData:
    """The planted RNA of test_de plus 6 proteins: prot0, prot1 foreground only in g0, prot2
    foreground everywhere but g0, prot3..prot5 foreground in every group (not DE)."""
    rna = planted_counts()
    rng = np.random.default_rng(1)
    g0 = (rna.obs["group"] == "g0").to_numpy()
    fore = np.zeros((rna.n_obs, 6), dtype=bool)
    fore[:, 0], fore[:, 1], fore[:, 2], fore[:, 3:] = g0, g0, ~g0, True
    background = np.exp(rng.normal(2.0, 0.3, (1, 6)) + rng.normal(0, 0.2, (rna.n_obs, 1)))
    mean = background * np.where(fore, 10.0, 1.0)
    counts = rng.negative_binomial(10, 10 / (10 + mean)).astype(np.float32)
    prot = ad.AnnData(
        counts, obs=rna.obs.copy(), var=pd.DataFrame(index=[f"prot{j}" for j in range(6)])
    )
    return mu.MuData({"rna": rna, "prot": prot})


@pytest.fixture(scope="module")
def trained() -> mu.MuData:
    cv.settings.progress_bar = False
    torch.set_num_threads(1)
    mdata = planted_citeseq()
    cv.pp.setup_registry(mdata, batch_key="batch")
    cv.tl.totalvi_train(mdata, max_epochs=60, n_hidden=32, n_latent=8, batch_size=64, seed=0)
    return mdata


def test_planted_rna_and_protein_de_found(trained, tmp_path):
    mdata = trained
    cv.tl.differential_expression(
        mdata, groupby="group", groups="g0", key="totalvi", key_added=KEY, n_samples=1000
    )
    result = mdata.uns[KEY]
    assert result["params"]["protein_prefix"] == "protein:" and result["params"]["n_proteins"] == 6
    table = cv.tl.differential_expression_df(mdata, "g0", key=KEY)
    assert len(table) == 100 + 6 and table["names"].is_unique
    assert set(table["modality"]) == {"rna", "protein"}
    rna = table[table["modality"] == "rna"].set_index("names")
    prot = table[table["modality"] == "protein"].set_index("names")
    # genes: the planted ones rank first and are called at the FDR target
    top = set(rna.sort_values("proba_de", ascending=False).index[: len(PLANTED)])
    assert len(top & PLANTED) >= 13
    assert rna.loc["gene0", "logfoldchanges"] > 1 and rna.loc["gene10", "logfoldchanges"] < -1
    # proteins: prot0/prot1 up and prot2 down in g0, prot3..5 unchanged
    assert prot.loc["protein:prot0", "scores"] > 0.9 and prot.loc["protein:prot1", "scores"] > 0.9
    assert prot.loc["protein:prot2", "scores"] < -0.9
    assert prot.loc["protein:prot0", "logfoldchanges"] > 1.5
    assert prot.loc["protein:prot2", "logfoldchanges"] < -1.5
    planted = [f"protein:prot{j}" for j in range(3)]
    assert prot.loc[planted, "is_de_fdr"].all()
    assert prot.loc[planted, "proba_de"].min() > prot.drop(planted)["proba_de"].max()
    assert (prot.drop(planted)["logfoldchanges"].abs() < 0.5).all()
    # raw summaries of proteins come from the protein counts
    g0 = (mdata["prot"].obs["group"] == "g0").to_numpy()
    np.testing.assert_allclose(
        prot.loc["protein:prot0", "raw_mean1"], mdata["prot"].X[g0, 0].mean(), rtol=1e-5
    )
    # the results survive write_h5mu / read_h5mu
    mdata.write_h5mu(tmp_path / "de.h5mu")
    back = cv.tl.differential_expression_df(mu.read_h5mu(tmp_path / "de.h5mu"), "g0", key=KEY)
    pd.testing.assert_frame_equal(back, table, check_dtype=False)


def test_joint_groupby_column_all_groups_batch_correction(trained):
    mdata = trained.copy()
    options = {"key": "totalvi", "n_samples": 200, "seed": 3}
    cv.tl.differential_expression(mdata, groupby="group", key_added="by_rna", **options)
    # the same grouping as a joint column of mdata.obs gives the same results
    mdata.obs["joint"] = mdata["rna"].obs["group"].to_numpy()
    cv.tl.differential_expression(mdata, groupby="joint", key_added="by_joint", **options)
    a, b = (cv.tl.differential_expression_df(mdata, key=k) for k in ("by_rna", "by_joint"))
    pd.testing.assert_frame_equal(a, b)
    assert list(a["group"].cat.categories) == ["g0", "g1", "g2"] and len(a) == 3 * 106
    cv.tl.differential_expression(
        mdata, groupby="group", key_added="corrected", batch_correction=True, **options
    )
    c = cv.tl.differential_expression_df(mdata, key="corrected")
    assert np.isfinite(c[["scores", "logfoldchanges", "scale1"]].to_numpy()).all()
    assert not np.allclose(c["scale1"], a["scale1"])  # decoded in both batches, not its own
    assert mdata.uns["corrected"]["params"]["batch_correction"] is True


def test_bad_groupby_changes_nothing(trained):
    mdata = trained
    before = set(mdata.uns)
    with pytest.raises(KeyError, match="not a column"):
        cv.tl.differential_expression(mdata, groupby="nope", key="totalvi")
    assert set(mdata.uns) == before
