"""The scANVI family: cell-type annotation from a few labelled cells (Xu et al. 2021).

RNA counts of one AnnData with a registered labels column in which the cells without a label
carry one category (``unlabeled_category``, default ``"Unknown"``). A model starts from the
trained scVI model in ``.uns[scvi_key]`` (its encoder, decoder and dispersion are copied, as
scvi-tools' ``SCANVI.from_scvi_model``) or, with ``scvi_key=None``, from scratch. Beside the
latent it writes the predicted label of every cell, its confidence and the class probabilities.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch

from ..data._format import str_list
from ..data.loader import Companion, MinibatchLoader
from ..models.scanvi import SCANVIModule
from ..models.scvi import SCVIModule
from ._options import LR, data_shape, hyperparameters, module_options
from ._rna import init_library_prior, init_query_library_prior, rna_training_data
from .contract import Capability, Hyperparameter, ModelFamily, TrainingData
from .registry import register_family

#: Options of ``SCANVIModule`` a user chooses; the rest come from the registry and var names.
MODULE_OPTIONS = module_options(SCANVIModule)
#: What a model started from scVI takes from it: the network shape of the shared parts.
INHERITS = tuple(o for o in module_options(SCVIModule) if o in MODULE_OPTIONS)
#: Epochs of a model started from a trained scVI (as the peer: a fine-tune, not a fresh fit).
WARM_START_EPOCHS = 10
#: Steps of the classifier alone on the scVI latent of the labelled cells before a model
#: started from scVI is fine-tuned (``n_steps_classifier_prefit=None``); see
#: :meth:`SCANVIModule.prefit_classifier` and docs/scanvi.md for the measurements.
PREFIT_STEPS = 200
#: The module's own parts, which a model started from scVI does not find there.
OWN_PARTS = ("classifier.", "z2_encoder.", "z1_decoder.", "log_label_prior")


def class_names(registry: dict[str, Any], unlabeled_category: str) -> list[str]:
    """The registry's label categories without the unlabelled one: the classes, in order."""
    return [c for c in str_list(registry["labels_categories"]) if c != unlabeled_category]


def unlabeled_code(registry: dict[str, Any], unlabeled_category: str) -> int:
    """The registry's code of the unlabelled category, ``-1`` when no cell carries it."""
    categories = str_list(registry["labels_categories"])
    return categories.index(unlabeled_category) if unlabeled_category in categories else -1


def build_module(params: dict[str, Any], registry: dict[str, Any], n_vars: int) -> SCANVIModule:
    """The untrained module described by ``params`` on data shaped by ``registry``."""
    options = {k: params[k] for k in MODULE_OPTIONS if k in params}
    shape = data_shape(registry, n_vars)
    unlabeled = str(params.get("unlabeled_category", "Unknown"))
    code = unlabeled_code(registry, unlabeled)
    names = class_names(registry, unlabeled)
    if len(names) < 2:
        found = f"only {names}" if names else f"every cell is {unlabeled!r}"
        raise ValueError(
            f"scANVI needs labelled cells of at least two cell types in the labels column "
            f"{registry['labels_key']!r}; {found}. Label some cells (or pass the category your "
            "unlabelled cells carry as unlabeled_category)."
        )
    steps = params.get("n_steps_classifier_prefit")
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 0):  # fmt: skip
        raise ValueError(f"n_steps_classifier_prefit must be a non-negative integer or None, got {steps!r}.")  # fmt: skip
    if steps and params.get("scvi_key") is None:
        raise ValueError(
            f"n_steps_classifier_prefit={steps} pre-fits the classifier on a trained scVI "
            "latent, but scvi_key=None trains from scratch: pass scvi_key, or leave "
            "n_steps_classifier_prefit=None."
        )
    module = SCANVIModule(shape.pop("n_input"), code, **shape, **options)
    module.class_names = names  # what the outputs hook names
    return module


def read(adata) -> TrainingData:
    """The registered counts, once the registry is checked to have a labels column."""
    training = rna_training_data(adata)
    if not str(training.registry["labels_key"]):
        raise ValueError(
            "scANVI needs cell labels: register them with `cv.pp.setup_registry(adata, ..., "
            "labels_key='cell_type')`, the cells without a label in one category (e.g. "
            "'Unknown', passed as unlabeled_category)."
        )
    return training


#: Category names that mark unlabelled cells in common annotations (compared in lower case).
UNLABELLED_NAMES = ("unknown", "unlabeled", "unlabelled", "nan", "na", "none", "")


