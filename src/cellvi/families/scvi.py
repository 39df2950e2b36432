"""The scVI family: RNA counts of one AnnData (Lopez et al. 2018)."""

from __future__ import annotations

from typing import Any

from ..models.scvi import SCVIModule
from ._options import LR, data_shape, hyperparameters, module_options
from ._rna import init_library_prior, init_query_library_prior, rna_training_data
from .contract import Capability, Hyperparameter, ModelFamily
from .registry import register_family

#: Options of ``SCVIModule`` a user chooses; the rest come from the registry and var names.
MODULE_OPTIONS = module_options(SCVIModule)


def build_module(params: dict[str, Any], registry: dict[str, Any], n_vars: int) -> SCVIModule:
    """The untrained module described by ``params`` on data shaped by ``registry``."""
    options = {k: params[k] for k in MODULE_OPTIONS if k in params}
    shape = data_shape(registry, n_vars)
    return SCVIModule(shape.pop("n_input"), **shape, **options)


def uses_labels(params: dict[str, Any]) -> bool:
    """A label-specific dispersion reads the registered labels."""
    return params.get("dispersion") == "gene-label"


FAMILY = register_family(
    ModelFamily(
        name="scvi",
        title="scVI",
        key_added="scvi",
        build=build_module,
        modalities=("rna",),
        registry_fields=("layer", "batch_categories", "n_batch", "n_labels"),
        capabilities=frozenset(
            Capability.all() - {Capability.DENOISE_PROTEINS, Capability.PREDICT_LABELS}
        ),  # fmt: skip
        hyperparameters=hyperparameters(
            SCVIModule,
            {
                "n_latent": ("int", 5, 30),
                "n_hidden": ("cat", [64, 128, 256]),
                "n_layers": ("int", 1, 3),
                "dropout_rate": ("float", 0.0, 0.3),
                "gene_likelihood": ("cat", ["nb", "zinb"]),
            },
            {"lr": LR, "batch_size": Hyperparameter(128)},
        ),
        verbs={
            Capability.EMBED: "cv.tl.scvi_embed",
            Capability.NORMALIZE: "cv.tl.scvi_normalize",
            Capability.EVALUATE: "cv.tl.scvi_evaluate",
        },
        train_verb="cv.tl.scvi_train",
        data_hint="an AnnData",
        read=rna_training_data,
        prepare=init_library_prior,
        uses_labels=uses_labels,
        init_query=init_query_library_prior,
    )
)
