"""The optuna objective: train one model with the trial's hyperparameters, return its metric."""

from __future__ import annotations

import gc
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import optuna
import torch
from anndata import AnnData

from ..data.loader import TensorData
from ..data.registry import extract_registered_data
from ..data.tensors import tensor_data
from ..train.plan import NonFiniteLossError
from ._callback import HistoryReporter, IntegrationReporter, PruningCallback
from ._integration import integration_score, subsample
from ._models import Metric, TunableModel
from ._space import SearchSpace


class TrialOutOfMemoryError(RuntimeError):
    """A trial ran out of (GPU or CPU) memory; the study goes on with the next trial."""


#: Errors that fail one trial (recorded as failed) without ending the study.
TRIAL_ERRORS = (NonFiniteLossError, TrialOutOfMemoryError)


@dataclass(frozen=True)
class IntegrationCells:
    """The cell subsample the integration score is computed on, with its codes."""

    indices: np.ndarray
    data: TensorData
    batch: np.ndarray
    labels: np.ndarray

    @classmethod
    def build(cls, adata: AnnData, registry: dict, *, n_cells: int, seed: int):
        indices = subsample(adata.n_obs, n_cells, seed)
        registered = extract_registered_data(adata[indices], registry, validate=False)
        if len(np.unique(registered.labels)) < 2 or len(np.unique(registered.batch)) < 2:
            raise ValueError(
                f"metric='integration': the {len(indices)} subsampled cells need at least two "
                "labels and two batches; raise n_cells_integration."
            )
        data = tensor_data(registered)
        return cls(indices, data, registered.batch, registered.labels)


@dataclass(frozen=True)
class Objective:
    """Everything a trial needs; calling it with a trial trains and scores one model."""

    adata: AnnData
    model: TunableModel
    model_name: str
    space: SearchSpace
    metric: Metric
    train_kwargs: dict[str, Any]
    integration: IntegrationCells | None = None
    trial_overrides: dict[str, Any] = field(default_factory=dict)

    def __call__(self, trial: optuna.Trial) -> float:
        params = self.space.suggest(trial)
        data = self.model.trial_data(self.adata)
        callback = PruningCallback(trial, self._reporter())
        kwargs = {**self.train_kwargs, **self.trial_overrides, **params}
        with _out_of_memory_fails_trial():
            self.model.train(data, key_added=self.model_name, callbacks=[callback], **kwargs)
        value = self._final_value(trial, data)
        if not np.isfinite(value):
            raise NonFiniteLossError(f"the final {self.metric.name} is {value}")
        return value

    def _reporter(self) -> Callable:
        if self.integration is None:
            return HistoryReporter(self.model.history_keys[self.metric.name])
        cells = self.integration
        return IntegrationReporter(cells.data, cells.batch, cells.labels)

    def _final_value(self, trial: optuna.Trial, data) -> float:
        if self.integration is None:
            metrics = data.uns[self.model_name]["metrics"]
            return float(metrics[self.model.final_keys[self.metric.name]])
        cells = self.integration
        latent = np.asarray(data.obsm[f"X_{self.model_name}"])[cells.indices]
        try:
            scores = integration_score(latent, cells.batch, cells.labels)
        except FloatingPointError as err:
            raise NonFiniteLossError(f"integration score: {err}") from err
        for name, value in scores.items():
            if name != "integration":
                trial.set_user_attr(name, float(value))
        return float(scores["integration"])


class _out_of_memory_fails_trial:
    """Turn out-of-memory errors (CUDA, or torch's CPU allocator) into :class:`TrialOutOfMemoryError`.

    Other errors are bugs or bad settings and end the study.
    """

    def __enter__(self):
        return self

    def __exit__(self, kind, error, traceback) -> bool:
        if error is None or not isinstance(error, MemoryError | RuntimeError):
            return False
        message = str(error).lower()
        if not isinstance(error, MemoryError | torch.cuda.OutOfMemoryError) and not (
            "out of memory" in message or "not enough memory" in message
        ):
            return False
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        raise TrialOutOfMemoryError(f"out of memory: {error}") from error