def _check_labels(data: TrainingData, module: SCANVIModule, params: dict[str, Any]) -> np.ndarray:
    """Class counts among the labelled cells; an error for an unlabelled category taken as a
    cell type (``unlabeled_category`` not in the column, but a look-alike is), no labelled
    cell, or an empty class."""
    classes = module.classes(data.tensors.labels).numpy()
    unlabeled = params["unlabeled_category"]
    names = class_names(data.registry, unlabeled)
    if module.unlabeled_code < 0:
        alike = [n for n in names if n.strip().lower() in {*UNLABELLED_NAMES, unlabeled.lower()}]
        if alike:
            raise ValueError(
                f"the labels column {data.registry['labels_key']!r} has no {unlabeled!r} "
                f"category but has {alike[0]!r}, which would be learned as a cell type: pass "
                f"unlabeled_category={alike[0]!r} (a reference with every cell labelled needs "
                "neither)."
            )
    counts = np.bincount(classes[classes >= 0], minlength=module.n_classes)
    key = data.registry["labels_key"]
    if counts.sum() == 0:
        raise ValueError(
            f"every cell of labels column {key!r} is {params['unlabeled_category']!r}: scANVI "
            "needs some labelled cells (or pass the category your unlabelled cells carry as "
            "unlabeled_category)."
        )
    empty = [n for n, c in zip(names, counts, strict=True) if c == 0]
    if empty:
        raise ValueError(
            f"label categories {empty} of column {key!r} have no labelled cell: remove the "
            f"unused categories (`adata.obs[{key!r}] = adata.obs[{key!r}]"
            ".cat.remove_unused_categories()`) and run `cv.pp.setup_registry` again."
        )
    return counts


def _copy_weights(module: SCANVIModule, data: TrainingData) -> None:
    """The shared parts' weights from the model the new one starts from, after checking that
    it was trained on the same registry."""
    source = data.init_model
    where = f"the {source.family.title} model at .uns[{source.key!r}]"
    fix = "retrain it on this registry, or pass scvi_key=None to start from scratch"
    same = ("layer", "batch_key", "batch_categories", "categorical_covariate_keys",
            "continuous_covariate_keys")  # fmt: skip
    for name in same:
        if str_list(np.atleast_1d(source.registry[name])) != str_list(np.atleast_1d(data.registry[name])):  # fmt: skip
            raise ValueError(f"{where} was trained on a different registry ({name} differs): {fix}.")  # fmt: skip
    if list(source.var_names) != list(data.var_names):
        raise ValueError(f"{where} was trained on other genes: {fix}.")
    state = source.module.state_dict()
    own = module.state_dict()
    extra = [k for k in state if k not in own]
    wrong = [k for k in state if k in own and state[k].shape != own[k].shape]
    missing = [k for k in own if k not in state and not k.startswith(OWN_PARTS)]
    if extra or wrong or missing:
        raise ValueError(f"{where} is not an scVI model whose weights fit scANVI's ({(extra + wrong + missing)[:3]}): {fix}.")  # fmt: skip
    module.load_state_dict(state, strict=False)


def prepare(module: SCANVIModule, data: TrainingData, params: dict[str, Any]) -> dict[str, Any]:
    """Checks of the labels, the library prior, ``p(y)``, and the scVI weights when warm-started;
    a warm start trains :data:`WARM_START_EPOCHS` epochs without KL warm-up by default."""
    counts = _check_labels(data, module, params)
    # recorded in the model's registry: data without the labels column reads as unlabelled
    data.registry = {**data.registry, "unlabeled_category": str(params["unlabeled_category"])}
    init_library_prior(module, data, params)
    if params["label_prior"] == "frequency":
        module.log_label_prior.copy_(torch.as_tensor(np.log(counts / counts.sum()), dtype=torch.float32))  # fmt: skip
    if data.init_model is None:
        return {"n_steps_classifier_prefit": 0}
    _copy_weights(module, data)
    resolved = {}
    if params.get("max_epochs") is None:
        resolved["max_epochs"] = WARM_START_EPOCHS
    if params.get("n_epochs_kl_warmup") is None:
        resolved["n_epochs_kl_warmup"] = 0  # the scVI model's KL is warmed up already
    resolved["n_steps_classifier_prefit"] = _prefit_classifier(module, data, params)
    return resolved


def _labelled_cells(data: TrainingData, params: dict[str, Any], indices=None) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """The labelled cells among ``indices`` (every cell when None) and their registry codes."""
    code = unlabeled_code(data.registry, params["unlabeled_category"])
    indices = np.arange(data.tensors.n_cells) if indices is None else np.asarray(indices)
    codes = data.tensors.labels.numpy().reshape(-1)[indices]
    keep = codes != code
    return indices[keep], codes[keep]


def _over_cells(module: SCANVIModule, tensors, indices, fn, batch_size: int = 1024) -> torch.Tensor:  # fmt: skip
    """``fn(minibatch)`` over the cells ``indices`` in their order, in eval mode (the module's
    mode is restored) without gradients, on the module's device; concatenated on the CPU."""
    device = next(module.parameters()).device
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            loader = MinibatchLoader(tensors, np.asarray(indices), batch_size=batch_size)
            parts = [fn({k: v.to(device) for k, v in mb.items()}).float().cpu() for mb in loader]
    finally:
        module.train(was_training)
    return torch.cat(parts)


