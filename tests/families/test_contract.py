"""The family contract suite: every registered family, on every kind of data it takes, through
every verb. A family registered later (in ``cellvi.families``, or by a test or tutorial before
this module is collected) is run through the same checks without a line added here.

The data for a family come from what it declares: RNA-only families get an AnnData, families
that read proteins get a MuData and an AnnData with the proteins in ``.obsm``.
"""

from __future__ import annotations

import inspect

import anndata as ad
import matplotlib
import numpy as np
import pandas as pd
import pytest
import torch
from tests.conftest import synthetic_citeseq, synthetic_counts
from tests.families.tutorial_family import register_tutorial_family

import cellvi as cv
from cellvi.families import Capability, CapabilityError

matplotlib.use("Agg")
# the family of tutorials/custom_model.py, defined outside the package, gets the whole suite
TUTORIAL_FAMILY = register_tutorial_family()

FAST = {"max_epochs": 4, "batch_size": 64, "seed": 3, "precision": "32-true"}
SMALL = {
    "scvi": {"n_hidden": 16},
    "totalvi": {"n_hidden": 16},
    "ldvae": {"n_hidden": 16},
    "scanvi": {"n_hidden": 16, "scvi_key": None},
}


def _cases() -> list[tuple[str, str]]:
    cases = []
    for family in cv.families.families():
        kinds = ("mudata", "anndata_obsm") if family.has_proteins else ("anndata",)
        cases += [(family.name, kind) for kind in kinds]
    return cases


CASES = _cases()
IDS = [f"{name}-{kind}" for name, kind in CASES]
#: One case per family (its first kind of data), for the slower cross-cutting checks.
FIRST = [case for i, case in enumerate(CASES) if case[0] not in {c[0] for c in CASES[:i]}]
FIRST_IDS = [f"{name}-{kind}" for name, kind in FIRST]


def make_data(name: str, kind: str, n_cells: int = 200, seed: int = 0):
    """Registered data of the kind a family reads; a family that declares ``labels_key`` among
    its registry fields gets a labels column in which a third of the cells keep their type and
    the rest are ``"Unknown"``."""
    labels = "labels_key" in cv.families.get_family(name).registry_fields
    if kind == "anndata":
        data = synthetic_counts(n_cells=n_cells, n_genes=40, seed=seed)
        labels_key = None
        if labels:
            labels_key = "label"
            types = data.obs["cell_type"].astype(str).to_numpy().copy()
            types[np.arange(n_cells) % 3 != 0] = "Unknown"
            data.obs[labels_key] = pd.Categorical(types)
        cv.pp.setup_registry(data, layer="counts", batch_key="batch", labels_key=labels_key)
        return data
    mdata, _ = synthetic_citeseq(n_cells=n_cells, seed=seed)
    if kind == "mudata":
        cv.pp.setup_registry(mdata, batch_key="batch")
        return mdata
    rna = mdata["rna"].copy()
    prot = mdata["prot"]
    rna.obsm["protein_expression"] = pd.DataFrame(
        np.asarray(prot.X), index=rna.obs_names, columns=prot.var_names
    )
    cv.pp.setup_registry(rna, batch_key="batch", protein_obsm_key="protein_expression")
    return rna


def options(name: str, **more) -> dict:
    return {**FAST, **SMALL.get(name, {}), **more}


def rna_obs(data):
    """The per-cell annotations (a MuData's RNA modality has them too)."""
    return data.obs if isinstance(data, ad.AnnData) else data["rna"].obs


@pytest.fixture(scope="module", params=CASES, ids=IDS)
def trained(request):
    name, kind = request.param
    # module-scoped: runs before the per-test autouse fixture that pins one thread and
    # silences the progress bar, so it sets both itself (results depend on the thread count)
    torch.set_num_threads(1)
    cv.settings.progress_bar = False
    data = make_data(name, kind)
    cv.tl.train(data, model=name, **options(name))
    return name, kind, data


