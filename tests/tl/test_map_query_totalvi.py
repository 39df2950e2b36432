"""map_query on a totalVI reference: proteins aligned and masked, new batch rows trained."""

from __future__ import annotations

import anndata as ad
import mudata as mu
import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.neighbors import KNeighborsClassifier
from tests.conftest import synthetic_counts

import cellvi as cv
from cellvi.lifecycle.runtime import load_model, model_data
from cellvi.models._protein_prior import empirical_background_prior
from cellvi.tl._evaluate import evaluate_module

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")
KEY = "totalvi"
SMALL = {"n_hidden": 32, "n_latent": 6, "batch_size": 64, "seed": 0}
MAP = {"key": KEY, "max_epochs": 30, "batch_size": 32, "lr": 1e-2, "seed": 0}


def citeseq(n_cells: int = 540, n_proteins: int = 10, seed: int = 3) -> mu.MuData:
    """Three batches (b0, b1 reference; b2 query) of 3 cell types, each with its own genes
    and its own foreground proteins; the protein background shifts with the batch."""
    rna = synthetic_counts(n_cells, 40, n_batch=3, seed=seed)
    del rna.layers["counts"]
    rng = np.random.default_rng(seed + 1)
    types = rna.obs["cell_type"].cat.codes.to_numpy()
    batches = rna.obs["batch"].cat.codes.to_numpy()
    expressed = rng.random((3, n_proteins)) < 0.5
    expressed[:, 0], expressed[:, 1] = True, False
    background = np.exp(
        rng.normal(2.0, 0.3, (1, n_proteins)) + 0.3 * batches[:, None]
        + rng.normal(0, 0.2, (n_cells, 1))
    )  # fmt: skip
    mean = background * np.where(expressed[types], 8.0, 1.0)
    counts = rng.negative_binomial(10, 10 / (10 + mean)).astype(np.float32)
    var = pd.DataFrame(index=[f"prot{j}" for j in range(n_proteins)])
    return mu.MuData({"rna": rna, "prot": ad.AnnData(counts, obs=rna.obs.copy(), var=var)})


def split(mdata: mu.MuData, query_batch: str = "b2") -> tuple[mu.MuData, mu.MuData]:
    is_query = (mdata["rna"].obs["batch"] == query_batch).to_numpy()
    return mdata[~is_query].copy(), mdata[is_query].copy()


@pytest.fixture(scope="module")
def reference():
    cv.settings.progress_bar = False
    torch.set_num_threads(1)
    ref, query = split(citeseq())
    cv.pp.setup_registry(ref, batch_key="batch")
    cv.tl.totalvi_train(ref, max_epochs=60, **SMALL)
    return ref, query


def _types(data) -> np.ndarray:
    obs = data["rna"].obs if isinstance(data, mu.MuData) else data.obs
    return obs["cell_type"].astype(str).to_numpy()


def accuracy(ref, query) -> float:
    """kNN (k=15) label transfer from the reference's latent to the query's."""
    knn = KNeighborsClassifier(n_neighbors=15).fit(ref.obsm["X_totalvi"], _types(ref))
    return float((knn.predict(query.obsm["X_totalvi"]) == _types(query)).mean())


def test_query_lands_on_its_types_with_only_new_rows_trained(reference):
    ref, query = reference
    query = query.copy()
    cv.tl.map_query(query, reference=ref, **MAP)
    assert query.obsm["X_totalvi"].shape == (query.n_obs, 6)
    assert accuracy(ref, query) > 0.9  # chance 1/3
    payload = query.uns[KEY]
    assert payload["model"] == "totalvi"
    assert list(payload["registry"]["batch_categories"]) == ["b0", "b1", "b2"]
    assert list(payload["query_mapping"]["new_batches"]) == ["b2"]
    assert payload["query_mapping"]["protein_overlap"] == 1.0
    elbo = payload["history"]["elbo_train"]
    assert len(elbo) == 30 and elbo[-1] > elbo[0] + 1
    # measured per-cell ELBO: -167.4 with the new rows at their start, -156.5 after mapping
    assert cv.tl.totalvi_evaluate(query, key=KEY)["elbo"] > -162
    old = load_model(ref, KEY).module.state_dict()
    new = load_model(query, KEY).module.state_dict()
    moved = set()
    for name, value in old.items():
        if "num_batches_tracked" in name:
            continue
        assert torch.equal(new[name][: value.shape[0]], value), name  # reference rows frozen
        if new[name].shape != value.shape and not torch.equal(new[name][2], value.mean(0)):
            moved.add(name.split(".")[0])
    # new batch rows trained in the encoder, both decoders and the background prior
    assert {"z_encoder", "rna_decoder", "protein_decoder", "prior_back_mean"} <= moved
    np.testing.assert_array_equal(new["protein_batch_mask"].numpy(), np.ones((3, 10)))
    # the reference's cells embed the same with the query's model
    cv.tl.totalvi_embed(ref, model_from=query, key=KEY, key_added="via_query")
    np.testing.assert_allclose(ref.obsm["X_via_query"], ref.obsm["X_totalvi"], atol=1e-5)
    # the query's model is a normal totalVI payload
    cv.tl.totalvi_denoise(query, key=KEY)
    assert query["prot"].layers["totalvi_foreground_prob"].shape == (query.n_obs, 10)
    cv.tl.differential_expression(query, groupby="cell_type", groups="type0", key=KEY,
                                  n_samples=50)  # fmt: skip
    table = cv.tl.differential_expression_df(query, "type0")
    assert len(table) == 40 + 10


