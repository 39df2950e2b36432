"""``cv.tl.criticism``: NB, ZINB and Poisson models fitted to the same overdispersed counts."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

import cellvi as cv

THETA = 2.0  # overdispersion of the simulated counts: variance mu + mu^2 / 2
FIT = {"max_epochs": 40, "lr": 1e-2, "batch_size": 32, "n_hidden": 32, "n_latent": 5}
MODELS = ("nb", "zinb", "poisson")


def _overdispersed(n_cells=240, n_genes=60, seed=0) -> ad.AnnData:
    """Negative binomial counts from three cell types, two batches."""
    rng = np.random.default_rng(seed)
    types = rng.integers(0, 3, n_cells)
    programmes = rng.gamma(0.6, 1.0, (3, n_genes)) + 0.05
    depth = rng.lognormal(np.log(400), 0.3, n_cells)
    mu = programmes[types] / programmes[types].sum(1, keepdims=True) * depth[:, None]
    counts = rng.negative_binomial(THETA, THETA / (THETA + mu)).astype(np.float32)
    obs = pd.DataFrame(
        {
            "cell_type": pd.Categorical([f"type{t}" for t in types]),
            "batch": pd.Categorical([f"b{b}" for b in rng.integers(0, 2, n_cells)]),
        },
        index=[f"cell{i}" for i in range(n_cells)],
    )
    adata = ad.AnnData(sp.csr_matrix(counts), obs=obs)
    adata.var_names = [f"gene{j}" for j in range(n_genes)]
    adata.layers["counts"] = adata.X.copy()
    return adata


@pytest.fixture(scope="module")
def _fitted() -> ad.AnnData:
    torch.set_num_threads(1)
    cv.settings.progress_bar = False
    adata = _overdispersed()
    cv.pp.setup_registry(adata, layer="counts", batch_key="batch")
    for likelihood in MODELS:
        cv.tl.scvi_train(adata, key_added=likelihood, gene_likelihood=likelihood, **FIT)
    cv.tl.criticism(adata, key=list(MODELS), groupby="cell_type", n_samples=10)
    return adata


@pytest.fixture
def fitted(_fitted) -> ad.AnnData:
    return _fitted.copy()


def _summary(adata, key) -> dict:
    return adata.uns[f"{key}_criticism"]["summary"]


def test_a_well_specified_model_is_calibrated_and_poisson_is_not(fitted):
    nb, poisson = _summary(fitted, "nb"), _summary(fitted, "poisson")
    assert nb["calibration_error"] < 0.05
    assert poisson["calibration_error"] > 1.5 * nb["calibration_error"]
    # Poisson's predictive intervals are too narrow for overdispersed counts
    assert (
        poisson["calibration_bias"] < -0.03 and poisson["calibration_bias"] < nb["calibration_bias"]
    )
    assert poisson["gene_cv_mae"] > nb["gene_cv_mae"]
    # the means are modelled well by all three: fold changes agree
    for key in MODELS:
        assert _summary(fitted, key)["lfc_pearson"] > 0.9


def test_each_model_is_scored_on_its_own_draws(fitted):
    """scvi-tools 1.4.2 reports the first model's calibration for every model."""
    zinb, poisson = (fitted.uns[f"{k}_criticism"] for k in ("zinb", "poisson"))
    gap = np.abs(zinb["calibration"]["observed"] - poisson["calibration"]["observed"])
    assert gap.max() > 0.05
    zeros = ("gene", "predicted_gene_zero_fraction")
    assert np.abs(zinb[zeros[0]][zeros[1]] - poisson[zeros[0]][zeros[1]]).max() > 0.05
    # the same observed statistics for both
    np.testing.assert_array_equal(
        zinb["gene"]["observed_gene_cv"], poisson["gene"]["observed_gene_cv"]
    )
    # one model alone gets exactly what it got next to the others
    alone = cv.tl.criticism(fitted, key="poisson", groupby="cell_type", copy=True)
    np.testing.assert_array_equal(
        alone.uns["poisson_criticism"]["calibration"]["observed"],
        poisson["calibration"]["observed"],
    )


def test_dense_counts_in_another_layer_give_the_same_metrics(fitted):
    fitted.layers["dense"] = fitted.layers["counts"].toarray()
    dense = cv.tl.criticism(fitted, key="zinb", groupby="cell_type", layer="dense", copy=True)
    assert dense.uns["zinb_criticism"]["params"]["layer"] == "dense"
    for field in ("summary", "calibration", "gene"):
        for name, value in fitted.uns["zinb_criticism"][field].items():
            np.testing.assert_allclose(dense.uns["zinb_criticism"][field][name], value, rtol=1e-10)


def test_metrics_survive_h5ad_and_groups_default_to_leiden(fitted, tmp_path):
    out = cv.tl.criticism(fitted, key="nb", n_samples=3, copy=True)
    assert out.uns["nb_criticism"]["params"]["groupby"] == "leiden of X_nb"
    assert fitted.uns["nb_criticism"]["params"]["n_samples"] == 10  # copy left it alone
    out.write_h5ad(tmp_path / "c.h5ad")
    back = ad.read_h5ad(tmp_path / "c.h5ad").uns["nb_criticism"]
    result = out.uns["nb_criticism"]
    assert back["summary"] == pytest.approx(result["summary"], nan_ok=True)
    np.testing.assert_array_equal(back["de"]["lfc_predicted"], result["de"]["lfc_predicted"])
    assert list(back["de"]["groups"]) == list(result["de"]["groups"])


def test_bad_arguments_fail_before_writing(fitted):
    before = set(fitted.uns)
    with pytest.raises(KeyError, match="scvi_train"):
        cv.tl.criticism(fitted, key=["nb", "missing"])
    with pytest.raises(ValueError, match="twice"):
        cv.tl.criticism(fitted, key=["nb", "nb"])
    with pytest.raises(KeyError, match="cell_type"):
        cv.tl.criticism(fitted, key="nb", groupby="celltype")
    with pytest.raises(ValueError, match="n_samples"):
        cv.tl.criticism(fitted, key="nb", n_samples=0)
    with pytest.raises(KeyError, match="Layer 'nope'"):
        cv.tl.criticism(fitted, key="nb", layer="nope")
    assert set(fitted.uns) == before
