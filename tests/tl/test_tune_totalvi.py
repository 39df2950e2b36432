"""cv.tl.tune(model="totalvi"): trials on a MuData (and .obsm proteins) share the caller's data."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from tests.conftest import synthetic_citeseq

import cellvi as cv
from cellvi.tune._models import get_model

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")
SPACE = {"n_latent": ("int", 2, 6), "lr": ("float_log", 1e-3, 2e-2)}
FIXED = {"n_hidden": 16, "batch_size": 64}


@pytest.fixture
def citeseq():
    mdata, _ = synthetic_citeseq(n_cells=120, n_genes=20, n_proteins=6)
    cv.pp.setup_registry(mdata, batch_key="batch")
    return mdata


def test_tune_totalvi_on_mudata(citeseq):
    rna_x, prot_x = citeseq["rna"].X, citeseq["prot"].X
    before = (set(citeseq.uns), set(citeseq.obsm), set(citeseq["rna"].uns))
    cv.tl.tune(
        citeseq, model="totalvi", n_trials=2, max_epochs=2, search_space=SPACE,
        train_kwargs=FIXED, train_best=True,
    )  # fmt: skip
    res = citeseq.uns["totalvi_tune"]
    trials = res["trials"]
    assert list(trials["state"]) == ["COMPLETE"] * 2 and list(trials["epochs"]) == [2] * 2
    assert np.isfinite(trials["value"]).all() and (trials["value"] < 0).all()
    best = int(np.argmax(trials["value"]))
    assert res["best_params"]["n_latent"] == int(trials["param_n_latent"][best])
    assert res["model"] == "totalvi" and res["metric"] == "elbo_validation"
    # the trials shared the caller's matrices and wrote nothing into the caller's object
    assert citeseq["rna"].X is rna_x and citeseq["prot"].X is prot_x
    assert set(citeseq["rna"].uns) == before[2]
    assert set(citeseq.uns) - before[0] == {"totalvi_tune", "totalvi"}
    assert set(citeseq.obsm) - before[1] == {"X_totalvi"}
    # the retrained best model is the model a direct call gives
    payload = citeseq.uns["totalvi"]
    assert payload["params"]["n_latent"] == res["best_params"]["n_latent"]
    assert citeseq.obsm["X_totalvi"].shape == (120, res["best_params"]["n_latent"])
    direct = cv.tl.totalvi_train(
        citeseq, **FIXED, **res["best_params"], max_epochs=2, seed=0, copy=True
    )
    np.testing.assert_array_equal(direct.obsm["X_totalvi"], citeseq.obsm["X_totalvi"])
    # the trial's value is the final validation ELBO of a model trained with its values (trials
    # validate every epoch, which draws random numbers, so the retrained model differs)
    trial = cv.tl.totalvi_train(
        citeseq, **FIXED, **res["best_params"], max_epochs=2, seed=0, check_val_every_n_epoch=1,
        copy=True,
    )  # fmt: skip
    assert trial.uns["totalvi"]["metrics"]["elbo_validation"] == pytest.approx(
        trials["value"][best], rel=1e-6
    )


def test_tune_totalvi_obsm_proteins_and_default_space(citeseq):
    adata = citeseq["rna"].copy()
    adata.obsm["protein_expression"] = pd.DataFrame(
        citeseq["prot"].X, index=adata.obs_names, columns=citeseq["prot"].var_names
    )
    cv.pp.setup_registry(adata, batch_key="batch", protein_obsm_key="protein_expression")
    cv.tl.tune(
        adata, model="totalvi", n_trials=2, max_epochs=2, metric="reconstruction_validation",
        train_kwargs={"batch_size": 64, "n_hidden": 16},
    )  # fmt: skip
    res = adata.uns["totalvi_tune"]
    assert res["direction"] == "minimize" and list(res["trials"]["state"]) == ["COMPLETE"] * 2
    default = set(get_model("totalvi").default_search_space) - {"n_hidden"}
    assert set(res["best_params"]) == default
    assert "totalvi" not in adata.uns and "X_totalvi" not in adata.obsm


def test_tune_totalvi_refuses_integration_and_rna_only_data(citeseq, adata):
    with pytest.raises(ValueError, match="not available for model='totalvi'"):
        cv.tl.tune(citeseq, model="totalvi", metric="integration", n_trials=1, max_epochs=1)
    cv.pp.setup_registry(adata, layer="counts", batch_key="batch")
    with pytest.raises(ValueError, match="no protein counts"):
        cv.tl.tune(adata, model="totalvi", n_trials=1, max_epochs=1)
    assert "totalvi_tune" not in citeseq.uns and "totalvi_tune" not in adata.uns