def test_missing_proteins_are_unmeasured_and_h5mu_round_trip(reference, tmp_path):
    ref, query = reference
    rng = np.random.default_rng(0)
    rna = query["rna"][:, rng.permutation(40)[:36]].copy()  # 4 genes missing, shuffled
    prot = query["prot"][:, ["prot7", "prot0", "prot3", "prot1", "prot5", "prot2"]].copy()
    prot.var_names = list(prot.var_names[:-1]) + ["extra"]  # prot2 renamed: not the reference's
    partial = mu.MuData({"rna": rna, "prot": prot})
    with pytest.raises(ValueError, match="copy=True"):
        cv.tl.map_query(partial, reference=ref, **MAP)
    assert KEY not in partial.uns and "X_totalvi" not in partial.obsm
    mapped = cv.tl.map_query(partial, reference=ref, copy=True, **MAP)
    assert list(mapped["rna"].var_names) == list(ref["rna"].var_names)
    assert list(mapped["prot"].var_names) == list(ref["prot"].var_names)
    missing = ["prot2", "prot4", "prot6", "prot8", "prot9"]
    assert mapped["prot"].var_names[mapped["prot"].var["cellvi_padded"]].tolist() == missing
    assert mapped["prot"][:, missing].X.sum() == 0
    np.testing.assert_array_equal(mapped["prot"][:, "prot7"].X, query["prot"][:, "prot7"].X)
    record = mapped.uns[KEY]["query_mapping"]
    assert list(record["missing_proteins"]) == missing and record["protein_overlap"] == 0.5
    mask = load_model(mapped, KEY).module.protein_batch_mask.numpy()
    np.testing.assert_array_equal(mask[:2], 1)  # the reference's batches keep theirs
    np.testing.assert_array_equal(mask[2], [1, 1, 0, 1, 0, 1, 0, 1, 0, 0])
    assert accuracy(ref, mapped) > 0.85
    path = tmp_path / "query.h5mu"
    mapped.write_h5mu(path)
    back = mu.read_h5mu(path)
    cv.tl.totalvi_embed(back, key=KEY, key_added="again")
    np.testing.assert_array_equal(back.obsm["X_again"], mapped.obsm["X_totalvi"])
    assert cv.tl.totalvi_evaluate(back, key=KEY) == cv.tl.totalvi_evaluate(mapped, key=KEY)


def test_masked_proteins_do_not_enter_the_likelihood(reference):
    ref, query = reference
    dropped = query.copy()
    dropped.mod["prot"] = query["prot"][:, [f"prot{j}" for j in range(8)]].copy()
    mapped = cv.tl.map_query(dropped, reference=ref, copy=True, **(MAP | {"max_epochs": 1}))
    model = load_model(mapped, KEY)
    data = model_data(mapped, model)
    masked = evaluate_module(model.module, data, seed=0)["reconstruction_error_protein"]
    model.module.protein_batch_mask.fill_(1.0)  # the padded columns as observed zero counts
    unmasked = evaluate_module(model.module, data, seed=0)["reconstruction_error_protein"]
    assert masked == cv.tl.totalvi_evaluate(mapped, key=KEY)["reconstruction_error_protein"]
    assert unmasked > masked + 1


def test_anndata_with_obsm_proteins(reference):
    ref_mdata, query_mdata = reference

    def as_anndata(mdata):
        adata = mdata["rna"].copy()
        adata.obsm["protein_expression"] = pd.DataFrame(
            mdata["prot"].X, index=adata.obs_names, columns=mdata["prot"].var_names
        )
        return adata

    ref, query = as_anndata(ref_mdata), as_anndata(query_mdata)
    cv.pp.setup_registry(ref, batch_key="batch", protein_obsm_key="protein_expression")
    cv.tl.totalvi_train(ref, max_epochs=40, **SMALL)
    with pytest.raises(TypeError, match="pass the query the same way"):
        cv.tl.map_query(query_mdata.copy(), reference=ref, **MAP)
    cv.tl.map_query(query, reference=ref, **MAP)  # in place: same genes and proteins
    assert accuracy(ref, query) > 0.9
    cv.tl.totalvi_denoise(query, key=KEY)
    denoised = query.obsm["totalvi_denoised_protein"]
    assert list(denoised.columns) == [f"prot{j}" for j in range(10)]
    unnamed = query.copy()
    unnamed.obsm["protein_expression"] = unnamed.obsm["protein_expression"].to_numpy()[:, :7]
    with pytest.raises(ValueError, match="unnamed array of 7 proteins"):
        cv.tl.map_query(unnamed, reference=ref, copy=True, **MAP)
    # fewer proteins in the DataFrame: a copy with the reference's columns
    query.obsm["protein_expression"] = query.obsm["protein_expression"].iloc[:, :7]
    mapped = cv.tl.map_query(query, reference=ref, copy=True, **(MAP | {"max_epochs": 2}))
    assert mapped.obsm["protein_expression"].shape == (query.n_obs, 10)
    assert mapped.obsm["protein_expression"].iloc[:, 7:].to_numpy().sum() == 0
    assert load_model(mapped, KEY).module.protein_batch_mask[2, 7:].sum() == 0


