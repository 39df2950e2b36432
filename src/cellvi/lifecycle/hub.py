"""Trained models as Hugging Face-style model folders: safetensors, JSON and a model card.

A model folder holds three files, and a fourth when data is shared with the model:

``model.safetensors``
    The payload's ``weights``, byte for byte (a safetensors file: loading it never runs code).
``config.json``
    Every other field of the payload (see ``docs/payload.md``), numpy values made plain JSON.
``README.md``
    A model card with YAML front matter (``library_name: cellvi``) for the Hub.
``adata.h5ad`` or ``mdata.h5mu`` (``include_data=True`` or ``"minified"``)
    The reference data, full or minified (see :mod:`cellvi.lifecycle.hub_data`); a MuData
    for an RNA + protein model trained on one.

Reading a folder only ever opens ``config.json`` and ``model.safetensors`` (and, for
:func:`load_data`, ``adata.h5ad`` or ``mdata.h5mu``, which anndata and mudata read without
unpickling): no pickle, no code.
:func:`pull` downloads only those names (and the card), so nothing else reaches the disk.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from anndata import AnnData

from ..data._mudata import is_mudata
from ..data._protein_loader import protein_tensor_data
from ..data.registry import extract_registered_data
from .hub_data import (
    DATA_FILE,
    MUDATA_FILE,
    SHARED_DATA_KEY,
    IncludeData,
    check_include_data,
    data_file,
    read_data_file,
    rename_model_fields,
    shared_anndata,
    write_data_file,
)
from .hub_json import from_json, to_json
from .model_card import CARD_FILE, CONFIG_FILE, WEIGHTS_FILE, model_card
from .payload import decode, to_builtin
from .runtime import compute_latent, get_payload, load_model, model_data

if TYPE_CHECKING:
    from mudata import MuData

logger = logging.getLogger("cellvi")

FILES = (WEIGHTS_FILE, CONFIG_FILE, CARD_FILE)
ALLOW_PATTERNS = ["*.json", "*.safetensors", CARD_FILE]
DEFAULT_LICENSE = "cc-by-4.0"


# -- model folders -------------------------------------------------------------------------------
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
    payload: Mapping[str, Any],
    path: Path,
    *,
    license: str,
    repo_id: str | None = None,
    data: AnnData | None = None,
) -> None:
    """The model files, and the data file when ``data`` is given (else any old one goes)."""
    config = to_json({k: v for k, v in payload.items() if k != "weights"})
    written = None if data is None else data_file(data)
    (path / WEIGHTS_FILE).write_bytes(np.asarray(payload["weights"], dtype=np.uint8).tobytes())
    text = json.dumps(config, indent=2, ensure_ascii=False)
    (path / CONFIG_FILE).write_text(text + "\n", encoding="utf-8")
    card = model_card(config, license, repo_id, data=_data_kind(data), data_file=written)
    (path / CARD_FILE).write_text(card, encoding="utf-8")
    write_data_file(data, path)


def _data_kind(data: AnnData | None) -> str | None:
    return None if data is None else str(data.uns[SHARED_DATA_KEY]["include_data"])


def _shared_data(adata: AnnData, key: str, include_data: IncludeData) -> AnnData | None:
    check_include_data(include_data)
    return shared_anndata(adata, key, include_data) if include_data else None


def save(
    adata: AnnData,
    path: str | Path,
    *,
    key: str = "scvi",
    include_data: IncludeData = False,
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
        Annotated data matrix holding a trained model (``cv.tl.train`` or a family's training
        verb), or the MuData (or AnnData with proteins in ``.obsm``) of an RNA + protein model.
    path
        Folder to write; created if needed. It must not exist or be empty.
    key
        Key of the model in ``adata.uns``.
    include_data
        Also write ``adata.h5ad`` with the reference data (``mdata.h5mu`` for an RNA +
        protein model trained on a MuData; read it back with :func:`load_data`): ``True``, the
        registered counts (RNA and proteins), ``obs`` columns and the latent; ``"minified"``,
        the same without counts but with each cell's latent posterior (mean, variance) and
        library size, enough for ``cv.tl.embed``, ``cv.tl.normalize`` (denoised proteins
        too), the family's own embedding and normalising verbs, posterior sampling,
        ``cv.tl.latent_posterior`` and ``cv.tl.differential_expression`` on the reference.
    overwrite
        Write into a non-empty folder, replacing the model files (a data file of an
        earlier save is removed unless data is written; other files are left as they are).
    license
        License in the model card's metadata (a Hugging Face license identifier).

    Returns
    -------
    The folder written.
    """
    payload = get_payload(adata, key)
    decode(payload, key)  # refuse anything that would not load back
    data = _shared_data(adata, key, include_data)
    path = Path(path)
    _prepare_folder(path, overwrite)
    _write_folder(payload, path, license=license, data=data)
    logger.info(f"    saved the model in adata.uns[{key!r}] to {path}")
    return path