def test_training_writes_the_latent_and_a_model_of_its_family(trained):
    name, _, data = trained
    family = cv.families.get_family(name)
    key = family.key_added
    assert data.obsm[f"X_{key}"].shape[0] == data.n_obs
    assert np.isfinite(data.obsm[f"X_{key}"]).all()
    assert data.uns[key]["model"] == name
    assert cv.families.family_of(data.uns[key]) is family
    assert data.uns[key]["params"]["max_epochs"] == FAST["max_epochs"]


def test_family_named_training_verb_is_the_shared_path(trained):
    """The family's registered verb gives the model cv.tl.train gives (same seed)."""
    name, kind, data = trained
    again = make_data(name, kind)
    cv.families.trainer(name)(again, **options(name))
    key = cv.families.get_family(name).key_added
    np.testing.assert_array_equal(again.obsm[f"X_{key}"], data.obsm[f"X_{key}"])


def test_declared_defaults_are_the_training_verbs_defaults(trained):
    """A family-named verb spells the declared defaults out; every model records them."""
    name, _, data = trained
    family = cv.families.get_family(name)
    signature = inspect.signature(cv.families.trainer(name)).parameters
    own_verb = any(p.kind is not p.VAR_KEYWORD for p in list(signature.values())[1:])
    recorded = data.uns[family.key_added]["params"]
    given = options(name)
    for option, hyper in family.hyperparameters.items():
        if own_verb:
            assert signature[option].default == hyper.default, option
        if option not in given and hyper.default is not None:
            assert recorded[option] == hyper.default, option


def test_generic_verbs(trained):
    name, _, data = trained
    family = cv.families.get_family(name)
    key = family.key_added
    cv.tl.embed(data, key=key, key_added="again")
    np.testing.assert_allclose(data.obsm["X_again"], data.obsm[f"X_{key}"], atol=1e-5)
    metrics = cv.tl.evaluate(data, key=key)
    assert next(iter(metrics)) == "elbo" and np.isfinite(metrics["elbo"])
    assert metrics["elbo"] == pytest.approx(data.uns[key]["metrics"]["elbo_validation"], rel=0.5)
    before = set(_layers(data))
    cv.tl.normalize(data, key=key)
    added = set(_layers(data)) - before
    assert added, "normalize wrote nothing"
    for layer in added:
        values = _layers(data)[layer]
        assert np.isfinite(np.asarray(values)).all() and (np.asarray(values) >= 0).all()


def _layers(data) -> dict:
    if isinstance(data, ad.AnnData):
        return {**dict(data.layers), **{f"obsm:{k}": v for k, v in data.obsm.items()}}
    return {f"{m}:{k}": v for m, mod in data.mod.items() for k, v in mod.layers.items()}


def test_differential_expression_writes_under_its_key(trained):
    name, _, data = trained
    key = cv.families.get_family(name).key_added
    target = data
    cv.tl.differential_expression(
        target, key=key, groupby="cell_type", groups=["type0"], n_samples=200
    )
    assert f"rank_genes_groups_{key}" in holder_of(target, key).uns
    table = cv.tl.differential_expression_df(holder_of(target, key), key=f"rank_genes_groups_{key}")
    assert len(table) > 0 and {"logfoldchanges", "proba_de"} <= set(table.columns)


def holder_of(data, key: str):
    """Where a DE result of model ``key`` is: the data, or a MuData's RNA modality."""
    if isinstance(data, ad.AnnData) or f"rank_genes_groups_{key}" in data.uns:
        return data
    return data["rna"]


def test_posterior_quantities(trained):
    name, _, data = trained
    key = cv.families.get_family(name).key_added
    out = cv.tl.posterior_predictive(data, key=key, n_samples=2, copy=True)
    assert out is not None
    ll = cv.tl.marginal_ll(data, key=key, n_mc_samples=5, seed=0)
    assert np.isfinite(ll) and ll < 0
    cv.tl.latent_posterior(data, key=key, n_samples=3, seed=0)


