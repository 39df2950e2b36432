"""A totalVI model written before the model-family contract (commit 62b21fa) still works.

``tests/tl/data/totalvi_payload_v1_1_0.h5mu`` was written by that commit's code (see
``tests/tl/data/make_totalvi_payload_fixture.py``) with its latent and denoised layers; today's
code rebuilds the model through the family registry and must reproduce them.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import mudata as mu
import numpy as np
import pytest

import cellvi as cv

FIXTURE = Path(__file__).parents[1] / "tl" / "data" / "totalvi_payload_v1_1_0.h5mu"


@pytest.fixture
def stored():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # mudata's pull_on_update notice
        return mu.read_h5mu(FIXTURE)


def _layers(mdata) -> dict[tuple[str, str], np.ndarray]:
    return {(m, k): np.asarray(v).copy() for m in mdata.mod for k, v in mdata[m].layers.items()}


def test_the_payload_is_the_old_format_and_finds_its_family(stored):
    payload = stored.uns["totalvi"]
    assert payload["encoding-version"] == "1.1.0" and payload["model"] == "totalvi"
    assert cv.families.family_of(payload) is cv.families.get_family("totalvi")


def test_embed_reproduces_the_stored_latent(stored):
    cv.tl.embed(stored, key="totalvi", key_added="again")
    np.testing.assert_allclose(stored.obsm["X_again"], stored.obsm["X_totalvi"], atol=1e-6)


def test_normalize_reproduces_the_stored_denoised_layers(stored):
    before = _layers(stored)
    assert ("prot", "totalvi_denoised") in before and ("rna", "totalvi_denoised") in before
    cv.tl.normalize(stored, key="totalvi")
    after = _layers(stored)
    for name, old in before.items():
        np.testing.assert_allclose(after[name], old, rtol=1e-5, atol=1e-6, err_msg=str(name))


def test_evaluate_reproduces_the_stored_validation_elbo(stored):
    payload = stored.uns["totalvi"]
    validation = stored[payload["validation_indices"]].copy()
    again = cv.tl.evaluate(validation, key="totalvi", seed=int(payload["params"]["seed"]))
    np.testing.assert_allclose(again["elbo"], payload["metrics"]["elbo_validation"], rtol=1e-5)
