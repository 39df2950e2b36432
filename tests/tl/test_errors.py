"""User errors in ``cv.tl``: each names the problem and the fix, and leaves the AnnData unchanged."""

from __future__ import annotations

import dataclasses

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

import cellvi as cv
from cellvi.models.scvi import SCVIModule
from cellvi.train import NonFiniteLossError

TINY = {"max_epochs": 2, "n_hidden": 16, "batch_size": 64}


def _counts(n_cells: int = 200, n_genes: int = 40, seed: int = 0) -> ad.AnnData:
    """Negative-binomial counts of three cell types in two batches (raw in X and "counts")."""
    rng = np.random.default_rng(seed)
    types, batches = rng.integers(0, 3, n_cells), rng.integers(0, 2, n_cells)
    rates = rng.gamma(0.6, 1.0, (3, n_genes))[types] * rng.lognormal(0, 0.4, (2, n_genes))[batches]
    rates = rates / rates.sum(1, keepdims=True) * rng.lognormal(np.log(400), 0.3, (n_cells, 1))
    counts = rng.negative_binomial(5, 5 / (5 + rates)).astype(np.float32)
    obs = pd.DataFrame(
        {"batch": pd.Categorical([f"b{b}" for b in batches])},
        index=[f"cell{i}" for i in range(n_cells)],
    )
    adata = ad.AnnData(sp.csr_matrix(counts), obs=obs)
    adata.var_names = [f"gene{j}" for j in range(n_genes)]
    adata.layers["counts"] = adata.X.copy()
    return adata


@pytest.fixture
def registered() -> ad.AnnData:
    adata = _counts()
    cv.pp.setup_registry(adata, layer="counts", batch_key="batch")
    return adata


@pytest.fixture(scope="module")
def _trained() -> ad.AnnData:
    torch.set_num_threads(1)
    cv.settings.progress_bar = False
    adata = _counts()
    cv.pp.setup_registry(adata, layer="counts", batch_key="batch")
    cv.tl.scvi_train(adata, seed=0, **TINY)
    return adata


@pytest.fixture
def ref(_trained) -> ad.AnnData:
    return _trained.copy()


def _new_cells(ref: ad.AnnData, idx=slice(None), genes=None) -> ad.AnnData:
    """A fresh AnnData (no registry, no model) with cells of ``ref``, raw counts in "counts"."""
    sub = ref[idx] if genes is None else ref[idx, genes]
    new = ad.AnnData(sub.layers["counts"].copy(), obs=sub.obs.copy(), var=sub.var.copy())
    new.layers["counts"] = new.X.copy()
    return new


def _snapshot(adata: ad.AnnData) -> dict:
    X = adata.X.toarray() if sp.issparse(adata.X) else np.array(adata.X)
    return {
        "obsm": set(adata.obsm),
        "uns": set(adata.uns),
        "layers": set(adata.layers),
        "obs": list(adata.obs.columns),
        "X": X,
    }


def _assert_unchanged(adata: ad.AnnData, before: dict) -> None:
    after = _snapshot(adata)
    for field in ("obsm", "uns", "layers", "obs"):
        assert after[field] == before[field], field
    np.testing.assert_array_equal(after["X"], before["X"])


def _raises(error, fragments, func, adata, **kwargs) -> str:
    """Call ``func(adata, **kwargs)``; check the error, its message and that adata is unchanged."""
    before = _snapshot(adata)
    with pytest.raises(error) as info:
        func(adata, **kwargs)
    message = str(info.value.args[0])
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    _assert_unchanged(adata, before)
    return message


# -- scvi_train: prerequisites and arguments ---------------------------------------------------
def test_train_without_registry_names_setup_registry():
    adata = _counts()
    _raises(KeyError, ["no cellvi registry", "cv.pp.setup_registry("], cv.tl.scvi_train, adata)


