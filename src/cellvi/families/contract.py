"""The model-family contract: what a family declares so that every tool can use its models.

A *family* is a kind of model (scVI, an RNA + protein model, a user's own). It is one
:class:`ModelFamily` value, registered once with :func:`cellvi.families.register_family`;
nothing else in cellvi needs to change for a new family. Every tool (``cv.tl``, ``cv.pl``, tuning, criticism, the hub)
looks the family up from the ``model`` field of the stored payload and asks it:

- **what it reads** — :attr:`ModelFamily.modalities` (``("rna",)`` or ``("rna", "protein")``)
  and :attr:`ModelFamily.registry_fields` (the registry entries it needs);
- **what it is built from** — :attr:`ModelFamily.build`, ``(params, registry, n_vars) ->
  module``: the untrained torch module that ``params`` (exactly the recorded
  ``.uns[key]["params"]``) describe on data shaped by the registry. The payload codec rebuilds
  a stored model by calling it and loading the weights;
- **its hyperparameters** — :attr:`ModelFamily.hyperparameters`, defaults and tuning ranges;
- **what it can do** — :attr:`ModelFamily.capabilities`, names from :class:`Capability`. A verb
  given a model without the capability raises :class:`CapabilityError` with one clear message,
  naming the verb to use instead when the family has one (:attr:`ModelFamily.verbs`).

The module it builds follows :class:`FamilyModule`: a pure torch module that never sees an
AnnData. Minibatches are dicts of tensors (``x``, ``batch``, ``labels``, ``cat_covs``,
``cont_covs``, optional ``size_factor``; one entry per further modality, e.g. ``y`` for the
protein counts).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch


class Capability:
    """Names of what a family's models can do (the values of :attr:`ModelFamily.capabilities`)."""

    EMBED = "embed"  #: latent posterior means (``cv.tl.embed``, ``latent_posterior``)
    NORMALIZE = "normalize"  #: normalised RNA expression (``cv.tl.normalize``)
    DENOISE_PROTEINS = "denoise_proteins"  #: background-free protein counts
    EVALUATE = "evaluate"  #: held-out ELBO (``cv.tl.evaluate``)
    DE = "differential_expression"  #: Bayesian differential expression
    POSTERIOR_PREDICTIVE = "posterior_predictive"  #: draws and likelihood parameters
    MARGINAL_LL = "marginal_ll"  #: importance-sampled ``log p(x)``
    CRITICISM = "criticism"  #: posterior predictive checks
    MAP_QUERY = "map_query"  #: scArches-style query mapping
    TUNE = "tune"  #: hyperparameter search with ``cv.tl.tune``
    PREDICT_LABELS = "predict_labels"  #: cell labels in obs[key + "_prediction" / "_confidence"]

    @classmethod
    def all(cls) -> frozenset[str]:
        return frozenset(v for k, v in vars(cls).items() if k.isupper() and isinstance(v, str))


#: Capability -> the ``cv.tl`` verb that does it for any family.
GENERIC_VERBS = {
    Capability.EMBED: "cv.tl.embed",
    Capability.NORMALIZE: "cv.tl.normalize",
    Capability.DENOISE_PROTEINS: "cv.tl.normalize",
    Capability.EVALUATE: "cv.tl.evaluate",
    Capability.DE: "cv.tl.differential_expression",
}


#: Attributes of the data that a family's ``outputs`` hook may write to.
OUTPUT_ATTRIBUTES = ("obs", "obsm", "varm", "uns")


class CapabilityError(ValueError, NotImplementedError):
    """A verb was given a model whose family cannot do what it asks.

    A ``ValueError`` (the caller passed the wrong model, as every other bad input in cellvi) and a
    ``NotImplementedError`` (the family does not implement the capability), so either ``except``
    catches it.
    """


