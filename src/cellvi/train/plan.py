"""The Lightning training plan: ELBO with KL warm-up, Adam, optional LR-on-plateau.

The plan uses Lightning's manual optimisation: one forward, ``manual_backward`` and one
optimiser step per minibatch. For a small VAE on a CPU, the per-step machinery of automatic
optimisation (closures, a dozen hook dispatches) costs as much as a fifth of the step itself;
devices, precision and distributed strategies still come from Lightning through
``manual_backward``. Per-step metrics are accumulated as detached tensors and logged once per
epoch, for the same reason.
"""

from __future__ import annotations

import copy
import math

import lightning.pytorch as pl
import torch

from ..nn.optim import adam

NAN_HINT = (
    "Likely causes: the data are not raw counts (e.g. normalised or scaled values), some cells "
    "have extreme library sizes, or the learning rate is too high (try lr=1e-4)."
)


_SUMS = ("reconstruction", "kl_local", "n")


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
    gradient_clip_val
        Clip the gradient norm to this value (``None``: no clipping).
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
        gradient_clip_val: float | None = None,
    ) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.module = module
        self.lr, self.weight_decay, self.eps = lr, weight_decay, eps
        self.n_epochs_kl_warmup = n_epochs_kl_warmup
        self.reduce_lr_on_plateau = reduce_lr_on_plateau
        self.lr_factor, self.lr_patience = lr_factor, lr_patience
        self.gradient_clip_val = gradient_clip_val
        self.history: dict[str, list[float]] = {}
        self.last_good_state: dict[str, torch.Tensor] | None = None
        self._sums: dict[str, dict[str, torch.Tensor]] = {}
        self._steps_per_epoch = 1
        self._progress = 0.0  # epochs of training done, in minibatches: see _advance

    # -- KL warm-up ---------------------------------------------------------------------------
    @property
    def kl_weight(self) -> float:
        """Linear warm-up over ``n_epochs_kl_warmup`` epochs, advanced at every minibatch."""
        if self.n_epochs_kl_warmup <= 0:
            return 1.0
        return min(1.0, self._progress / self.n_epochs_kl_warmup)

    def _advance(self, batch_idx: int) -> None:
        """Training progress at minibatch ``batch_idx`` of the current epoch.

        Counted in minibatches, not from Lightning's ``global_step``: in manual optimisation
        that counts optimiser steps, two per minibatch for a plan with an adversary.
        """
        self._progress = self.current_epoch + batch_idx / self._steps_per_epoch

    def on_train_start(self) -> None:
        self._steps_per_epoch = max(1, int(self.trainer.num_training_batches))
        self._progress = float(self.current_epoch)  # a resumed run starts at its epoch

    # -- steps --------------------------------------------------------------------------------
    def _accumulate(self, prefix: str, terms) -> None:
        values = (
            terms.reconstruction.detach().sum(),
            (terms.kl_z + terms.kl_library).detach().sum(),
            float(terms.reconstruction.shape[0]),
        )
        acc = self._sums.setdefault(prefix, dict.fromkeys(_SUMS, 0.0))
        for name, value in zip(_SUMS, values, strict=True):
            acc[name] = acc[name] + value

    def training_step(self, batch, batch_idx):
        self._advance(batch_idx)
        optimizer = self.optimizers()
        terms = self.module(batch, kl_weight=self.kl_weight)
        # on a GPU a per-step check would synchronise every step; there the epoch-end check on
        # the accumulated sums catches it
        if terms.loss.device.type == "cpu" and not torch.isfinite(terms.loss):
            self._fail_non_finite()
        optimizer.zero_grad(set_to_none=True)
        self._backward(terms.loss)
        if self.gradient_clip_val:
            self.clip_gradients(
                optimizer, gradient_clip_val=self.gradient_clip_val, gradient_clip_algorithm="norm"
            )
        optimizer.step()
        self._accumulate("train", terms)

    def _backward(self, loss: torch.Tensor) -> None:
        """``manual_backward`` with autocast off.

        Lightning runs ``training_step`` inside its autocast context, and on a CPU the autograd
        engine runs the backward pass in the calling thread, where that context would apply to
        every backward operation: each gradient product was cast to bfloat16 again, including those
        of the layers kept in float32 (measured: 39 casts of a 256 x 256 matrix per RNA + protein
        training step). Without it each backward operation runs in its forward's precision, as
        torch recommends ("backward passes under autocast are not recommended").
        """
        with torch.autocast(loss.device.type, enabled=False):
            self.manual_backward(loss)

    def validation_step(self, batch, batch_idx):
        self._accumulate("validation", self.module(batch, kl_weight=1.0))

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
        sums = self._sums.pop(prefix, None)
        if not sums:
            return {}
        totals = torch.stack(
            [torch.as_tensor(sums[k], dtype=torch.float64, device=self.device) for k in _SUMS]
        )
        if self.trainer.world_size > 1:  # each process saw its own share of the cells
            totals = self.trainer.strategy.reduce(totals, reduce_op="sum")
        rec_sum, kl_sum, n = totals.tolist()
        rec, kl = rec_sum / n, kl_sum / n
        return {
            f"elbo_{prefix}": -(rec + kl),
            f"reconstruction_{prefix}": rec,
            f"kl_local_{prefix}": kl,
        }

    def _record(self, metrics: dict[str, float]) -> None:
        for name, value in metrics.items():
            self.history.setdefault(name, []).append(value)
            # values are already summed over processes: syncing them is a no-op that keeps
            # Lightning from warning about unsynchronised epoch metrics
            self.log(
                name,
                value,
                prog_bar=name.startswith("elbo"),
                on_epoch=True,
                sync_dist=self.trainer.world_size > 1,
            )

    def on_train_epoch_end(self) -> None:
        metrics = self._epoch_metrics("train")
        if metrics and not all(math.isfinite(v) for v in metrics.values()):
            self._fail_non_finite()
        self.history.setdefault("epoch", []).append(float(self.current_epoch + 1))
        self._progress = float(self.current_epoch + 1)  # the weight the next epoch starts with
        self.history.setdefault("kl_weight", []).append(self.kl_weight)
        self._record(metrics)
        self.last_good_state = copy.deepcopy(self.module.state_dict())

    def on_validation_epoch_end(self) -> None:
        metrics = self._epoch_metrics("validation")
        if self.trainer.sanity_checking or not metrics:
            return
        metrics["validation_epoch"] = float(self.current_epoch + 1)
        self._record(metrics)
        if self.reduce_lr_on_plateau:
            self.lr_schedulers().step(metrics["elbo_validation"])

    # -- state that travels with the weights ----------------------------------------------------
    def get_extra_state(self) -> dict:
        """The history, so that it comes back with the weights from spawned worker processes."""
        return {"history": {k: list(v) for k, v in self.history.items()}}

    def set_extra_state(self, state: dict) -> None:
        self.history = {k: [float(x) for x in v] for k, v in state.get("history", {}).items()}

    # -- optimiser ----------------------------------------------------------------------------
    def configure_optimizers(self):
        params = [p for p in self.module.parameters() if p.requires_grad]
        # Lightning clips gradients only for unfused optimisers (mixed precision unscaling)
        optimizer = adam(
            params, lr=self.lr, eps=self.eps, weight_decay=self.weight_decay,
            fusable=not self.gradient_clip_val,
        )  # fmt: skip
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
        # stepped by hand in on_validation_epoch_end (manual optimisation)
        return {"optimizer": optimizer, "lr_scheduler": scheduler}