BAD_NUMBERS = [
    ({"max_epochs": 0}, ["max_epochs must be a positive integer", "got 0", "None"]),
    ({"max_epochs": -1}, ["max_epochs must be a positive integer", "got -1"]),
    ({"batch_size": 1}, ["batch_size must be at least 2", "got 1"]),
    ({"lr": 0}, ["lr must be positive", "got 0"]),
    ({"lr": -1e-3}, ["lr must be positive"]),
    ({"train_size": 0}, ["train_size must be in (0, 1]", "got 0"]),
    ({"train_size": 1.5}, ["train_size must be in (0, 1]", "got 1.5"]),
    ({"n_epochs_kl_warmup": -1}, ["n_epochs_kl_warmup must be >= 0"]),
]


@pytest.mark.parametrize(
    ("kwargs", "fragments"),
    [pytest.param(k, f, id="{}={}".format(*next(iter(k.items())))) for k, f in BAD_NUMBERS],
)
def test_train_bad_numbers(registered, kwargs, fragments):
    _raises(ValueError, fragments, cv.tl.scvi_train, registered, **TINY | kwargs)


@pytest.mark.parametrize(
    ("option", "value", "valid"),
    [
        ("gene_likelihood", "zip", ["zinb", "nb", "poisson"]),
        ("dispersion", "gene-foo", ["gene", "gene-batch", "gene-label", "gene-cell"]),
        ("latent_distribution", "lognormal", ["normal", "ln"]),
        ("batch_representation", "x", ["one-hot", "embedding"]),
        ("use_batch_norm", "sometimes", ["both", "encoder", "decoder", "none"]),
        ("use_layer_norm", "always", ["both", "encoder", "decoder", "none"]),
    ],
)
def test_train_invalid_option_lists_valid_ones(registered, option, value, valid):
    _raises(
        ValueError,
        [f"{option}={value!r} is not valid", f"choose one of {valid}"],
        cv.tl.scvi_train,
        registered,
        **TINY | {option: value},
    )


@pytest.mark.parametrize("needs_validation", ["early_stopping", "reduce_lr_on_plateau"])
def test_train_validation_features_without_validation_cells(registered, needs_validation):
    _raises(
        ValueError,
        [needs_validation, "need validation cells", "train_size < 1"],
        cv.tl.scvi_train,
        registered,
        **TINY | {needs_validation: True, "train_size": 1.0},
    )


@pytest.mark.parametrize("good_steps", [0, 3], ids=["first-epoch", "second-epoch"])
def test_non_finite_loss_names_causes_and_writes_nothing(registered, monkeypatch, good_steps):
    original = SCVIModule.forward
    steps = {"n": 0}

    def forward(self, mb, kl_weight=1.0):
        terms = original(self, mb, kl_weight)
        if self.training:
            steps["n"] += 1
            if steps["n"] > good_steps:
                return dataclasses.replace(terms, loss=terms.loss * float("nan"))
        return terms

    monkeypatch.setattr(SCVIModule, "forward", forward)
    # 180 training cells in minibatches of 64: 3 steps per epoch
    message = _raises(
        NonFiniteLossError,
        ["NaN/inf", "raw counts", "library sizes", "learning rate", "lr=1e-4"],
        cv.tl.scvi_train,
        registered,
        **TINY | {"max_epochs": 3},
    )
    if good_steps == 0:
        assert "in epoch 1." in message and "No epoch had finished" in message
    else:
        assert "in epoch 2." in message and "end of epoch 1" in message
    assert "X_scvi" not in registered.obsm and "scvi" not in registered.uns


# -- using a model that is not there -----------------------------------------------------------
@pytest.mark.parametrize("func", [cv.tl.scvi_normalize, cv.tl.scvi_embed, cv.tl.scvi_evaluate])
def test_no_model_names_scvi_train(registered, func):
    _raises(
        KeyError,
        ["No trained model at adata.uns['scvi']", "cv.tl.scvi_train(adata, key_added='scvi')"],
        func,
        registered,
    )


def test_wrong_key_lists_models_found(ref):
    _raises(
        KeyError,
        ["adata.uns['other']", "key_added='other'", "Models found in .uns: ['scvi']"],
        cv.tl.scvi_embed,
        ref,
        key="other",
    )


@pytest.mark.parametrize("func", [cv.tl.scvi_normalize, cv.tl.scvi_embed, cv.tl.scvi_evaluate])
def test_payload_from_newer_cellvi_says_upgrade(ref, func):
    ref.uns["scvi"]["encoding-version"] = "2.0.0"
    _raises(ValueError, ["newer cellvi", "2.0.0", "Upgrade cellvi"], func, ref)


