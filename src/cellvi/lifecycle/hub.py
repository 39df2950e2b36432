"""Trained models as Hugging Face-style model folders: safetensors, JSON and a model card.

A model folder holds exactly three files:

``model.safetensors``
    The payload's ``weights``, byte for byte (a safetensors file: loading it never runs code).
``config.json``
    Every other field of the payload (see ``docs/payload.md``), numpy values made plain JSON.
``README.md``
    A model card with YAML front matter (``library_name: cellvi``) for the Hub.

Reading a folder only ever opens ``config.json`` and ``model.safetensors``: no pickle, no code.
:func:`pull` downloads only those names (and the card), so nothing else reaches the disk.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from anndata import AnnData

from ..data.registry import extract_registered_data
from ..tl._common import get_payload
from .model_card import CARD_FILE, CONFIG_FILE, WEIGHTS_FILE, model_card
from .payload import decode

logger = logging.getLogger("cellvi")

FILES = (WEIGHTS_FILE, CONFIG_FILE, CARD_FILE)
ALLOW_PATTERNS = ["*.json", "*.safetensors", CARD_FILE]
DEFAULT_LICENSE = "cc-by-4.0"

# JSON cannot tell the dtype of an empty list; these fields are numeric even when empty
# (every other empty list is an empty list of names, as `h5ad_safe` writes it).
_EMPTY_INT_FIELDS = {("validation_indices",)}
_EMPTY_FLOAT_PREFIXES = {
    ("history",),
    ("registry", "library_log_means"),
    ("registry", "library_log_vars"),
}

# Training parameters shown in the model card (all of them are in config.json).


# -- JSON <-> payload values ---------------------------------------------------------------------
def _to_json(value: Any, path: tuple[str, ...] = ()) -> Any:
    """Payload values as plain JSON values: arrays to lists, numpy scalars to Python ones."""
    if isinstance(value, Mapping):
        return {str(k): _to_json(v, (*path, str(k))) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return [_to_json(v, path) for v in value.tolist()]
    if isinstance(value, list | tuple):
        return [_to_json(v, path) for v in value]
    if isinstance(value, np.generic):
        return _to_json(value.item(), path)
    if isinstance(value, bytes):
        return value.decode()
    if value is None or isinstance(value, str | bool | int | float):
        return value
    raise TypeError(
        f"The model field {'/'.join(path)!r} holds a {type(value).__name__}, which cannot be "
        "written to config.json; the payload was modified."
    )


def _from_json(value: Any, path: tuple[str, ...] = ()) -> Any:
    """Inverse of :func:`_to_json`: lists back to numpy arrays (names as object arrays of str)."""
    if isinstance(value, dict):
        return {k: _from_json(v, (*path, k)) for k, v in value.items()}
    if isinstance(value, list):
        return _list_to_array(value, path)
    return value


def _list_to_array(values: list, path: tuple[str, ...]) -> np.ndarray:
    if not values:
        if path in _EMPTY_INT_FIELDS:
            return np.zeros(0, dtype=np.int64)
        if any(path[: len(prefix)] == prefix for prefix in _EMPTY_FLOAT_PREFIXES):
            return np.zeros(0, dtype=np.float64)
        return np.empty(0, dtype=object)
    if all(isinstance(v, str) for v in values):
        array = np.empty(len(values), dtype=object)  # how h5ad gives string arrays back
        array[:] = values
        return array
    if all(isinstance(v, bool) for v in values):
        return np.asarray(values, dtype=bool)
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return np.asarray(values, dtype=np.int64)
    if all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
        return np.asarray(values, dtype=np.float64)
    raise ValueError(
        f"config.json field {'/'.join(path)!r} is a list of mixed or nested values, which no "
        "cellvi model has; the file is corrupted or was modified."
    )


# -- the model card ------------------------------------------------------------------------------
def _prepare_folder(path: Path, overwrite: bool) -> None:
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"{path} exists and is not a folder; choose another path.")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise FileExistsError(
            f"The folder {path} exists and is not empty; pass overwrite=True to replace the model "
            "files in it, or choose another path."
        )
    path.mkdir(parents=True, exist_ok=True)


def _write_folder(
    payload: Mapping[str, Any], path: Path, *, license: str, repo_id: str | None = None
) -> None:
    config = _to_json({k: v for k, v in payload.items() if k != "weights"})
    (path / WEIGHTS_FILE).write_bytes(np.asarray(payload["weights"], dtype=np.uint8).tobytes())
    text = json.dumps(config, indent=2, ensure_ascii=False)
    (path / CONFIG_FILE).write_text(text + "\n", encoding="utf-8")
    (path / CARD_FILE).write_text(model_card(config, license, repo_id), encoding="utf-8")


def save(
    adata: AnnData,
    path: str | Path,
    *,
    key: str = "scvi",
    overwrite: bool = False,
    license: str = DEFAULT_LICENSE,
) -> Path:
    """Write the model in ``adata.uns[key]`` to a Hugging Face-style model folder.

    The folder gets ``model.safetensors`` (the weights, byte for byte), ``config.json`` (all
    other fields of the model payload as plain JSON) and ``README.md`` (a model card). No
    pickle is written; :func:`load` reads the folder back.

    Parameters
    ----------
    adata
        Annotated data matrix holding a trained model (``cv.tl.scvi_train``).
    path
        Folder to write; created if needed. It must not exist or be empty.
    key
        Key of the model in ``adata.uns``.
    overwrite
        Write into a non-empty folder, replacing the three model files (other files are left
        as they are).
    license
        License in the model card's metadata (a Hugging Face license identifier).

    Returns
    -------
    The folder written.
    """
    payload = get_payload(adata, key)
    decode(payload, key)  # refuse anything that would not load back
    path = Path(path)
    _prepare_folder(path, overwrite)
    _write_folder(payload, path, license=license)
    logger.info(f"    saved the model in adata.uns[{key!r}] to {path}")
    return path


def _read_folder(path: Path, key: str, source: str) -> dict[str, Any]:
    """The payload stored in a model folder, rebuilt once to check it (only opens two files)."""
    if not path.is_dir():
        raise FileNotFoundError(
            f"{source} is not a folder; pass the folder written by cv.hub.save."
        )
    missing = [name for name in (CONFIG_FILE, WEIGHTS_FILE) if not (path / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{source} has no {' or '.join(missing)}: it is not a cellvi model folder "
            "(write one with `cv.hub.save(adata, path)`)."
        )
    try:
        config = json.loads((path / CONFIG_FILE).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{CONFIG_FILE} in {source} is not valid JSON ({err}).") from err
    if not isinstance(config, dict):
        raise ValueError(f"{CONFIG_FILE} in {source} is not a JSON object; it is corrupted.")
    payload = _from_json({k: v for k, v in config.items() if k != "weights"})
    payload["weights"] = np.frombuffer((path / WEIGHTS_FILE).read_bytes(), dtype=np.uint8).copy()
    try:
        decode(payload, key)
    except (TypeError, ValueError) as err:
        raise type(err)(f"The model in {source} cannot be loaded: {err}") from err
    return payload


def load(
    path: str | Path, adata: AnnData | None = None, *, key: str = "scvi"
) -> dict[str, Any] | None:
    """Read a model folder written by :func:`save` (or pulled from the Hub).

    Only ``config.json`` and ``model.safetensors`` are opened: nothing is unpickled and no code
    is run. The model is rebuilt once to check that its weights fit its parameters.

    Parameters
    ----------
    path
        The model folder.
    adata
        Data to put the model into. It must have the model's genes in the same order and the
        registered layer and obs columns, with known categories; it is checked before anything
        is written to it.
    key
        Key in ``adata.uns`` to put the model under (also used in messages).

    Returns
    -------
    With ``adata``, ``None``; sets ``adata.uns[key]`` (the model payload, as written by
    ``cv.tl.scvi_train``), so ``cv.tl.scvi_embed(adata, key=key)`` and the other tools use it.
    Without ``adata``, the payload dict.
    """
    return _load(Path(path), adata, key, source=str(path))


def _load(path: Path, adata: AnnData | None, key: str, *, source: str) -> dict[str, Any] | None:
    payload = _read_folder(path, key, source)
    if adata is None:
        return payload
    if not isinstance(adata, AnnData):
        raise TypeError(f"adata must be an AnnData, got {type(adata).__name__}.")
    # raises a clear error naming the fix for wrong genes, columns or categories
    extract_registered_data(adata, payload["registry"], var_names=payload["var_names"])
    adata.uns[key] = payload
    logger.info(f"    loaded the model from {source} into adata.uns[{key!r}]")
    return None


# -- the Hugging Face Hub ------------------------------------------------------------------------
def push(
    adata: AnnData,
    repo_id: str,
    *,
    key: str = "scvi",
    token: str | None = None,
    private: bool = False,
    commit_message: str | None = None,
    license: str = DEFAULT_LICENSE,
) -> str:
    """Upload the model in ``adata.uns[key]`` to a Hugging Face Hub model repository.

    The model is written with :func:`save` to a temporary folder, the repository is created if
    needed, and the three files are uploaded in one commit.

    Parameters
    ----------
    adata
        Annotated data matrix holding a trained model.
    repo_id
        Repository, ``"org/name"`` or ``"user/name"``.
    key
        Key of the model in ``adata.uns``.
    token
        Hugging Face token (``None``: the one saved by ``hf auth login`` or ``HF_TOKEN``).
    private
        Create the repository as private (an existing repository keeps its visibility).
    commit_message
        Message of the upload commit (default: ``"Upload cellvi <model> model"``).
    license
        License in the model card's metadata.

    Returns
    -------
    The URL of the commit (or of the repository, if the Hub gives no commit URL).
    """
    import huggingface_hub

    payload = get_payload(adata, key)
    decode(payload, key)
    message = commit_message or f"Upload cellvi {payload['model']} model"
    with tempfile.TemporaryDirectory(prefix="cellvi-hub-") as tmp:
        folder = Path(tmp)
        _write_folder(payload, folder, license=license, repo_id=repo_id)
        api = huggingface_hub.HfApi(token=token)
        repo_url = api.create_repo(repo_id, private=private, exist_ok=True)
        info = api.upload_folder(repo_id=repo_id, folder_path=str(folder), commit_message=message)
    url = getattr(info, "commit_url", None) or str(repo_url)
    logger.info(f"    pushed the model in adata.uns[{key!r}] to {url}")
    return url


def pull(
    repo_id: str,
    adata: AnnData | None = None,
    *,
    key: str = "scvi",
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    local_files_only: bool = False,
) -> dict[str, Any] | None:
    """Download a model from the Hugging Face Hub (or its local cache) and :func:`load` it.

    Only ``*.json``, ``*.safetensors`` and ``README.md`` are downloaded, so no pickle or other
    file of the repository even reaches the disk.

    Parameters
    ----------
    repo_id
        Repository, ``"org/name"``.
    adata
        Data to put the model into (see :func:`load`).
    key
        Key in ``adata.uns`` to put the model under.
    revision
        Branch, tag or commit hash (``None``: the default branch).
    cache_dir
        Hugging Face cache folder (``None``: the default, ``HF_HUB_CACHE``).
    local_files_only
        Use only the local cache, never the network.

    Returns
    -------
    As :func:`load`: ``None`` with ``adata`` (sets ``adata.uns[key]``), else the payload dict.
    """
    import huggingface_hub

    try:
        folder = huggingface_hub.snapshot_download(
            repo_id,
            revision=revision,
            cache_dir=cache_dir,
            local_files_only=local_files_only,
            allow_patterns=ALLOW_PATTERNS,
        )
    except FileNotFoundError as err:  # huggingface_hub's LocalEntryNotFoundError is one
        where = f"revision {revision!r}" if revision else "the default branch"
        cache = str(cache_dir) if cache_dir is not None else "the default Hugging Face cache"
        reason = (
            "local_files_only=True forbids downloading it"
            if local_files_only
            else "the Hub could not be reached"
        )
        raise FileNotFoundError(
            f"The model {repo_id!r} ({where}) is not in {cache} and {reason}. Check repo_id, "
            f"revision and cache_dir, or pull it once with network access "
            f"(`cv.hub.pull({repo_id!r})`)."
        ) from err
    return _load(Path(folder), adata, key, source=f"the Hub repository {repo_id!r}")