def test_errors_leave_the_query_unchanged(reference):
    ref, query = reference

    def refused(data, match, error=ValueError, **options):
        before = (set(data.uns), set(data.obsm), data["prot"].var_names.tolist())
        with pytest.raises(error, match=match):
            cv.tl.map_query(data, reference=ref, **(MAP | options))
        assert (set(data.uns), set(data.obsm), data["prot"].var_names.tolist()) == before

    few = mu.MuData({"rna": query["rna"][:, :10].copy(), "prot": query["prot"].copy()})
    refused(few, "only 10 of the reference's 40 genes", copy=True)
    renamed = query.copy()
    renamed["prot"].var_names = [f"CD{j}" for j in range(10)]
    refused(renamed, "none of the reference's 10 proteins", copy=True)
    twice = query.copy()
    twice["prot"].var_names = ["prot0", *[f"prot{j}" for j in range(9)]]
    refused(twice, "duplicated protein names", copy=True)
    genes_twice = query.copy()
    genes_twice["rna"].var_names = ["gene0", *[f"gene{j}" for j in range(39)]]
    refused(genes_twice, "duplicated gene names", copy=True)
    no_prot = query.copy()
    no_prot.mod["adt"] = no_prot.mod.pop("prot")
    before = set(no_prot.uns)
    with pytest.raises(KeyError, match="lacks the reference's modalities"):
        cv.tl.map_query(no_prot, reference=ref, **MAP)
    assert set(no_prot.uns) == before
    with pytest.raises(TypeError, match="pass the query as a MuData"):
        cv.tl.map_query(query["rna"].copy(), reference=ref, **MAP)
    # cells of a batch the reference knows cannot lose proteins the reference measured there
    known = ref[(ref["rna"].obs["batch"] == "b1").to_numpy()].copy()
    del known.uns[KEY]
    known.mod["prot"] = known["prot"][:, :8].copy()
    refused(known, "lacks proteins", copy=True)


def test_empirical_prior_adversarial_reference_and_fine_tuning():
    ref, query = split(citeseq(n_cells=360, n_proteins=12, seed=5))
    cv.pp.setup_registry(ref, batch_key="batch")
    cv.tl.totalvi_train(ref, max_epochs=10, adversarial_classifier=True, **SMALL)
    params = ref.uns[KEY]["params"]
    assert params["empirical_protein_background_prior"] and params["adversarial_classifier"]
    # a negligible learning rate: the new batch's prior is still its initial value
    untrained = cv.tl.map_query(query, reference=ref, copy=True, **(MAP | {"lr": 1e-12,
                                                                          "max_epochs": 1}))  # fmt: skip
    module = load_model(untrained, KEY).module
    means, stds = empirical_background_prior(
        query["prot"].X, np.zeros(query.n_obs, dtype=int), np.ones((1, 12), dtype=np.uint8),
        default_mean=3.0, default_std=1.0, seed=0,
    )  # fmt: skip
    np.testing.assert_allclose(module.prior_back_mean[2].detach().numpy(), means[0], atol=1e-4)
    np.testing.assert_allclose(
        module.prior_back_log_std[2].detach().exp().numpy(), stds[0], rtol=1e-4
    )
    tuned = cv.tl.map_query(
        query, reference=ref, copy=True, freeze=False, **(MAP | {"max_epochs": 3})
    )
    old = load_model(ref, KEY).module.state_dict()
    new = load_model(tuned, KEY).module.state_dict()
    assert not torch.equal(old["rna_decoder.body.linears.0.weight"],
                           new["rna_decoder.body.linears.0.weight"])  # fmt: skip
    assert not tuned.uns[KEY]["query_mapping"]["freeze"]


def test_query_of_a_known_batch_is_embedded_without_training(reference):
    ref, _ = reference
    in_b1 = (ref["rna"].obs["batch"] == "b1").to_numpy()
    known = ref[in_b1].copy()
    del known.uns[KEY], known.obsm["X_totalvi"]
    cv.tl.map_query(known, reference=ref, **MAP)
    np.testing.assert_allclose(known.obsm["X_totalvi"], ref.obsm["X_totalvi"][in_b1], atol=1e-5)
    assert len(known.uns[KEY]["query_mapping"]["new_batches"]) == 0
    assert len(known.uns[KEY]["history"]) == 0
