"""The Lightning training plan: ELBO with KL warm-up, Adam, optional LR-on-plateau.

Per-step metrics are accumulated as detached tensors and logged once per epoch: calling
``self.log`` on every step costs more than a small VAE's step on a CPU.
"""

from __future__ import annotations

import copy
import math

import lightning.pytorch as pl
import torch

NAN_HINT = (
    "Likely causes: the data are not raw counts (e.g. normalised or scaled values), some cells "
    "have extreme library sizes, or the learning rate is too high (try lr=1e-4)."
)


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite."""


class TrainingPlan(pl.LightningModule):
    """Optimises a module whose ``forward(minibatch, kl_weight)`` returns loss terms.

    Parameters
    ----------
    module
        The torch module (e.g. :class:`~cellvi.models.scvi.SCVIModule`).
    lr, weight_decay, eps
        Adam settings.
    n_epochs_kl_warmup
        Epochs over which the weight of the KL term grows linearly from 0 to 1 (0 = no warm-up).
    reduce_lr_on_plateau, lr_factor, lr_patience
        Reduce the learning rate when the validation ELBO stops improving.
    """

    def __init__(
        self,
        module: torch.nn.Module,
        *,
        lr: float = 1e-3,
        weight_decay: float = 1e-6,
        eps: float = 0.01,
        n_epochs_kl_warmup: int = 0,
        reduce_lr_on_plateau: bool = False,
        lr_factor: float = 0.6,
        lr_patience: int = 30,
    ) -> None:
        super().__init__()
        self.module = module
        self.lr, self.weight_decay, self.eps = lr, weight_decay, eps
        self.n_epochs_kl_warmup = n_epochs_kl_warmup
        self.reduce_lr_on_plateau = reduce_lr_on_plateau
        self.lr_factor, self.lr_patience = lr_factor, lr_patience
        self.history: dict[str, list[float]] = {}
        self.last_good_state: dict[str, torch.Tensor] | None = None
        self._sums: dict[str, torch.Tensor] = {}

    # -- KL warm-up ---------------------------------------------------------------------------
    @property
    def kl_weight(self) -> float:
        if self.n_epochs_kl_warmup <= 0:
            return 1.0
        steps = max(1, self.trainer.num_training_batches)
        progress = self.current_epoch + (self.global_step % steps) / steps
        return min(1.0, progress / self.n_epochs_kl_warmup)

    # -- steps --------------------------------------------------------------------------------
    def _accumulate(self, prefix: str, terms) -> None:
        n = terms.reconstruction.shape[0]
        values = {
            "reconstruction": terms.reconstruction.detach().sum(),
            "kl_local": (terms.kl_z + terms.kl_library).detach().sum(),
            "n": torch.tensor(float(n), device=terms.loss.device),
        }
        for name, value in values.items():
            key = f"{prefix}/{name}"
            self._sums[key] = self._sums.get(key, 0.0) + value

    def training_step(self, batch, batch_idx):
        terms = self.module(batch, kl_weight=self.kl_weight)
        if not torch.isfinite(terms.loss):
            self._fail_non_finite()
        self._accumulate("train", terms)
        return terms.loss

    def validation_step(self, batch, batch_idx):
        terms = self.module(batch, kl_weight=1.0)
        self._accumulate("validation", terms)

    def _fail_non_finite(self) -> None:
        epoch = self.current_epoch
        if self.last_good_state is not None:
            self.module.load_state_dict(self.last_good_state)
            kept = f"The weights from the end of epoch {epoch} (the last finite one) were restored."
        else:
            kept = "No epoch had finished, so no earlier weights exist."
        raise NonFiniteLossError(
            f"The training loss became NaN/inf in epoch {epoch + 1}. {NAN_HINT} {kept}"
        )

    def _epoch_metrics(self, prefix: str) -> dict[str, float]:
        sums = {k.split("/")[1]: v for k, v in self._sums.items() if k.startswith(prefix + "/")}
        for key in [k for k in self._sums if k.startswith(prefix + "/")]:
            del self._sums[key]
        if not sums:
            return {}
        n = float(sums["n"])
        rec = float(sums["reconstruction"]) / n
        kl = float(sums["kl_local"]) / n
        return {
            f"elbo_{prefix}": -(rec + kl),
            f"reconstruction_{prefix}": rec,
            f"kl_local_{prefix}": kl,
        }

    def _record(self, metrics: dict[str, float]) -> None:
        for name, value in metrics.items():
            self.history.setdefault(name, []).append(value)
            self.log(name, value, prog_bar=name.startswith("elbo"), on_epoch=True)

    def on_train_epoch_end(self) -> None:
        metrics = self._epoch_metrics("train")
        if metrics and not all(math.isfinite(v) for v in metrics.values()):
            self._fail_non_finite()
        self.history.setdefault("epoch", []).append(float(self.current_epoch + 1))
        self.history.setdefault("kl_weight", []).append(self.kl_weight)
        self._record(metrics)
        self.last_good_state = copy.deepcopy(self.module.state_dict())

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            self._epoch_metrics("validation")
            return
        metrics = self._epoch_metrics("validation")
        if metrics:
            metrics["validation_epoch"] = float(self.current_epoch + 1)
        self._record(metrics)

    # -- optimiser ----------------------------------------------------------------------------
    def configure_optimizers(self):
        params = [p for p in self.module.parameters() if p.requires_grad]
        optimizer = torch.optim.Adam(
            params, lr=self.lr, eps=self.eps, weight_decay=self.weight_decay
        )
        if not self.reduce_lr_on_plateau:
            return optimizer
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer,
            mode="max",
            factor=self.lr_factor,
            patience=self.lr_patience,
            min_lr=0.0,
            threshold=0.0,
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "monitor": "elbo_validation"},
        }
