"""``cv.tl.criticism`` on totalVI: RNA and protein checks, each from the model's own draws.

Next to a trained model sit two copies whose protein decoder is deliberately wrong (RNA
untouched): ``theta03`` has protein inverse dispersion 0.3 (far too many zeros and too much
spread), ``flipped`` mixes background and foreground with inverted probabilities. Their RNA
metrics must match the trained model's and their protein metrics must not.
"""

from __future__ import annotations

import copy

import mudata as mu
import numpy as np
import pandas as pd
import pytest
import torch
from tests.conftest import synthetic_citeseq

import cellvi as cv
from cellvi.lifecycle.payload import weights_to_array
from cellvi.lifecycle.runtime import load_model

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")
FIT = {"n_hidden": 64, "n_latent": 5, "max_epochs": 200, "seed": 0}
KEYS = ["totalvi", "theta03", "flipped"]
N_GENES, N_PROTEINS = 40, 10


def _flip(module) -> None:
    head = module.protein_decoder.background_logits
    head.weight.neg_()
    head.bias.neg_()


def _variant(data, name: str, change) -> None:
    data.uns[name] = copy.deepcopy(data.uns["totalvi"])
    module = load_model(data, name).module
    with torch.no_grad():
        change(module)
    data.uns[name]["weights"] = weights_to_array(module)


@pytest.fixture(scope="module")
def _checked():
    torch.set_num_threads(1)
    cv.settings.progress_bar = False
    mdata, _ = synthetic_citeseq(n_genes=N_GENES, n_proteins=N_PROTEINS)
    cv.pp.setup_registry(mdata, batch_key="batch")
    cv.tl.totalvi_train(mdata, **FIT)
    _variant(mdata, "theta03", lambda m: m.protein_log_theta.fill_(float(np.log(0.3))))
    _variant(mdata, "flipped", _flip)
    cv.tl.criticism(mdata, key=KEYS, groupby="cell_type", n_samples=10)
    return mdata


@pytest.fixture
def mdata(_checked):
    return _checked.copy()


def _summary(data, key: str, modality: str) -> dict:
    return data.uns[f"{key}_criticism"][modality]["summary"]


def test_both_modalities_are_checked_with_their_own_features(mdata):
    result = mdata.uns["totalvi_criticism"]
    assert list(result["params"]["modalities"]) == ["rna", "protein"]
    assert result["params"]["protein_likelihood"] == "nb_mixture"
    for modality, n in (("rna", N_GENES), ("protein", N_PROTEINS)):
        part = result[modality]
        assert part["gene"]["predicted_gene_cv"].shape == (n,)
        assert part["de"]["lfc_predicted"].shape == (3, n)
        assert part["cell"]["predicted_cv"].shape == (mdata.n_obs,)
    # measured on the trained model: protein 0.074, RNA 0.083; fold changes ~0.98 and ~0.99
    assert _summary(mdata, "totalvi", "protein")["calibration_error"] < 0.1
    assert _summary(mdata, "totalvi", "rna")["calibration_error"] < 0.12
    for modality in ("rna", "protein"):
        assert _summary(mdata, "totalvi", modality)["lfc_pearson"] > 0.9


def test_protein_metrics_come_from_each_models_protein_draws(mdata):
    good, wide, flipped = (_summary(mdata, k, "protein") for k in KEYS)
    # theta 0.3: many zeros the data does not have (measured 0.31 vs 0.03)
    assert wide["gene_zero_fraction_mae"] > 0.2 > 0.08 > good["gene_zero_fraction_mae"]
    assert wide["gene_cv_mae"] > 1.5 * good["gene_cv_mae"]
    # inverted mixing: foreground proteins of a group become background (measured -0.86), and
    # the intervals are far too narrow (calibration 0.115 against 0.074)
    assert flipped["lfc_pearson"] < 0.5
    assert flipped["calibration_bias"] < -0.08
    assert flipped["calibration_error"] > 1.4 * good["calibration_error"]
    # (theta 0.3 is not flagged by interval coverage here: measured 0.044 against 0.074, its
    # zero fractions and variances above are what give it away)
    # the RNA part of the three models is the same network: same RNA metrics
    rna = [_summary(mdata, k, "rna") for k in KEYS]
    for other in rna[1:]:
        assert other["calibration_error"] == pytest.approx(rna[0]["calibration_error"], abs=0.01)
        assert other["gene_cv_mae"] == pytest.approx(rna[0]["gene_cv_mae"], rel=0.1)
    # one model alone gets exactly what it got next to the others
    alone = cv.tl.criticism(mdata, key="flipped", groupby="cell_type", copy=True)
    np.testing.assert_array_equal(
        alone.uns["flipped_criticism"]["protein"]["calibration"]["observed"],
        mdata.uns["flipped_criticism"]["protein"]["calibration"]["observed"],
    )