# -- new data for a trained model --------------------------------------------------------------
@pytest.mark.parametrize(
    ("genes", "fragments"),
    [
        (
            lambda names: names[::-1],
            ["same genes are in a different order", "adata = adata[:, var_names].copy()"],
        ),
        (
            lambda names: names[1:],
            ["1 genes are missing ('gene0')", "add the missing genes", "adata[:, var_names]"],
        ),
        (lambda names: names[:-1].insert(0, "gene39"), ["different order"]),
    ],
    ids=["reordered", "missing", "moved"],
)
def test_embed_new_data_with_other_genes(ref, genes, fragments):
    new = _new_cells(ref, genes=list(genes(ref.var_names)))
    before_ref = _snapshot(ref)
    _raises(
        ValueError, ["var_names do not match", *fragments], cv.tl.scvi_embed, new, model_from=ref
    )
    _assert_unchanged(ref, before_ref)


def test_embed_new_data_with_unknown_batch(ref):
    new = _new_cells(ref, idx=slice(0, 20))
    new.obs["batch"] = ["b9"] * 5 + list(new.obs["batch"].astype(str)[5:])
    _raises(
        ValueError,
        ["batch_key 'batch'", "not registered: 'b9'", "(5 cells)", "'b0', 'b1'", "Map those cells"],
        cv.tl.scvi_embed,
        new,
        model_from=ref,
    )


@pytest.mark.parametrize(
    ("kwargs", "fragments"),
    [
        ({"transform_batch": "nope"}, ["transform_batch ['nope']", "known batches: ['b0', 'b1']"]),
        ({"transform_batch": ["b0", "x"]}, ["transform_batch ['x']", "['b0', 'b1']"]),
        ({"n_samples": 0}, ["n_samples must be >= 1", "got 0"]),
        ({"library_size": "foo"}, ["library_size must be a number or 'latent'", "'foo'"]),
    ],
    ids=["batch", "batch-list", "n_samples", "library_size"],
)
def test_normalize_bad_arguments(ref, kwargs, fragments):
    _raises(ValueError, fragments, cv.tl.scvi_normalize, ref, **kwargs)


# -- the model's registry travels with it ------------------------------------------------------
@pytest.mark.parametrize("one_batch_as_str", [False, True])
def test_embed_subset_without_setup_matches_reference(ref, one_batch_as_str):
    idx = np.flatnonzero(ref.obs["batch"] == "b1") if one_batch_as_str else np.arange(0, 200, 3)
    new = _new_cells(ref, idx=idx)
    if one_batch_as_str:  # categories are matched by name, not by code
        new.obs["batch"] = new.obs["batch"].astype(str).to_numpy()
    assert "cellvi_registry" not in new.uns
    cv.tl.scvi_embed(new, model_from=ref)
    np.testing.assert_allclose(new.obsm["X_scvi"], ref.obsm["X_scvi"][idx], rtol=1e-5, atol=1e-6)
    assert set(new.uns) == set()


# -- found by these tests and fixed ----------------------------------------------------------
@pytest.mark.parametrize("library_size", [-5.0, 0, float("nan")])
def test_normalize_rejects_non_positive_library_size(ref, library_size):
    _raises(
        ValueError,
        ["library_size", "positive"],
        cv.tl.scvi_normalize,
        ref,
        library_size=library_size,
    )


def test_train_size_leaving_one_training_cell(registered):
    # 200 cells: round(0.995 * 200) = 199 validation cells, 1 training cell
    _raises(
        ValueError, ["train_size"], cv.tl.scvi_train, registered, **TINY | {"train_size": 0.005}
    )


def test_train_rejects_empty_latent(registered):
    _raises(ValueError, ["n_latent"], cv.tl.scvi_train, registered, **TINY | {"n_latent": 0})


def test_several_devices_without_ddp_are_refused_clearly(registered):
    _raises(
        ValueError,
        ["strategy='dp'", "DDP", "ddp_spawn"],
        cv.tl.scvi_train,
        registered,
        **TINY | {"devices": 2, "strategy": "dp", "accelerator": "cpu"},
    )
