"""Trained models as plain ``.uns`` content: arrays, strings and numbers, never a pickle.

A payload is a dict with ``encoding-type`` ``"cellvi-model"`` and an ``encoding-version``.
The payload's ``model`` field names the model family (:mod:`cellvi.families`); the family's
``build`` rebuilds the untrained module from the stored params and registry, and the weights
are loaded into it (see ``docs/payload.md``).

The weights are a safetensors blob stored as a ``uint8`` array, so they come back bit for bit
after ``write_h5ad``/``read_h5ad`` and loading them never runs code.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from ..families import family_names, get_family

ENCODING_TYPE = "cellvi-model"
PAYLOAD_VERSION = "1.1.0"  # 1.1: optional ``partial`` (training stopped early)
SUPPORTED_MAJOR = 1


def weights_to_array(module: torch.nn.Module) -> np.ndarray:
    """The module's state dict as safetensors bytes in a ``uint8`` array."""
    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    return np.frombuffer(save_safetensors(state), dtype=np.uint8).copy()


def array_to_state_dict(blob: np.ndarray) -> dict[str, torch.Tensor]:
    """Inverse of :func:`weights_to_array`."""
    return load_safetensors(np.asarray(blob, dtype=np.uint8).tobytes())


def to_builtin(value: Any) -> Any:
    """Numpy scalars and string arrays (as read back from h5ad) to plain Python values."""
    if isinstance(value, Mapping):
        return {k: to_builtin(v) for k, v in value.items()}
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray) and value.dtype.kind in "OUS":
        return [str(v) for v in value.tolist()]
    if isinstance(value, list | tuple):
        return [to_builtin(v) for v in value]
    return value


def h5ad_safe(value: Any) -> Any:
    """Drop ``None`` entries and turn lists/tuples into arrays, recursively."""
    if isinstance(value, Mapping):
        return {str(k): h5ad_safe(v) for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple):
        if len(value) == 0 or all(isinstance(v, str) for v in value):
            return np.asarray(value, dtype=object if value else str).astype(str)
        return np.asarray(value)
    return value


def encode(
    model: str,
    module: torch.nn.Module,
    *,
    params: dict[str, Any],
    extra: dict[str, Any],
) -> dict[str, Any]:
    """Build the ``.uns`` payload of a trained module."""
    get_family(model)  # an error naming the known families
    payload = {
        "encoding-type": ENCODING_TYPE,
        "encoding-version": PAYLOAD_VERSION,
        "model": model,
        "params": h5ad_safe(params),
        "weights": weights_to_array(module),
    }
    payload.update(h5ad_safe(extra))
    return payload


def check_payload(payload: Any, key: str) -> None:
    """Raise a clear error for anything that is not a payload this version can read."""
    hint = f"train one with `cv.tl.scvi_train(adata, key_added={key!r})`"
    if not isinstance(payload, Mapping):
        raise TypeError(
            f"`.uns[{key!r}]` is a {type(payload).__name__}, not a cellvi model; {hint}."
        )
    if payload.get("encoding-type") != ENCODING_TYPE:
        raise ValueError(
            f"`.uns[{key!r}]` is not a cellvi model payload (no "
            f"encoding-type {ENCODING_TYPE!r}); {hint}."
        )
    version = str(payload.get("encoding-version", ""))
    try:
        major = int(version.split(".")[0])
    except ValueError:
        raise ValueError(
            f"`.uns[{key!r}]` has an unreadable encoding-version {version!r}; "
            f"the payload is corrupted, {hint}."
        ) from None
    if major > SUPPORTED_MAJOR:
        raise ValueError(
            f"`.uns[{key!r}]` was written by a newer cellvi (payload format "
            f"{version}; this version reads {SUPPORTED_MAJOR}.x). Upgrade cellvi: "
            "`pip install -U cellvi`."
        )
    missing = [
        f for f in ("model", "params", "weights", "registry", "var_names") if f not in payload
    ]
    if missing:
        raise ValueError(
            f"`.uns[{key!r}]` is missing {missing}; the payload is corrupted or truncated, {hint}."
        )
    if str(payload["model"]) not in family_names():
        raise ValueError(
            f"`.uns[{key!r}]` holds a {payload['model']!r} model, which this "
            f"version of cellvi cannot rebuild (known: {family_names()}); a custom family must "
            "be registered with `cv.families.register_family` before its models are loaded."
        )


def decode(payload: Mapping[str, Any], key: str) -> torch.nn.Module:
    """Rebuild the trained module from a payload, with bit-identical weights."""
    check_payload(payload, key)
    family = get_family(str(payload["model"]))
    try:
        # the initial weights are replaced below: drawing them must not move the global RNG
        with torch.random.fork_rng(devices=[]):
            plain = to_builtin({k: v for k, v in payload.items() if k != "weights"})
            module = family.build(plain["params"], plain["registry"], len(plain["var_names"]))
    except (KeyError, TypeError, ValueError, IndexError) as err:
        raise ValueError(
            f"The model in `.uns[{key!r}]` cannot be rebuilt from its params, registry and "
            f"var_names ({type(err).__name__}: {err}); the payload is corrupted or was modified."
        ) from err
    try:
        state = array_to_state_dict(payload["weights"])
        module.load_state_dict(state)
    except Exception as err:  # safetensors raises its own error types
        raise ValueError(
            f"The weights in `.uns[{key!r}]` cannot be loaded ({err}); the "
            "payload is corrupted or was modified."
        ) from err
    module.eval()
    return module
