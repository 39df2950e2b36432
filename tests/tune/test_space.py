"""Search spaces: parsing, errors, suggestions and h5ad-safe descriptions."""

from __future__ import annotations

import optuna
import pytest

from cellvi.tl._scvi_train import scvi_train
from cellvi.tune._space import SearchSpace, parse_dimension, tunable_arguments

ALLOWED = tunable_arguments(scvi_train)


def test_tunable_arguments_exclude_reserved():
    assert {"n_latent", "lr", "gene_likelihood", "batch_size"} <= set(ALLOWED)
    assert not {"adata", "key_added", "callbacks", "copy"} & set(ALLOWED)


def test_suggestions_respect_kinds_and_bounds():
    space = SearchSpace.parse(
        {
            "n_latent": ("int", 5, 30),
            "n_hidden": ("int", 32, 128, 32),
            "lr": ("float_log", 1e-4, 1e-2),
            "dropout_rate": ("float", 0.0, 0.3),
            "gene_likelihood": ("cat", ["nb", "zinb"]),
        },
        allowed=ALLOWED,
        model="scvi",
    )
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(20):
        params = space.suggest(study.ask())
        assert isinstance(params["n_latent"], int) and 5 <= params["n_latent"] <= 30
        assert params["n_hidden"] in (32, 64, 96, 128)
        assert 1e-4 <= params["lr"] <= 1e-2 and 0.0 <= params["dropout_rate"] <= 0.3
        assert params["gene_likelihood"] in ("nb", "zinb")
    described = space.describe()
    assert described["n_hidden"] == {"kind": "int", "low": 32, "high": 128, "step": 32}
    assert list(described["gene_likelihood"]["choices"]) == ["nb", "zinb"]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("int", "expected a tuple"),
        (("integer", 1, 2), "unknown kind"),
        (("int", 5), "needs \\(kind, low, high\\)"),
        (("int", 9, 3), "must not exceed"),
        (("float_log", 0.0, 1.0), "log range needs low > 0"),
        (("float", "a", 1.0), "bounds must be numbers"),
        (("cat", "nb"), "use \\('cat'"),
        (("cat", []), "empty"),
        (("cat", [None, 1.0]), "None and objects"),
    ],
)
def test_bad_dimensions(spec, message):
    with pytest.raises(ValueError, match=message):
        parse_dimension("x", spec)


def test_unknown_or_reserved_names_are_rejected():
    with pytest.raises(ValueError, match=r"\['n_latnt'\] are not arguments"):
        SearchSpace.parse({"n_latnt": ("int", 2, 5)}, allowed=ALLOWED, model="scvi")
    with pytest.raises(ValueError, match=r"\['copy'\] are not arguments"):
        SearchSpace.parse({"copy": ("cat", [True])}, allowed=ALLOWED, model="scvi")
    with pytest.raises(ValueError, match="non-empty dict"):
        SearchSpace.parse({}, allowed=ALLOWED, model="scvi")
