"""The totalVI family: RNA and protein counts of the same cells (Gayoso et al. 2021)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..data._format import str_list
from ..data._mudata import get_protein_registry, protein_names_of, rna_anndata
from ..data._protein_loader import protein_tensor_data
from ..data.registry import REGISTRY_KEY
from ..models._protein_prior import EMPIRICAL_PRIOR_MIN_PROTEINS, empirical_background_prior
from ..models.totalvi import DEFAULT_PRIOR_MEAN, DEFAULT_PRIOR_STD, TOTALVIModule
from ..train.adversarial import AdversarialTrainingPlan
from ..train.plan import TrainingPlan
from ._options import LR, data_shape, hyperparameters, module_options
from .contract import Capability, Hyperparameter, ModelFamily, TrainingData
from .registry import register_family

#: Options of ``TOTALVIModule`` a user chooses; the rest come from the registry and names.
MODULE_OPTIONS = module_options(TOTALVIModule)


def build_module(params: dict[str, Any], registry: dict[str, Any], n_genes: int) -> TOTALVIModule:
    """The untrained module described by ``params`` on data shaped by ``registry``."""
    options = {k: params[k] for k in MODULE_OPTIONS if k in params}
    shape = data_shape(registry, n_genes)
    n_input = shape.pop("n_input")
    n_proteins = len(str_list(registry["protein"]["protein_names"]))
    return TOTALVIModule(n_input, n_proteins, **shape, **options)


def read(mdata) -> TrainingData:
    """RNA and protein counts of a MuData (or of an AnnData with proteins in ``.obsm``)."""
    registry = get_protein_registry(mdata, REGISTRY_KEY)
    names = protein_names_of(registry)
    tensors = protein_tensor_data(mdata, registry, protein_names=names)
    return TrainingData(
        registry=registry,
        tensors=tensors,
        var_names=np.asarray(rna_anndata(mdata, registry).var_names, dtype=str),
        extra={"protein_names": np.asarray(names, dtype=str)},
        summary=f" + {tensors.n_proteins} proteins",
    )


def prepare(module: TOTALVIModule, data: TrainingData, params: dict[str, Any]) -> dict[str, Any]:
    """The protein background prior (empirical from the counts when there are enough proteins)
    and whether an adversarial batch classifier is needed (some protein missing in a batch)."""
    registry, tensors = data.registry, data.tensors
    mask = np.asarray(registry["protein"]["protein_batch_mask"], dtype=np.uint8)
    empirical = params.get("empirical_protein_background_prior")
    if empirical is None:
        empirical = tensors.n_proteins > EMPIRICAL_PRIOR_MIN_PROTEINS
    adversarial = params.get("adversarial_classifier")
    if adversarial is None:
        adversarial = bool((mask == 0).any()) and int(registry["n_batch"]) > 1
    module.protein_batch_mask.copy_(torch.as_tensor(mask, dtype=torch.float32))
    if empirical:
        means, stds = empirical_background_prior(
            tensors.protein.numpy(),
            tensors.batch.numpy(),
            mask,
            default_mean=DEFAULT_PRIOR_MEAN,
            default_std=DEFAULT_PRIOR_STD,
            seed=params["seed"],
        )
        module.prior_back_mean.data.copy_(torch.as_tensor(means, dtype=torch.float32))
        module.prior_back_log_std.data.copy_(torch.as_tensor(np.log(stds), dtype=torch.float32))
    return {
        "empirical_protein_background_prior": bool(empirical),
        "adversarial_classifier": bool(adversarial),
    }


def make_plan(module, params: dict[str, Any], registry: dict[str, Any], **options) -> TrainingPlan:
    """The adversarial plan when a batch classifier is trained, the shared plan otherwise."""
    if params["adversarial_classifier"]:
        return AdversarialTrainingPlan(module, n_batch=int(registry["n_batch"]), **options)
    return TrainingPlan(module, **options)


def uses_labels(params: dict[str, Any]) -> bool:
    """A label-specific gene or protein dispersion reads the registered labels."""
    labels = {params.get("gene_dispersion"), params.get("protein_dispersion")}
    return bool(labels & {"gene-label", "protein-label"})


def init_query(module, params, registry, tensors, n_old: int, seed: int) -> None:
    """The new batches' protein background prior, as a fresh training run would start it:
    fitted to each new batch's own protein counts when the reference used the empirical prior,
    the default prior otherwise; and the extended measured-protein mask of the registry."""
    mask = np.asarray(registry["protein"]["protein_batch_mask"], dtype=np.uint8)
    n_new = mask.shape[0] - n_old
    means = np.full((n_new, mask.shape[1]), DEFAULT_PRIOR_MEAN)
    stds = np.full((n_new, mask.shape[1]), DEFAULT_PRIOR_STD)
    if params.get("empirical_protein_background_prior", False):
        batch = tensors.batch.numpy()
        new = batch >= n_old
        means, stds = empirical_background_prior(
            tensors.protein.numpy()[new], batch[new] - n_old, mask[n_old:],
            default_mean=DEFAULT_PRIOR_MEAN, default_std=DEFAULT_PRIOR_STD, seed=seed,
        )  # fmt: skip
    with torch.no_grad():
        module.prior_back_mean[n_old:] = torch.as_tensor(means, dtype=torch.float32)
        module.prior_back_log_std[n_old:] = torch.as_tensor(np.log(stds), dtype=torch.float32)
        module.protein_batch_mask.copy_(torch.as_tensor(mask, dtype=torch.float32))


FAMILY = register_family(
    ModelFamily(
        name="totalvi",
        title="totalVI",
        key_added="totalvi",
        build=build_module,
        modalities=("rna", "protein"),
        registry_fields=("layer", "batch_categories", "n_batch", "n_labels", "protein"),
        capabilities=frozenset(Capability.all() - {Capability.PREDICT_LABELS}),
        hyperparameters=hyperparameters(
            TOTALVIModule,
            {
                "n_latent": ("int", 5, 30),
                "n_hidden": ("cat", [64, 128, 256]),
                "n_layers_encoder": ("int", 1, 3),
                "dropout_rate": ("float", 0.0, 0.3),
                "gene_likelihood": ("cat", ["nb", "zinb"]),
                "protein_dispersion": ("cat", ["protein", "protein-batch"]),
            },
            {
                "lr": Hyperparameter(4e-3, LR.search),
                "batch_size": Hyperparameter(256),
                "empirical_protein_background_prior": Hyperparameter(None),
                "adversarial_classifier": Hyperparameter(None),
            },
        ),
        verbs={
            Capability.EMBED: "cv.tl.totalvi_embed",
            Capability.NORMALIZE: "cv.tl.totalvi_denoise",
            Capability.DENOISE_PROTEINS: "cv.tl.totalvi_denoise",
            Capability.EVALUATE: "cv.tl.totalvi_evaluate",
        },
        train_verb="cv.tl.totalvi_train",
        data_hint="a MuData with RNA and protein modalities (or an AnnData with proteins in .obsm)",
        read=read,
        prepare=prepare,
        make_plan=make_plan,
        uses_labels=uses_labels,
        init_query=init_query,
    )
)
