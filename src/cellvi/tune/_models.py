"""What tuning needs to know about each model: its training function and default search space.

Nothing here is per family: a registered family that declares ``Capability.TUNE`` and has a
training function registered (``cellvi.families.register_trainer``) can be tuned.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from anndata import AnnData

from ..data._mudata import get_protein_registry, is_mudata
from ..data.registry import REGISTRY_KEY, get_registry
from ..families import Capability, families, get_family, trainer


def shared_anndata(adata: AnnData) -> AnnData:
    """A new AnnData holding the caller's matrices (not copies) and registry, for one trial.

    Training writes its latent and model into this object, never into the caller's.
    """
    return AnnData(
        X=adata.X,
        obs=adata.obs,
        var=adata.var,
        layers=dict(adata.layers),
        uns={REGISTRY_KEY: adata.uns[REGISTRY_KEY]},
    )


def shared_protein_data(data):
    """Like :func:`shared_anndata` for RNA + protein data: a MuData of shared modalities (with
    the joint ``.obs`` columns), or an AnnData that also shares the protein ``.obsm`` entry."""
    if not is_mudata(data):
        trial = shared_anndata(data)
        spec = get_protein_registry(data, REGISTRY_KEY)["protein"]
        if str(spec["source"]) == "obsm":
            key = str(spec["protein_obsm_key"])
            trial.obsm[key] = data.obsm[key]
        return trial
    import mudata

    mods = {name: _shared_modality(mod) for name, mod in data.mod.items()}
    trial = mudata.MuData(mods)
    for column in data.obs.columns:  # joint columns (e.g. a batch key set on the MuData)
        if column not in trial.obs.columns:
            trial.obs[column] = data.obs[column].to_numpy()
    trial.uns[REGISTRY_KEY] = data.uns[REGISTRY_KEY]
    return trial


def _shared_modality(adata: AnnData) -> AnnData:
    """One modality's matrices and annotations, shared, without ``.uns``."""
    return AnnData(X=adata.X, obs=adata.obs, var=adata.var, layers=dict(adata.layers))


@dataclass(frozen=True)
class Metric:
    """An objective: its optimisation direction and whether it needs validation cells."""

    name: str
    direction: str
    needs_validation: bool
    description: str


METRICS: dict[str, Metric] = {
    m.name: m
    for m in (
        Metric("elbo_validation", "maximize", True, "ELBO per validation cell"),
        Metric(
            "reconstruction_validation",
            "minimize",
            True,
            "reconstruction error -E_q[log p(x|z)] per validation cell",
        ),
        Metric("integration", "maximize", False, "scIB-style integration score of the latent"),
    )
}


@dataclass(frozen=True)
class TunableModel:
    """A model ``cv.tl.tune`` can search over.

    Attributes
    ----------
    train
        The ``cv.tl`` training function; it takes ``callbacks`` and writes ``obsm["X_" + key]``
        and ``uns[key]`` with a ``history`` and final ``metrics``.
    default_search_space
        Used when the caller gives none.
    history_keys
        Metric name -> key of its per-epoch value in the training history.
    final_keys
        Metric name -> key of its end-of-training value in the payload's ``metrics``.
    registry
        The registry that describes the data (for batch and label codes).
    trial_data
        A per-trial object sharing the caller's data (see :func:`shared_anndata`).
    integration
        Whether the ``"integration"`` metric is available (it embeds RNA-only cells).
    """

    train: Callable[..., Any]
    default_search_space: Mapping[str, tuple]
    history_keys: Mapping[str, str]
    final_keys: Mapping[str, str]
    registry: Callable[[Any], dict] = get_registry
    trial_data: Callable[[Any], Any] = shared_anndata
    integration: bool = True


# both models log the validation ELBO and reconstruction per epoch under the same names and
# report them at the end of training under these names
_HISTORY_KEYS = {
    "elbo_validation": "elbo_validation",
    "reconstruction_validation": "reconstruction_validation",
}
_FINAL_KEYS = {
    "elbo_validation": "elbo_validation",
    "reconstruction_validation": "reconstruction_error_validation",
}


def get_model(name: str) -> TunableModel:
    """What tuning needs for the family ``name``: its registered training function and the
    default search space it declares (its tunable hyperparameters), or an error listing the
    families that can be tuned."""
    tunable = [f.name for f in families() if f.can(Capability.TUNE)]
    if name not in tunable:
        raise ValueError(
            f"model={name!r} cannot be tuned (no registered model family of that name declares "
            f"the {Capability.TUNE!r} capability); available: {sorted(tunable)}."
        )
    family = get_family(name)
    if family.has_proteins:
        return TunableModel(
            train=trainer(name),
            default_search_space=family.search_space(),
            history_keys=_HISTORY_KEYS,
            final_keys=_FINAL_KEYS,
            registry=lambda data: get_protein_registry(data, REGISTRY_KEY),
            trial_data=shared_protein_data,
            integration=False,
        )
    return TunableModel(
        train=trainer(name),
        default_search_space=family.search_space(),
        history_keys=_HISTORY_KEYS,
        final_keys=_FINAL_KEYS,
    )


def get_metric(name: str) -> Metric:
    if name not in METRICS:
        raise ValueError(f"metric={name!r} is not known; choose one of {sorted(METRICS)}.")
    return METRICS[name]
