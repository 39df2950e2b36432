"""Reporting a metric to optuna after every epoch, and pruning the trial when optuna says so."""

from __future__ import annotations

from collections.abc import Callable

import lightning.pytorch as pl
import numpy as np
import optuna
import torch

from ..data.loader import TensorData
from ..lifecycle.runtime import latent_mean, minibatches
from ..train.plan import NonFiniteLossError
from ._integration import integration_score


class HistoryReporter:
    """The newest value of ``key`` in the training plan's history, once per new value.

    The plan records validation metrics in ``on_validation_epoch_end``, which Lightning runs
    before ``on_train_epoch_end``, where the callback reads them.
    """

    def __init__(self, key: str) -> None:
        self.key = key
        self._seen = 0

    def __call__(self, plan: pl.LightningModule) -> float | None:
        values = plan.history.get(self.key, [])
        if len(values) == self._seen:
            return None
        self._seen = len(values)
        return float(values[-1])


class IntegrationReporter:
    """The integration score of the current latent of a fixed cell subsample."""

    def __init__(self, data: TensorData, batch: np.ndarray, labels: np.ndarray) -> None:
        self.data, self.batch, self.labels = data, batch, labels

    def __call__(self, plan: pl.LightningModule) -> float:
        latent = subsample_latent(plan.module, self.data)
        try:
            return integration_score(latent, self.batch, self.labels)["integration"]
        except FloatingPointError as err:
            raise NonFiniteLossError(f"integration score: {err}") from err


@torch.inference_mode()
def subsample_latent(module: torch.nn.Module, data: TensorData) -> np.ndarray:
    """Posterior means of ``data``'s cells on the module's current device, in eval mode."""
    device = next(module.parameters()).device
    was_training = module.training
    module.eval()
    try:
        parts = [latent_mean(module, mb).float().cpu() for mb in minibatches(data, device)]
    finally:
        module.train(was_training)
    return torch.cat(parts).numpy()


class PruningCallback(pl.Callback):
    """Reports ``reporter(plan)`` as the trial's value at each epoch; prunes when told to.

    ``optuna.TrialPruned`` propagates out of ``trainer.fit`` and the training function, so
    optuna records the trial as pruned with the values reported so far.
    """

    def __init__(
        self, trial: optuna.Trial, reporter: Callable[[pl.LightningModule], float | None]
    ) -> None:
        super().__init__()
        self.trial, self.reporter = trial, reporter

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        value = self.reporter(pl_module)
        if value is None:
            return
        epoch = trainer.current_epoch + 1
        if not np.isfinite(value):
            raise NonFiniteLossError(f"the tuned metric became {value} in epoch {epoch}")
        self.trial.report(value, step=epoch)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned after epoch {epoch} (value {value:.6g})")