@runtime_checkable
class FamilyModule(Protocol):
    """What a family's torch module provides (the engine side of the contract).

    ``inference`` maps a minibatch to the variational posterior and returns a dict with at
    least ``qz_m``, ``qz_v`` (mean and variance of ``q(z | x)``), ``z`` (a sample, or the mean
    when ``deterministic``) and ``log_library``. ``generative`` maps ``z`` (and the library, the
    batch, the labels and covariates) to the parameters of the count distribution of each
    modality; ``deterministic`` asks for the posterior mean of any latent it draws itself (a
    protein background, say). ``count_distribution(gen)`` is the RNA distribution of those
    parameters (a ``torch.distributions.Distribution``) and ``log_scale(gen)`` the log
    expression proportions of each cell (normalised expression, DE); a module that generates
    proteins adds ``protein_distribution(gen)`` and ``log_features(gen)`` (the genes' log
    proportions, then the log denoised proteins). ``log_joint(mb, gen)`` is the importance-
    sampling target per cell given the decoded latent: the log-likelihood of every modality,
    plus log prior minus log proposal of any latent ``generative`` drew itself (marginal
    likelihood and criticism use it). ``forward(mb, kl_weight)`` returns the loss terms per cell: an object with
    ``reconstruction``, ``kl_z``, ``kl_library`` and ``loss`` (the mean negative ELBO with the
    KL weighted by ``kl_weight``), and optionally ``parts``, a dict of further per-cell terms
    (e.g. one reconstruction per modality) that evaluation reports by name.
    """

    def inference(self, x, batch, cat_covs, cont_covs, size_factor=None, *,
                  deterministic: bool = False, **modalities) -> dict[str, torch.Tensor]: ...  # fmt: skip

    def generative(self, z, log_library, batch, labels, cat_covs, cont_covs, *,
                   deterministic: bool = False) -> dict[str, torch.Tensor]: ...  # fmt: skip

    def count_distribution(self, gen: dict) -> torch.distributions.Distribution: ...

    def log_scale(self, gen: dict) -> torch.Tensor: ...

    def log_joint(self, mb: dict[str, torch.Tensor], gen: dict) -> torch.Tensor: ...

    def forward(self, mb: dict[str, torch.Tensor], kl_weight: float = 1.0) -> Any: ...


@dataclass(frozen=True)
class Hyperparameter:
    """One option of a family: its default and, when tunable, its default search range.

    ``search`` follows ``cv.tl.tune``'s search-space entries: ``("int", low, high)``,
    ``("float", low, high)``, ``("float_log", low, high)`` or ``("cat", [choices])``.
    """

    default: Any
    search: tuple | None = None


@dataclass
class TrainingData:
    """What a family's ``read`` hook gives the shared training path (``cv.tl.train``).

    Attributes
    ----------
    registry
        The registry that describes the data (recorded with the model).
    tensors
        The cells as a :class:`~cellvi.data.loader.TensorData` (or a subclass with further
        modalities); its minibatches are what the family's module reads.
    var_names
        The gene names (the RNA modality's), ``len(var_names)`` sizes the module.
    extra
        Further payload fields of the family (e.g. ``protein_names``), stored as given.
    summary
        Appended to the "training ... on N cells x G genes" log line (e.g. ``" + 14 proteins"``).
    init_model
        The trained model a warm-started model starts from (see :attr:`ModelFamily.warm_start`),
        set by the shared training path before ``prepare``: an object with ``key``, ``module``,
        ``registry``, ``var_names``, ``params`` and ``family``. ``None``: from scratch.
    train_indices
        The cells that train (the others validate), set by the shared training path before
        ``prepare``; ``None`` outside it. What ``prepare`` fits from the data (e.g. scANVI's
        classifier, pre-fitted on the labelled cells) should read these cells only.
    """

    registry: dict[str, Any]
    tensors: Any
    var_names: Any
    extra: dict[str, Any] = field(default_factory=dict)
    summary: str = ""
    init_model: Any = None
    train_indices: Any = None