def _read_folder(path: Path, key: str | None, source: str) -> dict[str, Any]:
    """The payload stored in a model folder, rebuilt once to check it (only opens two files);
    ``key`` (``None``: the model family) only names the model in messages."""
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
    payload = from_json({k: v for k, v in config.items() if k != "weights"})
    payload["weights"] = np.frombuffer((path / WEIGHTS_FILE).read_bytes(), dtype=np.uint8).copy()
    try:
        decode(payload, key or str(payload.get("model", "scvi")))
    except (TypeError, ValueError) as err:
        raise type(err)(f"The model in {source} cannot be loaded: {err}") from err
    return payload


def load(
    path: str | Path, adata: AnnData | None = None, *, key: str | None = None
) -> dict[str, Any] | None:
    """Read a model folder written by :func:`save` (or pulled from the Hub).

    Only ``config.json`` and ``model.safetensors`` are opened: nothing is unpickled and no code
    is run. The model is rebuilt once to check that its weights fit its parameters.

    Parameters
    ----------
    path
        The model folder.
    adata
        Data to put the model into (an AnnData; for an RNA + protein model a MuData or AnnData laid
        out like its training data). It must have the model's genes (and proteins) in the same
        order and the registered layers and obs columns, with known categories; it is checked
        before anything is written to it.
    key
        Key in ``adata.uns`` to put the model under (``None``: the name of the model's
        family, e.g. ``"scvi"``, the key its training verb uses).

    Returns
    -------
    With ``adata``, ``None``; sets ``adata.uns[key]`` (the model payload, as written by
    ``cv.tl.scvi_train``), so ``cv.tl.scvi_embed(adata, key=key)`` and the other tools use it.
    Without ``adata``, the payload dict.
    """
    return _load(Path(path), adata, key, source=str(path))


def _load(
    path: Path, adata: AnnData | None, key: str | None, *, source: str
) -> dict[str, Any] | None:
    payload = _read_folder(path, key, source)
    if adata is None:
        return payload
    _attach(payload, adata, key or str(payload["model"]), source=source)
    return None


def _attach(payload: dict[str, Any], adata, key: str, *, source: str) -> None:
    """Put ``payload`` into ``adata.uns[key]`` after checking ``adata`` fits the model."""
    if not (isinstance(adata, AnnData) or is_mudata(adata)):
        raise TypeError(f"adata must be an AnnData or MuData, got {type(adata).__name__}.")
    # raises a clear error naming the fix for wrong genes, proteins, columns or categories
    registry = payload["registry"]
    if "protein" in registry:
        names = to_builtin(payload["protein_names"])
        protein_tensor_data(adata, registry, var_names=payload["var_names"], protein_names=names)
    else:
        extract_registered_data(adata, registry, var_names=payload["var_names"])
    adata.uns[key] = payload
    logger.info(f"    loaded the model from {source} into adata.uns[{key!r}]")


