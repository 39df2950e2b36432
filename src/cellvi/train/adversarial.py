"""A training plan with an adversarial batch classifier on the latent space.

Used by RNA + protein models when some proteins were not measured in some batches: the missing
values make batches easy to tell apart in the latent space, and a classifier that tries to
predict the batch from ``z`` (while the encoder learns to fool it) keeps them mixed. Two
optimisers, one step each per minibatch:

1. the VAE: negative ELBO ``+ kappa *`` the classifier's cross-entropy against a uniform guess
   over the *other* batches;
2. the classifier: ``kappa *`` its cross-entropy on the true batch, on a detached ``z``.

``kappa = 1 - kl_weight`` by default, so the adversary is strongest while the KL weight warms
up and steps aside once the full ELBO is optimised.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..nn.layers import MLP
from .plan import TrainingPlan


class BatchClassifier(nn.Module):
    """A small MLP predicting batch logits from the latent."""

    def __init__(self, n_latent: int, n_batch: int, *, n_hidden: int = 32, n_layers: int = 2):
        super().__init__()
        self.body = MLP(n_latent, n_hidden, n_layers=n_layers, dropout_rate=0.1)
        self.head = nn.Linear(n_hidden, n_batch)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(z.float()))


def fool_loss(logits: torch.Tensor, batch: torch.Tensor) -> torch.Tensor:
    """Per-cell cross-entropy against a uniform distribution over the other batches."""
    n = logits.shape[-1]
    target = (1.0 - F.one_hot(batch, n).float()) / (n - 1)
    return -(target * F.log_softmax(logits, dim=-1)).sum(-1)


class AdversarialTrainingPlan(TrainingPlan):
    """:class:`TrainingPlan` plus a batch classifier trained against the encoder.

    Parameters
    ----------
    module
        A module whose loss terms carry the latent sample ``z``.
    n_batch
        Number of batches the classifier predicts.
    adversarial_weight
        ``kappa``; ``None`` uses ``1 - kl_weight`` at each step.
    **kwargs
        Passed to :class:`TrainingPlan`.
    """

    def __init__(
        self,
        module: nn.Module,
        *,
        n_batch: int,
        adversarial_weight: float | None = None,
        **kwargs,
    ) -> None:
        super().__init__(module, **kwargs)
        self.classifier = BatchClassifier(module.n_latent, n_batch)
        self.adversarial_weight = adversarial_weight

    def _kappa(self) -> float:
        return 1.0 - self.kl_weight if self.adversarial_weight is None else self.adversarial_weight

    def training_step(self, batch, batch_idx):
        self._advance(batch_idx)
        vae_opt, cls_opt = self.optimizers()
        terms = self.module(batch, kl_weight=self.kl_weight)
        if terms.loss.device.type == "cpu" and not torch.isfinite(terms.loss):
            self._fail_non_finite()
        kappa = self._kappa()
        loss = terms.loss
        if kappa > 0:
            loss = loss + kappa * fool_loss(self.classifier(terms.z), batch["batch"]).mean()
        vae_opt.zero_grad(set_to_none=True)
        self._backward(loss)
        if self.gradient_clip_val:
            self.clip_gradients(
                vae_opt, gradient_clip_val=self.gradient_clip_val, gradient_clip_algorithm="norm"
            )
        vae_opt.step()
        if kappa > 0:
            logits = self.classifier(terms.z.detach())
            cls_loss = kappa * F.cross_entropy(logits, batch["batch"])
            cls_opt.zero_grad(set_to_none=True)
            self._backward(cls_loss)
            cls_opt.step()
        self._accumulate("train", terms)

    def configure_optimizers(self):
        vae = super().configure_optimizers()
        classifier = torch.optim.Adam(
            self.classifier.parameters(), lr=1e-3, eps=0.01, weight_decay=self.weight_decay
        )
        if isinstance(vae, dict):
            return [vae["optimizer"], classifier], [vae["lr_scheduler"]]
        return [vae, classifier]