def test_criticism_and_figures(trained, tmp_path):
    name, _, data = trained
    key = cv.families.get_family(name).key_added
    cv.tl.criticism(data, key=key, n_samples=3, groupby="cell_type")
    assert "cellvi_criticism" in data.uns or any("criticism" in k for k in data.uns)
    cv.pl.criticism(data, key=key, n_samples=3, groupby="cell_type", save=tmp_path / "c.png")
    cv.pl.training_history(data, key=key, save=tmp_path / "h.png")
    assert (tmp_path / "c.png").stat().st_size > 0 and (tmp_path / "h.png").stat().st_size > 0


def test_file_round_trips(trained, tmp_path):
    name, kind, data = trained
    key = cv.families.get_family(name).key_added
    if isinstance(data, ad.AnnData):
        data.write_h5ad(tmp_path / "d.h5ad")
        back = ad.read_h5ad(tmp_path / "d.h5ad")
    else:
        import mudata

        data.write_h5mu(tmp_path / "d.h5mu")
        back = mudata.read_h5mu(tmp_path / "d.h5mu")
    cv.tl.embed(back, key=key, key_added="reloaded")
    np.testing.assert_allclose(back.obsm["X_reloaded"], data.obsm[f"X_{key}"], atol=1e-5)
    folder = cv.hub.save(data, tmp_path / "model", key=key)
    fresh = make_data(name, kind)
    cv.hub.load(folder, fresh, key=key)
    assert fresh.uns[key]["model"] == name
    cv.tl.embed(fresh, key=key, key_added="from_folder")
    np.testing.assert_allclose(fresh.obsm["X_from_folder"], data.obsm[f"X_{key}"], atol=1e-5)


def test_map_query(trained):
    name, kind, data = trained
    family = cv.families.get_family(name)
    if not family.can(Capability.MAP_QUERY):
        with pytest.raises(CapabilityError, match="not available"):
            cv.tl.map_query(make_data(name, kind, seed=5), reference=data, key=family.key_added)
        return
    query = make_data(name, kind, n_cells=80, seed=5)
    _rename_batches(query, "query")
    cv.tl.map_query(query, reference=data, key=family.key_added, max_epochs=2)
    assert query.obsm[f"X_{family.key_added}"].shape == (query.n_obs, data.obsm[
        f"X_{family.key_added}"].shape[1])  # fmt: skip


def _rename_batches(data, prefix: str) -> None:
    frames = (
        [data.obs]
        if isinstance(data, ad.AnnData)
        else [data.obs, *[m.obs for m in data.mod.values()]]
    )
    for obs in frames:
        if "batch" in obs:
            obs["batch"] = pd.Categorical([f"{prefix}-{b}" for b in obs["batch"]])


def test_two_trial_tune(trained):
    name, kind, _ = trained
    family = cv.families.get_family(name)
    data = make_data(name, kind)
    if not family.can(Capability.TUNE):
        with pytest.raises(ValueError, match="cannot be tuned"):
            cv.tl.tune(data, model=name, n_trials=2, max_epochs=2)
        return
    cv.tl.tune(
        data, model=name, n_trials=2, max_epochs=2, search_space={"lr": ("float_log", 1e-3, 1e-2)},
        train_kwargs=SMALL.get(name, {}),
    )  # fmt: skip
    assert any(k.endswith("_tune") for k in data.uns)