@dataclass(frozen=True)
class ModelFamily:
    """A model family: one declaration that every tool reads (see the module docstring).

    Attributes
    ----------
    name
        The payload's ``model`` field, the registry name (``"scvi"``).
    title
        How messages and figures name it (``"scVI"``).
    key_added
        Default ``.uns`` key of a trained model (and ``obsm["X_" + key_added]``).
    build
        ``(params, registry, n_vars) -> module``: the untrained module of a stored model.
    modalities
        What it reads: ``"rna"`` always; ``"protein"`` for RNA + protein models.
    registry_fields
        The registry entries it needs (checked before a model is rebuilt).
    capabilities
        What its models can do (:class:`Capability` names).
    hyperparameters
        Its options with defaults and tuning ranges (the tunable ones form the default search
        space of ``cv.tl.tune``).
    verbs
        Capability -> the family-named ``cv.tl`` verb that does it (used in error messages).
    train_verb
        The call that trains one (``"cv.tl.scvi_train"``), named in error messages.
    data_hint
        What data it takes, for error messages (``"an AnnData"``).
    read
        Training hook ``(data) -> TrainingData``: the registry, tensors and names of the data a
        model of the family is trained on (raise a clear error for data it cannot take).
        ``None``: the registered RNA counts of one AnnData.
    prepare
        Training hook ``(module, training_data, params) -> dict``: initialise the fresh module
        from the data (e.g. library-size priors) and return the options it resolved, which are
        recorded in ``params``. ``None``: nothing to do.
    make_plan
        Training hook ``(module, params, registry, **options) -> TrainingPlan``, for a family
        that trains with its own Lightning plan (``options`` are the shared ones: ``lr``,
        ``weight_decay``, ``n_epochs_kl_warmup``, ``reduce_lr_on_plateau``,
        ``gradient_clip_val``). ``None``: :class:`cellvi.train.plan.TrainingPlan`.
    uses_labels
        ``(params) -> bool``: whether a model with these ``params`` reads the registered labels
        (e.g. a label-specific dispersion); query mapping then keeps the labels column
        registered. ``None``: never.
    init_query
        Query-mapping hook ``(module, params, registry, tensors, n_old, seed) -> None``: in a
        module built for the reference's batches plus a query's new ones (rows ``n_old`` on,
        the reference's weights already transplanted), initialise what belongs to the new
        batches as a fresh training run would (library-size priors, background priors, ...),
        from the extended ``registry`` and the query's ``tensors``. ``None``: nothing to do.
    outputs
        Results hook ``(module, tensors, var_names, key) -> {attribute: {name: value}}``: what
        a trained model adds to the data beside ``obsm["X_" + key]`` and ``uns[key]``, e.g.
        ``{"varm": {key + "_loadings": array}}`` or ``{"obs": {key + "_prediction": ...}}``.
        Attributes are ``"obs"``, ``"obsm"``, ``"varm"`` and ``"uns"`` of the object trained
        on (or mapped); ``tensors`` are its cells, ``var_names`` its genes. Called after
        training and after query mapping, before anything is written, so that all results land
        together. ``None``: nothing more.
    warm_start
        Training hook ``(params) -> key | None``: the ``.uns`` key of a trained model (of any
        family) that a new model starts from, e.g. scANVI from scVI. The shared path loads it
        from the data being trained, copies its recorded values of the options named in
        ``inherits`` into ``params`` before the module is built (an explicitly different value
        is an error), and hands it to ``prepare`` as ``training_data.init_model``, which copies
        the weights it takes and checks that the two models describe the same data. ``None``,
        or a ``None`` key: from scratch.
    inherits
        The options a warm-started model takes from the model it starts from (its network
        shape, so that the weights fit).
    companion
        Training hook ``(training_data, params, train_indices) -> Companion | None``: a second
        minibatch drawn with every training minibatch (a :class:`cellvi.data.loader.Companion`:
        which cells, with which weights, how many), which the module finds as
        ``mb[companion.name]``; e.g. scANVI's labelled cells balanced by label. Validation and
        every verb after training see plain minibatches. ``None``: none.
    """

    name: str
    title: str
    key_added: str
    build: Callable[[dict[str, Any], dict[str, Any], int], torch.nn.Module]
    modalities: tuple[str, ...] = ("rna",)
    registry_fields: tuple[str, ...] = ("layer", "batch_categories")
    capabilities: frozenset[str] = field(default_factory=frozenset)
    hyperparameters: Mapping[str, Hyperparameter] = field(default_factory=dict)
    verbs: Mapping[str, str] = field(default_factory=dict)
    train_verb: str = ""
    data_hint: str = "an AnnData"
    read: Callable[[Any], TrainingData] | None = None
    prepare: Callable[[torch.nn.Module, TrainingData, dict[str, Any]], dict] | None = None
    make_plan: Callable[..., Any] | None = None
    uses_labels: Callable[[dict[str, Any]], bool] | None = None
    init_query: Callable[..., None] | None = None
    outputs: Callable[..., dict[str, dict[str, Any]]] | None = None
    warm_start: Callable[[dict[str, Any]], str | None] | None = None
    inherits: tuple[str, ...] = ()
    companion: Callable[..., Any] | None = None

    def __post_init__(self) -> None:
        unknown = set(self.capabilities) - Capability.all()
        if unknown:
            raise ValueError(
                f"family {self.name!r} declares unknown capabilities {sorted(unknown)}; "
                f"choose from {sorted(Capability.all())}."
            )
        if "rna" not in self.modalities:
            raise ValueError(f"family {self.name!r} must read the 'rna' modality.")

    @property
    def has_proteins(self) -> bool:
        """Whether its models read and generate protein counts as well as RNA."""
        return "protein" in self.modalities

    def warm_start_key(self, params: dict[str, Any]) -> str | None:
        """The ``.uns`` key of the model a new one with ``params`` starts from (see
        ``warm_start``), or ``None``."""
        return None if self.warm_start is None else self.warm_start(params)

    def reads_labels(self, params: dict[str, Any]) -> bool:
        """Whether a model with ``params`` reads the registered labels (see ``uses_labels``)."""
        return bool(self.uses_labels(params)) if self.uses_labels is not None else False

    def results(self, module, tensors, var_names, key: str) -> dict[str, dict[str, Any]]:
        """What the ``outputs`` hook adds (``{}`` without one), its attributes checked."""
        if self.outputs is None:
            return {}
        out = dict(self.outputs(module, tensors, var_names, key) or {})
        unknown = set(out) - set(OUTPUT_ATTRIBUTES)
        if unknown:
            raise ValueError(
                f"the outputs hook of family {self.name!r} returned attributes {sorted(unknown)}; "
                f"it may write to {list(OUTPUT_ATTRIBUTES)} only."
            )
        return out

    def can(self, capability: str) -> bool:
        return capability in self.capabilities

    def require(self, capability: str, *, verb: str, key: str) -> None:
        """Raise :class:`CapabilityError` unless the family has ``capability``."""
        if capability in self.capabilities:
            return
        raise CapabilityError(
            f"{verb} is not available for {self.title} models (model at .uns[{key!r}], "
            f"family {self.name!r} does not declare {capability!r})."
        )

    def require_verb(self, verb: str, capability: str, *, key: str) -> None:
        """For a family-named verb (``cv.tl.scvi_normalize``): refuse another family's model
        with an error naming the verbs that work on it."""
        own = self.verbs.get(capability)
        if own == verb:
            return
        if not self.can(capability):
            raise CapabilityError(
                f"`{verb}` does not take the {self.title} model at .uns[{key!r}]: {self.title} "
                f"models cannot do {capability!r}."
            )
        options = [f"`{v}(..., key={key!r})`" for v in (own, GENERIC_VERBS.get(capability)) if v]
        raise CapabilityError(
            f"`{verb}` does not take the {self.title} model at .uns[{key!r}]; use "
            f"{' or '.join(options)}."
        )

    def search_space(self) -> dict[str, tuple]:
        """The default search space of ``cv.tl.tune``: the tunable hyperparameters."""
        return {k: h.search for k, h in self.hyperparameters.items() if h.search is not None}

    def defaults(self) -> dict[str, Any]:
        return {k: h.default for k, h in self.hyperparameters.items()}
