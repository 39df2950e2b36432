"""Same seed and data on CPU: identical model, latent, normalised expression and metrics.

Across processes the same holds (the SIGKILL test in ``tests/train/test_checkpoint.py`` compares
weights trained in a subprocess with weights trained here). The differential expression table
is part of the comparison too.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import cellvi as cv

FAST = {"max_epochs": 5, "n_hidden": 16, "batch_size": 64, "early_stopping": True}


def _outputs(adata, seed: int, precision: str) -> dict:
    # the global generators are disturbed first: the seed alone must fix the result
    torch.rand(7)
    np.random.default_rng().random()
    out = cv.tl.scvi_train(adata, copy=True, seed=seed, precision=precision, **FAST)
    cv.tl.scvi_normalize(out)
    cv.tl.scvi_normalize(out, n_samples=3, layer_added="sampled")
    cv.tl.differential_expression(out, groupby="batch", n_samples=200, seed=seed)
    de = cv.tl.differential_expression_df(out)
    payload = out.uns["scvi"]
    return {
        "de_table": de.select_dtypes("number").to_numpy(),
        "de_genes": np.asarray(de["names"], dtype=str),
        "latent": out.obsm["X_scvi"],
        "weights": payload["weights"],
        "normalized": out.layers["scvi_normalized"],
        "sampled": out.layers["sampled"],
        "elbo_train": payload["history"]["elbo_train"],
        "elbo_validation": np.asarray(payload["metrics"]["elbo_validation"]),
        "evaluate": np.asarray(cv.tl.scvi_evaluate(out)["elbo"]),
    }


@pytest.mark.parametrize("precision", ["32-true", "auto"])
def test_same_seed_gives_identical_results(adata, precision):
    cv.pp.setup_registry(adata, layer="counts", batch_key="batch")
    first, second = _outputs(adata, 11, precision), _outputs(adata, 11, precision)
    for name, value in first.items():
        np.testing.assert_array_equal(value, second[name], err_msg=name)
    other = _outputs(adata, 12, precision)
    assert not np.array_equal(first["weights"], other["weights"])
    assert not np.array_equal(first["latent"], other["latent"])


def test_sampled_normalisation_is_seeded_and_leaves_the_global_rng_alone(adata):
    cv.pp.setup_registry(adata, layer="counts", batch_key="batch")
    cv.tl.scvi_train(adata, max_epochs=2, n_hidden=16)
    state = torch.get_rng_state()
    layers = [
        cv.tl.scvi_normalize(adata, n_samples=4, seed=s, copy=True).layers["scvi_normalized"]
        for s in (0, 0, 1)
    ]
    assert torch.equal(torch.get_rng_state(), state)
    np.testing.assert_array_equal(layers[0], layers[1])
    assert not np.array_equal(layers[0], layers[2])