@pytest.mark.parametrize(("name", "kind"), CASES, ids=IDS)
def test_same_seed_same_latent_and_resume_after_a_crash(name, kind, tmp_path, monkeypatch):
    from cellvi.train.plan import TrainingPlan

    key = cv.families.get_family(name).key_added
    first, second = make_data(name, kind), make_data(name, kind)
    cv.tl.train(first, model=name, **options(name))
    cv.tl.train(second, model=name, **options(name))
    np.testing.assert_array_equal(first.obsm[f"X_{key}"], second.obsm[f"X_{key}"])
    original = TrainingPlan.training_step

    def crash(self, batch, batch_idx):
        if self.current_epoch == 2 and batch_idx == 1:
            raise RuntimeError("simulated crash")
        return original(self, batch, batch_idx)

    crashed = make_data(name, kind)
    with monkeypatch.context() as patch:
        patch.setattr(TrainingPlan, "training_step", crash)
        with pytest.raises(RuntimeError, match="simulated crash"):
            cv.tl.train(crashed, model=name, checkpoint_dir=tmp_path / "ck", **options(name))
    assert key not in crashed.uns
    cv.tl.train(crashed, model=name, checkpoint_dir=tmp_path / "ck", resume=True, **options(name))
    assert np.abs(crashed.obsm[f"X_{key}"] - first.obsm[f"X_{key}"]).max() <= 1e-4


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
@pytest.mark.parametrize(("name", "kind"), FIRST, ids=FIRST_IDS)
def test_each_precision_trains(name, kind, precision):
    data = make_data(name, kind)
    cv.tl.train(data, model=name, **options(name, precision=precision, max_epochs=2))
    key = cv.families.get_family(name).key_added
    assert data.uns[key]["params"]["precision"] == precision
    assert np.isfinite(data.obsm[f"X_{key}"]).all()


@pytest.mark.parametrize(("name", "kind"), FIRST, ids=FIRST_IDS)
def test_two_cpu_processes_train_like_one(name, kind):
    """DDP with 2 CPU processes (gloo): the model and its history come back to this process,
    and training is as good as in one process with the same cells per step."""
    key = cv.families.get_family(name).key_added
    runs = {}
    for devices, batch_size, strategy in ((1, 128, "auto"), (2, 64, "ddp_fork")):
        data = make_data(name, kind)
        cv.tl.train(
            data, model=name, **options(name, max_epochs=8, batch_size=batch_size),
            devices=devices, strategy=strategy, accelerator="cpu",
        )  # fmt: skip
        runs[devices] = data
    two = runs[2].uns[key]
    assert two["params"]["devices"] == 2 and two["params"]["strategy"] == "ddp_fork"
    assert len(two["history"]["elbo_train"]) == 8
    assert np.isfinite(runs[2].obsm[f"X_{key}"]).all()
    elbo = {d: runs[d].uns[key]["metrics"]["elbo_validation"] for d in runs}
    assert elbo[2] == pytest.approx(elbo[1], rel=0.05), elbo


@pytest.mark.parametrize(("name", "kind"), [c for c in CASES if c[1] != "mudata"], ids=lambda c: c)
def test_counts_on_disk_train_like_in_memory_or_are_refused(name, kind, tmp_path):
    """A backed AnnData trains as the same cells in memory do, or (for a family that trains
    from memory only) is refused with the fix before anything changes."""
    key = cv.families.get_family(name).key_added
    in_memory = make_data(name, kind)
    path = tmp_path / "data.h5ad"
    in_memory.write_h5ad(path)
    backed = ad.read_h5ad(path, backed="r")
    assert backed.isbacked  # the counts stay on disk (obsm is read into memory)
    try:
        cv.tl.train(backed, model=name, **options(name, max_epochs=6))
    except ValueError as err:
        assert "to_memory" in str(err), err
        assert key not in backed.uns and f"X_{key}" not in backed.obsm
        return
    cv.tl.train(in_memory, model=name, **options(name, max_epochs=6))
    assert backed.isbacked and backed.obsm[f"X_{key}"].shape == (
        backed.n_obs,
        in_memory.obsm[f"X_{key}"].shape[1],
    )
    on_disk = backed.uns[key]["metrics"]["elbo_validation"]
    assert on_disk == pytest.approx(in_memory.uns[key]["metrics"]["elbo_validation"], rel=0.05)
    # applying the model reads the backed cells in order: the same numbers as from memory
    assert cv.tl.evaluate(backed, key=key)["elbo"] == pytest.approx(
        cv.tl.evaluate(in_memory, key=key)["elbo"], rel=0.05
    )


