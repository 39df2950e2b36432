"""Training hooks for families that read the RNA counts of one AnnData (scVI and its kin)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..data.registry import extract_registered_data, get_registry
from ..data.tensors import tensor_data
from .contract import TrainingData


def rna_training_data(adata) -> TrainingData:
    """The registered counts of ``adata`` (in memory or on disk) as a family's training data."""
    registry = get_registry(adata)
    return TrainingData(
        registry=registry,
        tensors=tensor_data(extract_registered_data(adata, registry)),
        var_names=np.asarray(adata.var_names, dtype=str),
    )


def init_library_prior(
    module: torch.nn.Module, data: TrainingData, params: dict[str, Any]
) -> dict[str, Any]:
    """Set the per-batch log-library prior of the module (its ``library_log_means`` and
    ``library_log_vars`` buffers) from the registry; resolves no options."""
    _copy_library_prior(module, data.registry)
    return {}


def init_query_library_prior(module, params, registry, tensors, n_old: int, seed: int) -> None:
    """Query-mapping hook: the library-size prior of every batch, the new ones from the query's
    cells (query mapping extends the registry with them before the module is built)."""
    _copy_library_prior(module, registry)


def _copy_library_prior(module: torch.nn.Module, registry: dict[str, Any]) -> None:
    module.library_log_means.copy_(torch.as_tensor(registry["library_log_means"]))
    module.library_log_vars.copy_(torch.as_tensor(registry["library_log_vars"]).clamp(min=1e-4))
