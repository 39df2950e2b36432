"""scANVI (Xu et al. 2021, *Mol. Syst. Biol.* 17:e9620) as a pure torch module.

The scVI generative model with the cell's label in the prior of its latent:

``y ~ p(y)`` (uniform, or the labelled cells' class frequencies), ``z2 ~ N(0, I)``,
``z1 | z2, y ~ N(mu(z2, y), sigma^2(z2, y))``, ``x | z1, l ~`` scVI's count distribution.

The variational family is ``q(z1 | x) q(y | z1) q(z2 | z1, y)``: scVI's encoder for ``z1``, a
classifier for ``y`` and a Gaussian encoder for ``z2``. A labelled cell's ELBO takes its label
as observed; an unlabelled cell's averages the label-dependent terms over ``q(y | z1)``
(enumerated, no sampling) and adds the entropy of ``q(y | z1)``. The classifier also gets a
cross-entropy loss on the labelled cells, weighted by ``classification_ratio``, which is what
makes it a good classifier rather than only a good variational posterior (Kingma et al. 2014).

``z1`` is the latent every generic verb sees (``inference`` returns it as ``z``): the embedding
is its posterior mean, and decoding, normalisation, DE and criticism are scVI's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..nn import MLP, GaussianEncoder
from ..nn.optim import adam
from . import _scanvi_pairs
from .scvi import LossTerms, SCVIModule, _kl_normal, _kl_standard_normal, _nonzeros, log_normal

LABEL_PRIORS = ("uniform", "frequency")


class SCANVIModule(SCVIModule):
    """scANVI: scVI with a label-dependent prior on the latent and a classifier.

    Parameters
    ----------
    n_input
        Number of genes.
    unlabeled_code
        The registry's code of the unlabelled category (``-1``: every cell is labelled). The
        other codes are the classes, in registry order.
    n_batch, n_labels, n_cats_per_cov, n_cont
        As in :class:`~cellvi.models.scvi.SCVIModule` (``n_labels`` counts the registry's label
        categories, the unlabelled one included).
    n_hidden, n_latent, n_layers, dropout_rate, dispersion, gene_likelihood,
    use_observed_lib_size, encode_covariates, deeply_inject_covariates, batch_representation,
    batch_embedding_dim, use_batch_norm, use_layer_norm
        As in :class:`~cellvi.models.scvi.SCVIModule` (the latent is Gaussian; a per-label
        dispersion is not offered since most cells have no label).
    classification_ratio
        Weight of the classifier's mean cross-entropy on labelled cells in the loss.
    linear_classifier
        One linear layer from ``z1`` to the class logits instead of a hidden layer.
    label_prior
        ``p(y)``: ``"uniform"``, or ``"frequency"`` (the labelled cells' class frequencies,
        set in ``log_label_prior`` when training starts).
    """

    #: Frozen query mapping also re-estimates the classifier's batch norm on the query (and
    #: trains its scale and shift): the frozen classifier then sees the query's latent
    #: centred as it saw the reference's (AdaBN). On the cross-chemistry query of
    #: ``bench_scanvi.py``: accuracy 0.599 -> 0.710 (seed 1: 0.600 -> 0.706). Not confirmed on a
    #: second pair (CITE-seq RNA, docs/scanvi.md): 0.974 -> 0.975 one way, 0.924 -> 0.917 back.
    query_adaptive_norms: tuple[str, ...] = ("decoder.", "classifier.")
    #: Fine-tuning on a query (``freeze=False``) leaves the classifier as the reference
    #: trained it (its batch norm adapts, as above), as scvi-tools' ``load_query_data`` does
    #: by default: trained on the query's unlabelled cells alone it can drift (fine-tuned
    #: from the 1,182-cell CITE-seq reference it collapsed to 0.184 accuracy, docs/scanvi.md).
    #: The effect of keeping it fixed is not measured yet.
    query_fixed_when_fine_tuned: tuple[str, ...] = ("classifier.",)

    def __init__(
        self,
        n_input: int,
        unlabeled_code: int = -1,
        *,
        n_batch: int = 1,
        n_labels: int = 1,
        n_cats_per_cov: Sequence[int] = (),
        n_cont: int = 0,
        n_hidden: int = 128,
        n_latent: int = 10,
        n_layers: int = 1,
        dropout_rate: float = 0.1,
        dispersion: str = "gene",
        gene_likelihood: str = "zinb",
        use_observed_lib_size: bool = True,
        encode_covariates: bool = False,
        deeply_inject_covariates: bool = True,
        batch_representation: str = "one-hot",
        batch_embedding_dim: int = 5,
        use_batch_norm: str = "both",
        use_layer_norm: str = "none",
        classification_ratio: float = 50.0,
        linear_classifier: bool = False,
        label_prior: str = "uniform",
    ) -> None:
        if dispersion == "gene-label":
            raise ValueError(
                "dispersion='gene-label' is not available for scANVI (most cells have no label "
                "to index it); use 'gene', 'gene-batch' or 'gene-cell'."
            )
        if label_prior not in LABEL_PRIORS:
            raise ValueError(f"label_prior={label_prior!r} is not valid; choose one of {list(LABEL_PRIORS)}.")  # fmt: skip
        if not classification_ratio >= 0:
            raise ValueError(f"classification_ratio must be >= 0, got {classification_ratio!r}.")
        super().__init__(
            n_input, n_batch=n_batch, n_labels=n_labels, n_cats_per_cov=n_cats_per_cov,
            n_cont=n_cont, n_hidden=n_hidden, n_latent=n_latent, n_layers=n_layers,
            dropout_rate=dropout_rate, dispersion=dispersion, gene_likelihood=gene_likelihood,
            latent_distribution="normal", use_observed_lib_size=use_observed_lib_size,
            encode_covariates=encode_covariates, deeply_inject_covariates=deeply_inject_covariates,
            batch_representation=batch_representation, batch_embedding_dim=batch_embedding_dim,
            use_batch_norm=use_batch_norm, use_layer_norm=use_layer_norm,
        )  # fmt: skip
        if not -1 <= unlabeled_code < n_labels:
            raise ValueError(f"unlabeled_code={unlabeled_code} is not a label code (0..{n_labels - 1}) or -1.")  # fmt: skip
        self.unlabeled_code = int(unlabeled_code)
        self.n_classes = n_labels - (unlabeled_code >= 0)
        if self.n_classes < 2:
            raise ValueError(f"scANVI needs at least 2 classes, got {self.n_classes}.")
        self.classification_ratio = float(classification_ratio)
        codes = torch.arange(n_labels)
        classes = codes - (codes > unlabeled_code).long() * (unlabeled_code >= 0)
        classes[codes == unlabeled_code] = -1
        # derived from the arguments, not stored: a mapped query may add the unlabelled code
        self.register_buffer("class_of_code", classes, persistent=False)
        self.register_buffer("log_label_prior", torch.full((self.n_classes,), -math.log(self.n_classes)))  # fmt: skip
        norm = {
            "use_batch_norm": use_batch_norm in ("both", "encoder"),
            "use_layer_norm": use_layer_norm in ("both", "encoder"),
        }
        if linear_classifier:
            self.classifier = nn.Linear(n_latent, self.n_classes)
        else:
            self.classifier = nn.Sequential(
                MLP(n_latent, n_hidden, n_layers=1, dropout_rate=dropout_rate, **norm),
                nn.Linear(n_hidden, self.n_classes),
            )
        shape = {"n_hidden": n_hidden, "n_layers": n_layers, "n_cats": [self.n_classes], **norm}
        self.z2_encoder = GaussianEncoder(n_latent, n_latent, dropout_rate=dropout_rate, **shape)
        self.z1_decoder = GaussianEncoder(n_latent, n_latent, dropout_rate=0.0, **shape)

    # -- classes ------------------------------------------------------------------------------
    def classes(self, labels: torch.Tensor) -> torch.Tensor:
        """The class of each registry label code (``-1`` for unlabelled cells)."""
        return self.class_of_code[labels.long()]

    def class_logits(self, z1: torch.Tensor) -> torch.Tensor:
        """Logits of ``q(y | z1)``, in float32: the classifier runs outside autocast (a network
        this small costs more in casts to bfloat16 than it saves in products; measured on the
        CPU, 16 types: a 10-epoch training about 5 % faster)."""
        with torch.autocast(z1.device.type, enabled=False):
            return self.classifier(z1.float()).float()

    def prefit_classifier(
        self,
        z1: torch.Tensor,
        classes: torch.Tensor,
        *,
        steps: int,
        batch_size: int = 128,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> int:
        """Train the classifier alone on fixed latents of labelled cells, before the whole model
        is fine-tuned (linear probing, then fine-tuning: Kumar et al. 2022, ICLR).

        A classifier fresh from its initialisation would otherwise steer the latent of every
        unlabelled cell through its random ``q(y | z1)`` during the first epochs, and undo part
        of the structure the scVI model found.

        Parameters
        ----------
        z1
            The cells' latents, ``(n_cells, n_latent)`` (e.g. posterior means of a trained
            encoder); not changed.
        classes
            Each cell's class (``0..n_classes - 1``), ``(n_cells,)``.
        steps
            Optimiser steps (Adam), each on ``min(batch_size, n_cells)`` cells drawn without
            replacement within passes over the cells.
        batch_size, lr, weight_decay
            Minibatch size and Adam's learning rate and weight decay.
        generator
            The draws of the minibatches (the classifier's dropout uses torch's global
            generator, as in training).

        Returns
        -------
        The number of steps taken: ``0`` with fewer than two cells (the batch norm needs two).
        """
        n = int(z1.shape[0])
        if z1.ndim != 2 or classes.shape != (n,):
            raise ValueError(f"z1 must be (n_cells, n_latent) and classes (n_cells,), got {tuple(z1.shape)} and {tuple(classes.shape)}.")  # fmt: skip
        if n and not (0 <= int(classes.min()) and int(classes.max()) < self.n_classes):
            raise ValueError(f"classes must lie in 0..{self.n_classes - 1}.")
        if n < 2 or steps <= 0:
            return 0
        size = min(int(batch_size), n)
        z1 = z1.detach().float()
        classes = classes.long()
        was_training = self.classifier.training
        params = list(self.classifier.parameters())
        optimiser = adam(params, lr=lr, weight_decay=weight_decay)
        self.classifier.train()
        order, at = torch.randperm(n, generator=generator, device="cpu"), 0
        try:
            for _ in range(int(steps)):
                if at + size > n:  # a new pass: every cell once per pass, no short minibatch
                    order, at = torch.randperm(n, generator=generator, device="cpu"), 0
                take = order[at : at + size].to(z1.device)
                at += size
                loss = F.cross_entropy(self.class_logits(z1[take]), classes[take])
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
        finally:
            self.classifier.train(was_training)
            for parameter in params:
                parameter.grad = None
        return int(steps)

    def latent_mean(self, mb: dict[str, torch.Tensor]) -> torch.Tensor:
        """``E[z1 | x]`` per cell: the posterior mean of the latent the classifier reads."""
        return self.inference(
            mb["x"], mb["batch"], mb["cat_covs"], mb["cont_covs"], mb.get("size_factor"),
            deterministic=True,
        )["qz_m"]  # fmt: skip

    @torch.inference_mode()
    def predict_proba(self, mb: dict[str, torch.Tensor]) -> torch.Tensor:
        """``q(y | E[z1 | x])`` per cell and class: the classifier at the posterior mean."""
        return torch.softmax(self.class_logits(self.latent_mean(mb)), dim=-1)

    # -- the label-dependent prior -------------------------------------------------------------
    def _class_pairs(self, classes: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The (cell, class) pairs the ELBO scores: every class for each unlabelled cell
        (``classes < 0``), class-major (pair ``k * n_u + j`` is unlabelled cell ``j`` with class
        ``k``), then each labelled cell with its own class only. Returns the unlabelled and the
        labelled cells' indices and each pair's cell and class."""
        unlabelled = torch.nonzero(classes < 0).squeeze(1)
        labelled = torch.nonzero(classes >= 0).squeeze(1)
        every = torch.arange(self.n_classes, device=classes.device)
        cells = torch.cat([unlabelled.repeat(self.n_classes), labelled])
        ys = torch.cat([every.repeat_interleave(unlabelled.numel()), classes[labelled]])
        return unlabelled, labelled, cells, ys

    def _pair_terms(self, z1: torch.Tensor, cells: torch.Tensor, ys: torch.Tensor, *, importance: bool = False) -> tuple[torch.Tensor, ...]:  # fmt: skip
        """For each (cell, class) pair, at one draw ``z2 ~ q(z2 | z1, y)``: ``log p(z1 | z2, y)``
        and ``KL(q(z2 | z1, y) || p(z2))``, then with ``importance`` also ``log N(z2; 0, I)``
        and ``log q(z2 | z1, y)``; one value per pair.

        The standard-normal draws behind ``z2`` are those of the whole ``(class, cell)`` grid,
        picked per pair: a cell's draw for a class does not depend on which other pairs are
        scored (whether the other cells are labelled)."""
        n = z1.shape[0]
        z1f = z1.float()

        def draw() -> torch.Tensor:
            return torch.randn(self.n_classes * n, z1.shape[1], device=z1.device)[ys * n + cells]

        if not importance and _scanvi_pairs.applies(self.z2_encoder, self.z1_decoder, z1f, cells.numel()):  # fmt: skip
            # the same values, without the networks' per-operation passes over memory
            return _scanvi_pairs.pair_terms(self.z2_encoder, self.z1_decoder, z1f, cells, ys, draw)  # fmt: skip
        m2, v2 = (t.float() for t in self.z2_encoder(z1f, [ys], rows=cells))
        eps = draw()
        z2 = m2 + v2.sqrt() * eps
        m1, v1 = (t.float() for t in self.z1_decoder(z2, [ys]))
        terms = [log_normal(z1f[cells], m1, v1).sum(-1), _kl_standard_normal(m2, v2)]
        if importance:
            half_log_2pi = 0.5 * math.log(2 * math.pi)
            terms.append(-(0.5 * z2.square() + half_log_2pi).sum(-1))
            # log N(z2; m2, v2) at z2 = m2 + sqrt(v2) * eps
            terms.append(-(0.5 * (eps.square() + torch.log(v2)) + half_log_2pi).sum(-1))
        return tuple(terms)

    def _per_class_terms(self, z1: torch.Tensor, *, importance: bool = False) -> tuple[torch.Tensor, ...]:  # fmt: skip
        """:meth:`_pair_terms` for every cell and class, each ``(n_cells, n_classes)``."""
        n = z1.shape[0]
        # every cell taken as unlabelled: the class-major layout of :meth:`_class_pairs`
        _, _, cells, ys = self._class_pairs(torch.full((n,), -1, device=z1.device))
        terms = self._pair_terms(z1, cells, ys, importance=importance)
        return tuple(t.view(self.n_classes, n).T for t in terms)

    def latent_kl(self, z1, qz_m, qz_v, classes) -> torch.Tensor:
        """The latent part of the negative ELBO per cell, ``log q(z1|x) - log p(z1, y)`` in
        expectation: labelled cells (``classes >= 0``) take their class; unlabelled ones
        average over ``q(y | z1)`` and pay ``KL(q(y | z1) || p(y))``.

        Only the (cell, class) pairs that enter it are scored (:meth:`_class_pairs`): a labelled
        cell costs one pair, an unlabelled one a pair per class."""
        unlabelled, labelled, cells, ys = self._class_pairs(classes)
        log_p_z1, kl_z2 = self._pair_terms(z1, cells, ys)
        per_pair = kl_z2 - log_p_z1  # -E log p(z1 | z2, y) + KL(q(z2 | z1, y) || p(z2))
        log_prior = self.log_label_prior.float()
        # the classifier sees every cell (its batch norm statistics are the minibatch's)
        log_q = torch.log_softmax(self.class_logits(z1), dim=-1)[unlabelled]
        q = log_q.exp()
        n_pairs = unlabelled.numel() * self.n_classes
        per_class = per_pair[:n_pairs].view(self.n_classes, unlabelled.numel()).T
        value_unlabelled = (q * per_class).sum(-1) + (q * (log_q - log_prior)).sum(-1)
        value_labelled = per_pair[n_pairs:] - log_prior[ys[n_pairs:]]
        values = torch.cat([value_unlabelled, value_labelled])
        order = torch.cat([unlabelled, labelled])
        latent = values.new_empty(classes.shape[0]).index_copy(0, order, values)
        entropy = 0.5 * (math.log(2 * math.pi * math.e) + torch.log(qz_v)).sum(-1)
        return latent - entropy

    def log_prior_z1(self, z1: torch.Tensor) -> torch.Tensor:
        """Importance-sampled ``log p(z1) = log sum_y p(y) E_q(z2|z1,y)[p(z1|z2,y) p(z2) /
        q(z2|z1,y)]`` per cell, one draw of ``z2`` per class."""
        log_p_z1, _, log_p_z2, log_q_z2 = self._per_class_terms(z1, importance=True)
        log_prior = self.log_label_prior.float()
        return torch.logsumexp(log_prior + log_p_z1 + log_p_z2 - log_q_z2, dim=-1)

    # -- the contract --------------------------------------------------------------------------
    def generative(self, z, log_library, batch, labels, cat_covs, cont_covs, *, deterministic=False):  # fmt: skip
        """scVI's ``p(x | z1, l)`` parameters, with ``z1`` itself (``log_joint`` scores it)."""
        out = super().generative(z, log_library, batch, labels, cat_covs, cont_covs)
        out["z1"] = z
        return out

    def log_joint(self, mb: dict, gen: dict) -> torch.Tensor:
        """``log p(x | z1) + log p(z1) - log N(z1; 0, I)``: the samplers score ``z1`` against
        a standard normal prior, which scANVI's is not."""
        z1 = gen["z1"].float()
        standard = log_normal(z1, torch.zeros_like(z1), torch.ones_like(z1)).sum(-1)
        return self.log_likelihood(mb["x"], gen, mb) + self.log_prior_z1(z1) - standard

    def classification_loss(self, mb: dict[str, torch.Tensor], qz_m: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy of the classifier at ``E[z1 | x]`` on the labelled cells: those of
        the label-balanced companion minibatch ``mb["labelled"]`` when the loader gives one,
        else those of ``mb`` itself (``0`` without any)."""
        if "labelled" in mb:
            companion = mb["labelled"]
            qz_m = self.inference(
                companion.get("x"), companion["batch"], companion["cat_covs"],
                companion["cont_covs"], companion.get("size_factor"), nz=_nonzeros(companion),
            )["qz_m"]  # fmt: skip
            classes = self.classes(companion["labels"])
        else:
            classes = self.classes(mb["labels"])
        known = classes >= 0
        if not bool(known.any()):
            return qz_m.new_zeros(())
        # the classifier sees every cell (its batch norm needs several), the loss the labelled ones
        return F.cross_entropy(self.class_logits(qz_m)[known], classes[known])

    def forward(self, mb: dict[str, torch.Tensor], kl_weight: float = 1.0) -> LossTerms:
        """Negative ELBO per cell (labelled and unlabelled), plus the weighted classification
        loss in ``loss``; the latent terms are scaled by ``kl_weight``."""
        inf = self.inference(
            mb.get("x"), mb["batch"], mb["cat_covs"], mb["cont_covs"], mb.get("size_factor"),
            nz=_nonzeros(mb),
        )  # fmt: skip
        gen = SCVIModule.generative(
            self, inf["z"], inf["log_library"], mb["batch"], mb["labels"], mb["cat_covs"],
            mb["cont_covs"],
        )  # fmt: skip
        reconstruction = -self.log_likelihood(mb.get("x"), gen, mb)
        kl_z = self.latent_kl(inf["z"], inf["qz_m"], inf["qz_v"], self.classes(mb["labels"]))
        kl_library = torch.zeros_like(kl_z)
        if self.l_encoder is not None:
            prior_m = self.library_log_means[mb["batch"]]
            prior_v = self.library_log_vars[mb["batch"]]
            kl_library = _kl_normal(inf["ql_m"], inf["ql_v"], prior_m, prior_v)
        loss = (reconstruction + kl_weight * kl_z + kl_library).mean()
        if self.training and self.classification_ratio > 0:
            loss = loss + self.classification_ratio * self.classification_loss(mb, inf["qz_m"])
        return LossTerms(loss, reconstruction, kl_z, kl_library)
