"""The ``.uns`` model payload: the stored 1.0.0 fixture stays readable; codec unit tests.

The fixture ``tests/tl/data/scvi_payload_v1_0_0.h5ad`` was written once by
``tests/tl/data/make_payload_fixture.py`` and is never regenerated: it is how we know that a
payload written by format 1.0.0 is still read by the current cellvi (see ``docs/payload.md``).
"""

from __future__ import annotations

import copy
import inspect
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import torch

import cellvi as cv
from cellvi.lifecycle.payload import (
    ENCODING_TYPE,
    array_to_state_dict,
    check_payload,
    decode,
    h5ad_safe,
    to_builtin,
    weights_to_array,
)
from cellvi.lifecycle.runtime import load_model
from cellvi.models.scvi import SCVIModule
from cellvi.tl._scvi_train import RUN_OPTIONS

FIXTURE = Path(__file__).resolve().parents[1] / "tl" / "data" / "scvi_payload_v1_0_0.h5ad"

#: Every field a 1.0.0 payload has; later 1.x writers may add fields, never remove these.
FIELDS_1_0_0 = {
    "encoding-type",
    "encoding-version",
    "model",
    "params",
    "registry",
    "var_names",
    "weights",
    "history",
    "validation_indices",
    "metrics",
    "training_time_s",
    "versions",
    "session_info",
}


@pytest.fixture
def stored() -> ad.AnnData:
    return ad.read_h5ad(FIXTURE)


def _roundtrip(adata: ad.AnnData, tmp_path: Path) -> ad.AnnData:
    path = tmp_path / "roundtrip.h5ad"
    adata.write_h5ad(path)
    return ad.read_h5ad(path)


# -- the stored 1.0.0 fixture ------------------------------------------------------------------
def test_fixture_is_a_small_1_0_0_payload(stored):
    assert FIXTURE.stat().st_size < 200_000
    payload = stored.uns["scvi"]
    assert payload["encoding-type"] == "cellvi-model"
    assert payload["encoding-version"] == "1.0.0"
    assert set(payload) == FIELDS_1_0_0
    assert payload["model"] == "scvi"
    assert payload["weights"].dtype == np.uint8 and payload["weights"].ndim == 1
    assert list(to_builtin(payload["var_names"])) == list(stored.var_names)
    assert payload["validation_indices"].dtype == np.int64
    assert set(payload["history"]) >= {"epoch", "kl_weight", "elbo_train"}
    assert len(payload["history"]["elbo_train"]) == 2


def test_fixture_model_rebuilds_with_stored_weights(stored):
    model = load_model(stored, "scvi")
    assert isinstance(model.module, SCVIModule)
    assert not model.module.training
    assert model.module.n_latent == 3 and model.module.n_input == 20 and model.module.n_batch == 2
    stored_state = array_to_state_dict(stored.uns["scvi"]["weights"])
    state = model.module.state_dict()
    assert state.keys() == stored_state.keys()
    for name, tensor in state.items():
        assert torch.equal(tensor, stored_state[name]), name


def test_fixture_embed_reproduces_stored_latent(stored):
    cv.tl.scvi_embed(stored, key_added="again")
    assert stored.obsm["X_again"].shape == (60, 3)
    np.testing.assert_allclose(stored.obsm["X_again"], stored.obsm["X_scvi"], rtol=1e-5, atol=1e-6)


def test_fixture_1_1_0_reads_and_reproduces_its_latent():
    stored = ad.read_h5ad(FIXTURE.with_name("scvi_payload_v1_1_0.h5ad"))
    payload = stored.uns["scvi"]
    assert payload["encoding-version"] == "1.1.0" and set(payload) == FIELDS_1_0_0
    cv.tl.scvi_embed(stored, key_added="again")
    np.testing.assert_allclose(stored.obsm["X_again"], stored.obsm["X_scvi"], rtol=1e-5, atol=1e-6)


def test_fixture_evaluate_reproduces_stored_validation_elbo(stored):
    result = cv.tl.scvi_evaluate(stored)
    assert np.isfinite(result["elbo"]) and result["elbo"] < 0 and result["n_cells"] == 60
    # the validation metrics were computed at training time with seed=params["seed"]
    payload = stored.uns["scvi"]
    val = stored[payload["validation_indices"]].copy()
    again = cv.tl.scvi_evaluate(val, model_from=stored, seed=int(payload["params"]["seed"]))
    assert again["n_cells"] == payload["metrics"]["n_cells_validation"] == 6
    np.testing.assert_allclose(again["elbo"], payload["metrics"]["elbo_validation"], rtol=1e-5)


def test_fixture_params_are_accepted_by_scvi_train(stored):
    params = to_builtin(stored.uns["scvi"]["params"])
    signature = set(inspect.signature(cv.tl.scvi_train).parameters)
    assert set(params) <= signature - {"adata", "copy", *RUN_OPTIONS}
    assert params["n_hidden"] == 8 and params["n_latent"] == 3 and params["max_epochs"] == 2
    # the recorded arguments are accepted back as they are and are recorded unchanged
    retrained = cv.tl.scvi_train(stored, copy=True, **params)
    again = to_builtin(retrained.uns["scvi"]["params"])
    assert {k: again[k] for k in params} == params