def _prefit_classifier(module: SCANVIModule, data: TrainingData, params: dict[str, Any]) -> int:
    """Fit the classifier of a model started from scVI on the latent of the labelled training
    cells, the scVI encoder's posterior means (:meth:`SCANVIModule.prefit_classifier`); returns
    the steps taken. ``n_steps_classifier_prefit=None`` takes :data:`PREFIT_STEPS`."""
    steps = params.get("n_steps_classifier_prefit")
    steps = PREFIT_STEPS if steps is None else int(steps)
    if steps == 0 or module.classification_ratio == 0:
        return 0
    labelled, codes = _labelled_cells(data, params, data.train_indices)
    if labelled.size < 2:
        return 0
    z1 = _over_cells(module, data.tensors, labelled, module.latent_mean)
    device = next(module.parameters()).device
    generator = torch.Generator().manual_seed(int(params["seed"]))
    return module.prefit_classifier(
        z1.to(device), module.classes(torch.as_tensor(codes, device=device)), steps=steps,
        batch_size=int(params["batch_size"]), lr=float(params["lr"]),
        weight_decay=float(params["weight_decay"]), generator=generator,
    )  # fmt: skip


def probabilities(module: SCANVIModule, tensors, batch_size: int = 1024) -> np.ndarray:
    """Class probabilities of every cell, ``(n_cells, n_classes)``."""
    proba = _over_cells(module, tensors, np.arange(tensors.n_cells), module.predict_proba, batch_size)  # fmt: skip
    return proba.numpy().astype(np.float32)


def outputs(module: SCANVIModule, tensors, var_names, key: str) -> dict[str, dict[str, Any]]:
    """Predicted label (categorical, the registry's classes), its probability (confidence) and
    all class probabilities (columns named in ``uns[key + "_probabilities_columns"]``)."""
    proba = probabilities(module, tensors)
    names = list(module.class_names)
    return {
        "obs": {
            f"{key}_prediction": pd.Categorical.from_codes(proba.argmax(1), categories=names),
            f"{key}_confidence": proba.max(1),
        },
        "obsm": {f"{key}_probabilities": proba},
        "uns": {f"{key}_probabilities_columns": np.asarray(names, dtype=str)},
    }


def companion(data: TrainingData, params: dict[str, Any], train_indices) -> Companion | None:
    """With ``balance_labels``: a minibatch of labelled training cells with every training
    minibatch, each class equally likely, for the classification loss (off by default: on the
    benchmark data it cost accuracy, for a little macro F1 on the rarest types)."""
    if not params.get("balance_labels", False):
        return None
    labelled, codes = _labelled_cells(data, params, train_indices)
    if labelled.size == 0:
        return None
    counts = np.bincount(codes, minlength=int(data.registry["n_labels"]))
    return Companion("labelled", labelled, 1.0 / counts[codes], int(params["batch_size"]))


def warm_start(params: dict[str, Any]) -> str | None:
    return params.get("scvi_key")


FAMILY = register_family(
    ModelFamily(
        name="scanvi",
        title="scANVI",
        key_added="scanvi",
        build=build_module,
        modalities=("rna",),
        registry_fields=(
            "layer",
            "batch_categories",
            "n_batch",
            "n_labels",
            "labels_key",
            "labels_categories",
        ),  # fmt: skip
        capabilities=frozenset(Capability.all() - {Capability.DENOISE_PROTEINS}),
        hyperparameters=hyperparameters(
            SCANVIModule,
            {
                "n_latent": ("int", 5, 30),
                "n_hidden": ("cat", [64, 128, 256]),
                "n_layers": ("int", 1, 3),
                "dropout_rate": ("float", 0.0, 0.3),
                "classification_ratio": ("float_log", 5.0, 500.0),
                "linear_classifier": ("cat", [False, True]),
            },
            {
                "unlabeled_category": Hyperparameter("Unknown"),
                "balance_labels": Hyperparameter(False, ("cat", [False, True])),
                "scvi_key": Hyperparameter("scvi"),
                "lr": LR,
                "batch_size": Hyperparameter(128),
            },
        ),
        verbs={Capability.PREDICT_LABELS: "cv.tl.scanvi_train"},
        train_verb="cv.tl.scanvi_train",
        data_hint="an AnnData with a registered labels column",
        read=read,
        prepare=prepare,
        uses_labels=lambda params: True,
        init_query=init_query_library_prior,
        outputs=outputs,
        warm_start=warm_start,
        companion=companion,
        inherits=INHERITS,
    )
)