def load_data(path: str | Path, *, key: str | None = None) -> AnnData | MuData:
    """The reference data saved with a model (``cv.hub.save(..., include_data=...)``), with the
    model in ``.uns[key]``.

    Parameters
    ----------
    path
        The model folder.
    key
        Key in ``.uns`` to put the model under (``None``: the name of the model's family,
        e.g. ``"scvi"``).

    Returns
    -------
    The AnnData of ``adata.h5ad`` (the MuData of ``mdata.h5mu`` for an RNA + protein model
    trained on one): the registered ``obs`` columns, the genes (and proteins), the latent
    ``obsm["X_" + key]``, the model in ``uns[key]`` and either the registered counts or, when
    minified, all-zero counts and the latent posterior (``obsm[key + "_qz_m"]``,
    ``obsm[key + "_qz_v"]``) and log library sizes (``obs[key + "_log_library_m"]``,
    ``obs[key + "_log_library_v"]``) that ``cv.tl`` functions use in place of the counts.
    """
    return _load_data(Path(path), key, source=str(path))


def _load_data(path: Path, key: str | None, *, source: str) -> AnnData | MuData:
    payload = _read_folder(path, key, source)
    key = key or str(payload["model"])
    adata = rename_model_fields(read_data_file(path, source), key)
    _attach(payload, adata, key, source=source)
    if f"X_{key}" not in adata.obsm:  # minified: the latent mean is the stored posterior's
        model = load_model(adata, key)
        adata.obsm[f"X_{key}"] = compute_latent(model.module, model_data(adata, model))
    return adata


# -- the Hugging Face Hub ------------------------------------------------------------------------
def push(
    adata: AnnData,
    repo_id: str,
    *,
    key: str = "scvi",
    include_data: IncludeData = False,
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
    include_data
        Also upload the reference data, full (``True``) or ``"minified"`` (see :func:`save`);
        :func:`pull_data` downloads it.
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
    data = _shared_data(adata, key, include_data)
    message = commit_message or f"Upload cellvi {payload['model']} model"
    with tempfile.TemporaryDirectory(prefix="cellvi-hub-") as tmp:
        folder = Path(tmp)
        _write_folder(payload, folder, license=license, repo_id=repo_id, data=data)
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
    key: str | None = None,
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
        Key in ``adata.uns`` to put the model under (``None``: the model family, as in
        :func:`load`).
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
    folder = _download(repo_id, revision, cache_dir, local_files_only, ALLOW_PATTERNS)
    return _load(folder, adata, key, source=f"the Hub repository {repo_id!r}")


def pull_data(
    repo_id: str,
    *,
    key: str | None = None,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    local_files_only: bool = False,
) -> AnnData | MuData:
    """Download a model and the reference data pushed with it (``include_data=``).

    Parameters
    ----------
    repo_id
        Repository, ``"org/name"``.
    key
        Key in ``.uns`` to put the model under (``None``: the model family, as in
        :func:`load`).
    revision, cache_dir, local_files_only
        As in :func:`pull`.

    Returns
    -------
    The reference data (AnnData or MuData) with the model in ``.uns[key]``, as
    :func:`load_data` gives it.
    """
    patterns = [*ALLOW_PATTERNS, DATA_FILE, MUDATA_FILE]
    folder = _download(repo_id, revision, cache_dir, local_files_only, patterns)
    return _load_data(folder, key, source=f"the Hub repository {repo_id!r}")


def _download(repo_id, revision, cache_dir, local_files_only, patterns: list[str]) -> Path:
    """The snapshot folder of ``repo_id`` holding only files matching ``patterns``."""
    import huggingface_hub

    try:
        folder = huggingface_hub.snapshot_download(
            repo_id,
            revision=revision,
            cache_dir=cache_dir,
            local_files_only=local_files_only,
            allow_patterns=patterns,
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
    return Path(folder)