def test_params_are_exactly_the_non_none_train_arguments(stored):
    signature = inspect.signature(cv.tl.scvi_train).parameters
    given = {"n_hidden": 8, "n_latent": 2, "max_epochs": 2, "gradient_clip_val": 0.5, "seed": 7}
    cv.tl.scvi_train(stored, key_added="mine", check_val_every_n_epoch=1, **given)
    params = to_builtin(stored.uns["mine"]["params"])
    assert set(params) == set(signature) - {"adata", "copy", *RUN_OPTIONS}
    assert params["key_added"] == "mine" and params["check_val_every_n_epoch"] == 1
    assert {k: params[k] for k in given} == given
    assert params["n_epochs_kl_warmup"] == 1  # the resolved default, not None
    cv.tl.scvi_train(stored, key_added="defaults", max_epochs=2, n_hidden=8)
    params = to_builtin(stored.uns["defaults"]["params"])
    assert set(signature) - set(params) == {
        "adata",
        "copy",
        *RUN_OPTIONS,
        "check_val_every_n_epoch",
        "gradient_clip_val",
    }
    assert params["seed"] == cv.settings.seed


def test_later_minor_version_and_unknown_fields_are_read(stored, tmp_path):
    payload = stored.uns["scvi"]
    payload["encoding-version"] = "1.7.2"
    payload["some_future_field"] = {"values": np.arange(3), "note": "added in 1.7"}
    back = _roundtrip(stored, tmp_path)
    cv.tl.scvi_embed(back, key_added="again")
    np.testing.assert_array_equal(back.obsm["X_again"], stored.obsm["X_scvi"])


def test_payload_without_validation_cells_round_trips(stored, tmp_path):
    cv.tl.scvi_train(stored, key_added="full", train_size=1.0, max_epochs=2, n_hidden=8)
    back = _roundtrip(stored, tmp_path)
    payload = back.uns["full"]
    assert set(payload) >= FIELDS_1_0_0
    assert (
        payload["validation_indices"].dtype == np.int64 and payload["validation_indices"].size == 0
    )
    assert dict(payload["metrics"]) == {}
    assert not any(name.endswith("validation") for name in payload["history"])
    cv.tl.scvi_embed(back, key="full", key_added="again")
    np.testing.assert_array_equal(back.obsm["X_again"], stored.obsm["X_full"])


# -- weights -----------------------------------------------------------------------------------
def _module() -> SCVIModule:
    torch.manual_seed(0)
    return SCVIModule(12, n_batch=2, n_hidden=8, n_latent=3, dispersion="gene-batch")


def test_weights_round_trip_bit_identical_through_h5ad(tmp_path):
    module = _module()
    blob = weights_to_array(module)
    assert blob.dtype == np.uint8 and blob.ndim == 1 and blob.flags.writeable
    # safetensors: an 8-byte little-endian header length, then a JSON header (no pickle)
    header_len = int.from_bytes(blob[:8].tobytes(), "little")
    assert blob[8] == ord("{") and 8 + header_len <= blob.size
    adata = ad.AnnData(np.zeros((2, 2), dtype=np.float32))
    adata.uns["w"] = blob
    back = _roundtrip(adata, tmp_path).uns["w"]
    np.testing.assert_array_equal(back, blob)
    state = array_to_state_dict(back)
    expected = module.state_dict()
    assert state.keys() == expected.keys()
    for name, tensor in expected.items():
        assert state[name].dtype == tensor.dtype, name  # also the int64 BatchNorm counters
        assert torch.equal(state[name], tensor), name


@pytest.mark.parametrize(
    "corrupt",
    [
        pytest.param(lambda b: b[: b.size // 2], id="truncated"),
        pytest.param(lambda b: b[:4], id="header-cut"),
        pytest.param(lambda b: np.zeros(64, dtype=np.uint8), id="zeros"),
    ],
)
def test_corrupted_weights_give_a_clear_error(stored, corrupt):
    payload = dict(stored.uns["scvi"])
    payload["weights"] = corrupt(payload["weights"])
    with pytest.raises(ValueError, match=r"weights in `\.uns\['scvi'\]` cannot be loaded") as err:
        decode(payload, "scvi")
    assert "corrupted" in str(err.value)


def test_weights_not_matching_params_give_a_clear_error(stored):
    payload = copy.deepcopy(dict(stored.uns["scvi"]))
    payload["params"]["n_hidden"] = 16
    with pytest.raises(ValueError, match=r"(?s)cannot be loaded.*corrupted or was modified"):
        decode(payload, "scvi")


def _without(mapping, name):
    return {k: v for k, v in mapping.items() if k != name}


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(
            lambda p: p.update(registry=_without(p["registry"], "n_batch")),
            id="registry-field-missing",
        ),
        pytest.param(lambda p: p.update(registry="oops"), id="registry-not-a-mapping"),
        pytest.param(
            lambda p: p.update(params={**p["params"], "dispersion": "foo"}),
            id="params-invalid-option",
        ),
    ],
)
def test_corrupted_params_or_registry_give_a_clear_error(stored, change):
    payload = dict(stored.uns["scvi"])
    change(payload)
    with pytest.raises(ValueError, match=r"cannot be rebuilt.*corrupted or was modified"):
        decode(payload, "scvi")