def test_dense_rna_and_sparse_proteins_give_the_same_metrics(mdata):
    mdata["rna"].layers["dense"] = mdata["rna"].X.toarray()
    dense = cv.tl.criticism(mdata, key="totalvi", groupby="cell_type", layer="dense", copy=True)
    sparse_prot, _ = synthetic_citeseq(n_genes=N_GENES, n_proteins=N_PROTEINS, sparse_protein=True)
    sparse_prot.uns["totalvi"] = mdata.uns["totalvi"]
    cv.tl.criticism(sparse_prot, key="totalvi", groupby="cell_type")
    ref = mdata.uns["totalvi_criticism"]
    for other in (dense.uns["totalvi_criticism"], sparse_prot.uns["totalvi_criticism"]):
        for modality in ("rna", "protein"):
            for name, value in ref[modality]["summary"].items():
                assert other[modality]["summary"][name] == pytest.approx(value, nan_ok=True)


def test_anndata_with_obsm_proteins_same_as_mudata(mdata):
    adata = mdata["rna"].copy()
    adata.obsm["adt"] = pd.DataFrame(
        mdata["prot"].X, index=adata.obs_names, columns=mdata["prot"].var_names
    )
    cv.pp.setup_registry(adata, batch_key="batch", protein_obsm_key="adt")
    cv.tl.totalvi_train(adata, **FIT)
    cv.tl.criticism(adata, key="totalvi", groupby="cell_type")
    for modality in ("rna", "protein"):
        np.testing.assert_allclose(
            adata.uns["totalvi_criticism"][modality]["calibration"]["observed"],
            mdata.uns["totalvi_criticism"][modality]["calibration"]["observed"],
        )


def test_metrics_survive_h5mu_and_groups_default_to_leiden(mdata, tmp_path):
    out = cv.tl.criticism(mdata, key="totalvi", n_samples=3, copy=True)
    assert out.uns["totalvi_criticism"]["params"]["groupby"] == "leiden of X_totalvi"
    out.write_h5mu(tmp_path / "c.h5mu")
    back = mu.read_h5mu(tmp_path / "c.h5mu").uns["totalvi_criticism"]
    result = out.uns["totalvi_criticism"]
    assert list(back["params"]["modalities"]) == ["rna", "protein"]
    for modality in ("rna", "protein"):
        assert back[modality]["summary"] == pytest.approx(result[modality]["summary"], nan_ok=True)
        np.testing.assert_array_equal(
            back[modality]["de"]["lfc_predicted"], result[modality]["de"]["lfc_predicted"]
        )


def test_bad_arguments_fail_before_writing(mdata):
    before = {k: v for k, v in mdata.uns.items() if k.endswith("_criticism")}
    with pytest.raises(KeyError, match="No trained model at adata.uns\\['missing'\\]"):
        cv.tl.criticism(mdata, key=["totalvi", "missing"])
    with pytest.raises(KeyError, match="cell_type"):
        cv.tl.criticism(mdata, key="totalvi", groupby="celltype")
    with pytest.raises(KeyError, match="Layer 'nope'"):
        cv.tl.criticism(mdata, key="totalvi", layer="nope")
    after = {k: v for k, v in mdata.uns.items() if k.endswith("_criticism")}
    assert after.keys() == before.keys()
    assert all(after[k] is before[k] for k in before)


def test_proteins_missing_in_a_batch_are_flagged(mdata):
    _variant(mdata, "masked", lambda m: m.protein_batch_mask[0, 3].fill_(0.0))
    with pytest.warns(UserWarning, match="not measured in some batches"):
        cv.tl.criticism(mdata, key="masked", groupby="cell_type", n_samples=2)
    assert "protein" in mdata.uns["masked_criticism"]
