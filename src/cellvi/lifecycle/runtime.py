"""The model runtime every tool shares: find a stored model, rebuild it, feed it data, run it.

Family-agnostic: what differs between families (the module, the modalities it reads) is asked
of the model's :class:`~cellvi.families.ModelFamily`.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from anndata import AnnData

from .._settings import settings
from ..data._protein_loader import protein_tensor_data
from ..data.loader import MinibatchLoader, TensorData
from ..data.registry import extract_registered_data
from ..data.tensors import tensor_data
from ..families import ModelFamily, families, family_of
from ..utils._memory import release_free_memory
from .minified import stored_inference, stored_posterior
from .payload import decode, to_builtin

#: Minibatches between two returns of freed memory to the system in :func:`minibatches`.
TRIM_EVERY = 16


@dataclass
class LoadedModel:
    """A module rebuilt from ``.uns`` with what it was trained with."""

    key: str
    module: torch.nn.Module
    payload: dict[str, Any]
    registry: dict[str, Any]
    var_names: list[str]
    params: dict[str, Any]
    #: The proteins of a model that reads them, in column order (empty otherwise).
    protein_names: list[str] = field(default_factory=list)

    @property
    def family(self) -> ModelFamily:
        """The model's family: what it reads and what it can do."""
        return family_of(self.payload)

    def require(self, capability: str, verb: str) -> ModelFamily:
        """The family, after checking it has ``capability`` (a clear error otherwise)."""
        family = self.family
        family.require(capability, verb=verb, key=self.key)
        return family


def get_payload(adata: AnnData, key: str) -> dict[str, Any]:
    """``adata.uns[key]``, or an error naming the call that creates it."""
    if key not in adata.uns:
        trained = [
            k
            for k, v in adata.uns.items()
            if isinstance(v, dict) and v.get("encoding-type") == "cellvi-model"
        ]
        found = f" Models found in .uns: {trained}." if trained else ""
        train = "cv.tl.scvi_train"
        for fam in families():
            if fam.key_added == key and fam.train_verb:
                train = fam.train_verb
        raise KeyError(
            f"No trained model at adata.uns[{key!r}]; train one first with "
            f"`{train}(adata, key_added={key!r})`.{found}"
        )
    return adata.uns[key]


def load_model(source: AnnData, key: str) -> LoadedModel:
    """Rebuild the model stored in ``source.uns[key]`` (weights bit-identical)."""
    payload = get_payload(source, key)
    module = decode(payload, key)
    if "partial" in payload:
        partial = to_builtin(payload["partial"])
        warnings.warn(
            f"The model in .uns[{key!r}] is partial: its training stopped ({partial['reason']}) "
            f"after {partial['epochs_completed']} of {partial['max_epochs']} epochs.",
            UserWarning,
            stacklevel=3,
        )
    return LoadedModel(
        key=key,
        module=module,
        payload=payload,
        registry=payload["registry"],
        var_names=to_builtin(payload["var_names"]),
        params=to_builtin(payload["params"]),
        protein_names=[str(p) for p in to_builtin(payload.get("protein_names", []))],
    )


def model_data(adata: AnnData, model: LoadedModel) -> TensorData:
    """The fields of ``adata`` the model needs, checked against the model's registry.

    On minified data the stored latent posterior comes along (see
    :mod:`cellvi.lifecycle.minified`) and :func:`run_inference` uses it instead of the counts.
    """
    if model.family.has_proteins:  # RNA and protein counts (MuData, or proteins in .obsm)
        tensors = protein_tensor_data(
            adata, model.registry, var_names=model.var_names, protein_names=model.protein_names
        )
    else:
        data = extract_registered_data(adata, model.registry, var_names=model.var_names)
        tensors = tensor_data(data)
    return with_stored_posterior(tensors, adata, model.key)


def with_stored_posterior(tensors: TensorData, adata, key: str) -> TensorData:
    """``tensors``, carrying the stored posterior of model ``key`` when ``adata`` is minified."""
    posterior = stored_posterior(adata, key)
    if posterior is not None:
        tensors.posterior = {k: torch.from_numpy(v) for k, v in posterior.items()}
    return tensors


def inference_device(module: torch.nn.Module) -> torch.device:
    """Where to run a trained model: ``cv.settings.device`` (``"auto"``: a GPU when present)."""
    if settings.device != "auto":
        return torch.device(settings.device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def minibatches(
    data: TensorData, device: torch.device, batch_size: int = 1024
) -> Iterator[dict[str, torch.Tensor]]:
    """All cells in order, in minibatches moved to ``device``.

    Every :data:`TRIM_EVERY` minibatches the memory they freed is given back to the operating
    system (see :mod:`cellvi.utils._memory`), so that a pass over many cells does not leave the
    process holding gigabytes of free heap.
    """
    loader = MinibatchLoader(data, np.arange(data.n_cells), batch_size=batch_size)
    for i, mb in enumerate(loader):
        yield {k: v.to(device, non_blocking=True) for k, v in mb.items()}
        if (i + 1) % TRIM_EVERY == 0:
            release_free_memory()
    release_free_memory()


def run_inference(module, mb: dict[str, torch.Tensor], *, deterministic: bool) -> dict:
    """``module.inference`` on a minibatch from :func:`minibatches` (from the stored posterior
    on minified data; with the protein counts ``y`` for a multimodal model)."""
    if "qz_m" in mb:
        return stored_inference(module, mb, deterministic=deterministic)
    extra = {"y": mb["y"]} if "y" in mb else {}  # protein counts, for a model that reads them
    return module.inference(
        mb["x"],
        mb["batch"],
        mb["cat_covs"],
        mb["cont_covs"],
        mb.get("size_factor"),
        deterministic=deterministic,
        **extra,
    )


def latent_mean(module, mb: dict[str, torch.Tensor]) -> torch.Tensor:
    """Posterior mean of ``z`` (softmax of the Gaussian mean for a logistic-normal latent)."""
    return run_inference(module, mb, deterministic=True)["z"]


@torch.inference_mode()
def compute_latent(module, data: TensorData, batch_size: int = 256) -> np.ndarray:
    """Posterior means for every cell, as a float32 array.

    Minibatches of 256 cells: as fast as larger ones on a CPU, and their dense temporaries stay
    small beside the memory that training has just freed (given back first).
    """
    release_free_memory()
    device = inference_device(module)
    module.to(device).eval()
    parts = [latent_mean(module, mb).float().cpu() for mb in minibatches(data, device, batch_size)]
    return torch.cat(parts).numpy()