# -- check_payload -----------------------------------------------------------------------------
def _valid() -> dict:
    return {
        "encoding-type": ENCODING_TYPE,
        "encoding-version": "1.0.0",
        "model": "scvi",
        "params": {},
        "weights": np.zeros(0, dtype=np.uint8),
        "registry": {},
        "var_names": np.array(["g0"]),
    }


@pytest.mark.parametrize("version", ["1.0.0", "1.0.1", "1.9.0", "1"])
def test_check_payload_accepts_any_1x(version):
    check_payload({**_valid(), "encoding-version": version, "extra": 1}, "scvi")


@pytest.mark.parametrize(
    ("payload", "error", "fragments"),
    [
        pytest.param(
            [1, 2],
            TypeError,
            ["is a list, not a cellvi model", "cv.tl.scvi_train"],
            id="not-a-dict",
        ),
        pytest.param(
            {**_valid(), "encoding-type": "anndata"},
            ValueError,
            ["not a cellvi model payload", "cellvi-model", "cv.tl.scvi_train"],
            id="wrong-encoding-type",
        ),
        pytest.param(
            {**_valid(), "encoding-version": "2.0.0"},
            ValueError,
            ["newer cellvi", "2.0.0", "reads 1.x", "Upgrade cellvi", "pip install -U"],
            id="newer-major",
        ),
        pytest.param(
            {**_valid(), "encoding-version": "one.two"},
            ValueError,
            ["unreadable encoding-version 'one.two'", "corrupted", "cv.tl.scvi_train"],
            id="unparseable-version",
        ),
        pytest.param(
            {k: v for k, v in _valid().items() if k != "encoding-version"},
            ValueError,
            ["unreadable encoding-version ''"],
            id="no-version",
        ),
        pytest.param(
            {k: v for k, v in _valid().items() if k not in ("registry", "var_names")},
            ValueError,
            ["missing ['registry', 'var_names']", "corrupted or truncated", "cv.tl.scvi_train"],
            id="missing-fields",
        ),
        pytest.param(
            {**_valid(), "model": "nosuchvi"},
            ValueError,
            ["'nosuchvi' model", "cannot rebuild", "'scvi'"],
            id="unknown-model",
        ),
    ],
)
def test_check_payload_errors(payload, error, fragments):
    with pytest.raises(error) as err:
        check_payload(payload, "mine")
    message = str(err.value)
    assert "`.uns['mine']`" in message
    for fragment in fragments:
        assert fragment in message, (fragment, message)


# -- h5ad_safe / to_builtin --------------------------------------------------------------------
def test_h5ad_safe_and_to_builtin_round_trip_through_h5ad(tmp_path):
    params = {
        "n_hidden": 16,
        "lr": 1e-3,
        "early_stopping": False,
        "gradient_clip_val": None,
        "devices": [0, 1],
        "keys": ["batch", "donor"],
        "pair": ("a", "b"),
        "empty": [],
        "nested": {"layer": "counts", "dropped": None, "deeper": {"names": ["x"], "k": 2}},
        3: "int key",
    }
    safe = h5ad_safe(params)
    assert "gradient_clip_val" not in safe and "dropped" not in safe["nested"]
    adata = ad.AnnData(np.zeros((2, 2), dtype=np.float32))
    adata.uns["params"] = safe
    back = to_builtin(_roundtrip(adata, tmp_path).uns["params"])
    devices = back.pop("devices")
    np.testing.assert_array_equal(devices, [0, 1])  # numeric lists come back as arrays
    assert back == {
        "n_hidden": 16,
        "lr": 1e-3,
        "early_stopping": False,
        "keys": ["batch", "donor"],
        "pair": ["a", "b"],
        "empty": [],
        "nested": {"layer": "counts", "deeper": {"names": ["x"], "k": 2}},
        "3": "int key",
    }
    assert type(back["n_hidden"]) is int and type(back["early_stopping"]) is bool
    assert type(back["lr"]) is float


def test_to_builtin_turns_numpy_values_into_python_ones():
    value = {
        "i": np.int64(3),
        "f": np.float32(0.5),
        "b": np.bool_(True),
        "s": np.str_("x"),
        "names": np.array(["a", "b"], dtype=object),
        "fixed": np.array(["gene0", "g1"]),
        "items": (np.int32(1), "y"),
    }
    out = to_builtin(value)
    assert out == {
        "i": 3,
        "f": 0.5,
        "b": True,
        "s": "x",
        "names": ["a", "b"],
        "fixed": ["gene0", "g1"],
        "items": [1, "y"],
    }
    assert type(out["i"]) is int and type(out["b"]) is bool and type(out["s"]) is str