@pytest.mark.parametrize(("name", "kind"), CASES, ids=IDS)
def test_ctrl_c_keeps_a_partial_model(name, kind, monkeypatch):
    import os
    import signal

    from cellvi.train.plan import TrainingPlan

    original = TrainingPlan.training_step

    def press(self, batch, batch_idx):
        if self.current_epoch == 2 and batch_idx == 1:
            os.kill(os.getpid(), signal.SIGINT)
        return original(self, batch, batch_idx)

    monkeypatch.setattr(TrainingPlan, "training_step", press)
    data = make_data(name, kind)
    with pytest.raises(KeyboardInterrupt), pytest.warns(UserWarning, match="after 2 of 4"):
        cv.tl.train(data, model=name, **options(name))
    key = cv.families.get_family(name).key_added
    assert dict(data.uns[key]["partial"])["epochs_completed"] == 2


@pytest.mark.parametrize(("name", "kind"), CASES, ids=IDS)
def test_nan_loss_is_caught_with_its_cause(name, kind):
    data = make_data(name, kind)
    with pytest.raises(FloatingPointError, match=r"(?i)non-finite|nan"):
        cv.tl.train(data, model=name, **options(name, lr=1e6, max_epochs=30))


@pytest.mark.parametrize(("name", "kind"), CASES, ids=IDS)
def test_bad_input_leaves_data_unchanged(name, kind):
    data = make_data(name, kind)
    before = (set(data.uns), set(data.obsm))
    with pytest.raises(ValueError, match="max_epochs"):
        cv.tl.train(data, model=name, **options(name, max_epochs=0))
    with pytest.raises(TypeError, match="unknown options"):
        cv.tl.train(data, model=name, no_such_option=1)
    with pytest.raises(KeyError, match="No model family"):
        cv.tl.train(data, model="no-such-family")
    assert (set(data.uns), set(data.obsm)) == before


def test_a_verb_given_the_wrong_family_names_the_right_verb():
    rna = make_data("scvi", "anndata")
    cv.tl.scvi_train(rna, **options("scvi", max_epochs=1))
    with pytest.raises(CapabilityError, match=r"cv\.tl\.scvi_evaluate"):
        cv.tl.totalvi_evaluate(rna, key="scvi")
    mdata = make_data("totalvi", "mudata")
    cv.tl.totalvi_train(mdata, **options("totalvi", max_epochs=1))
    with pytest.raises(CapabilityError, match=r"cv\.tl\.totalvi_denoise.*cv\.tl\.normalize"):
        cv.tl.scvi_normalize(mdata, key="totalvi")
    with pytest.raises(CapabilityError, match=r"cv\.tl\.totalvi_embed.*cv\.tl\.embed"):
        cv.tl.scvi_embed(mdata, key="totalvi")


def test_a_missing_capability_is_refused_clearly():
    """A family that declares only embedding: every other verb says it is not available."""
    from cellvi.families import ModelFamily, register_family, unregister_family
    from cellvi.families.scvi import FAMILY

    limited = ModelFamily(
        name="embed_only", title="Embed-only", key_added="embed_only", build=FAMILY.build,
        capabilities=frozenset({Capability.EMBED}), hyperparameters=FAMILY.hyperparameters,
        read=FAMILY.read, prepare=FAMILY.prepare,
    )  # fmt: skip
    register_family(limited)
    try:
        data = make_data("scvi", "anndata")
        cv.tl.train(data, model="embed_only", **options("scvi", max_epochs=1))
        cv.tl.embed(data, key="embed_only", key_added="e")
        for call in (
            lambda: cv.tl.normalize(data, key="embed_only"),
            lambda: cv.tl.evaluate(data, key="embed_only"),
            lambda: cv.tl.marginal_ll(data, key="embed_only", n_mc_samples=2),
            lambda: cv.tl.differential_expression(data, key="embed_only", groupby="cell_type"),
            lambda: cv.tl.map_query(
                make_data("scvi", "anndata", seed=4), reference=data, key="embed_only"
            ),  # fmt: skip
            lambda: cv.tl.tune(data, model="embed_only", n_trials=1, max_epochs=1),
        ):
            with pytest.raises((CapabilityError, ValueError), match="not available|cannot be"):
                call()
    finally:
        unregister_family("embed_only")
