"""Training checkpoints without pickle: one safetensors file with a JSON description.

Lightning's own checkpoints are ``torch.save`` pickles, and loading a pickle can run any code.
Here a :class:`SafeCheckpointIO` plugin writes Lightning's checkpoint dict (weights, optimizer
and scheduler state, loop counters, callback state) as a safetensors file: every tensor or array
is a safetensors entry, and everything else (numbers, strings, the nesting) is a JSON document in
the file's metadata. Reading it back only parses JSON and tensor bytes; nothing is unpickled.

:class:`EpochCheckpoint` saves every ``every_n_epochs`` epochs (and after the last one), adding
the random number generator states and the training history, so that a resumed run continues
exactly where the checkpoint was taken. Files are written to a temporary name and renamed, so a
run killed while saving leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.fabric.plugins import CheckpointIO
from lightning.pytorch.callbacks import Checkpoint
from safetensors import safe_open
from safetensors.torch import save as save_safetensors

CHECKPOINT_FILE = "checkpoint.safetensors"
FORMAT = "cellvi-checkpoint"
FORMAT_VERSION = 1
_META_KEY = "cellvi-checkpoint"


# -- nested values <-> JSON + tensors -----------------------------------------------------------
def _encode(value: Any, tensors: dict[str, torch.Tensor], path: str) -> Any:
    """A JSON value describing `value`; tensors and arrays go to `tensors` by reference."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, torch.Tensor):
        name = f"t{len(tensors)}"
        tensor = value.detach().cpu().contiguous()
        # safetensors refuses tensors that share memory; copy only those (copying all is slow)
        if tensor.untyped_storage().data_ptr() in {
            t.untyped_storage().data_ptr() for t in tensors.values()
        }:
            tensor = tensor.clone()
        tensors[name] = tensor
        return {"tensor": name}
    if isinstance(value, np.ndarray):
        # safetensors has no unsigned 32-bit type: store widened, restore the dtype on reading
        name = f"t{len(tensors)}"
        wide = np.int64 if value.dtype.kind in "iub" else np.float64
        tensors[name] = torch.from_numpy(np.ascontiguousarray(value, dtype=wide))
        return {"ndarray": name, "dtype": value.dtype.str}
    if isinstance(value, tuple):
        return {"tuple": [_encode(v, tensors, f"{path}[{i}]") for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [_encode(v, tensors, f"{path}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict):
        items = []
        for key, item in value.items():
            if not isinstance(key, str | int):
                raise TypeError(f"checkpoint key {key!r} at {path} is not a str or int.")
            items.append([key, _encode(item, tensors, f"{path}/{key}")])
        return {"dict": items}
    raise TypeError(
        f"The checkpoint value at {path} is a {type(value).__name__}; cellvi checkpoints hold "
        "only tensors, arrays, numbers, strings and containers of them (no pickle)."
    )


def _decode(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list):
        return [_decode(v, tensors) for v in value]
    if isinstance(value, dict) and len(value) in (1, 2):
        if "tensor" in value:
            return tensors[value["tensor"]]
        if "ndarray" in value:
            return tensors[value["ndarray"]].numpy().astype(np.dtype(value["dtype"]))
        if "tuple" in value:
            return tuple(_decode(v, tensors) for v in value["tuple"])
        if "dict" in value:
            return {key: _decode(item, tensors) for key, item in value["dict"]}
    raise ValueError(f"unexpected entry {str(value)[:80]!r}")


def write_checkpoint(checkpoint: dict[str, Any], path: str | Path) -> None:
    """Write `checkpoint` to `path` atomically (temporary file, fsync, rename)."""
    path = Path(path)
    tensors: dict[str, torch.Tensor] = {}
    tree = _encode(checkpoint, tensors, "checkpoint")
    meta = {"format": FORMAT, "version": FORMAT_VERSION, "tree": tree}
    blob = save_safetensors(tensors, metadata={_META_KEY: json.dumps(meta)})
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(blob)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _open_meta(path: Path) -> tuple[dict[str, Any], Any]:
    try:
        handle = safe_open(str(path), framework="pt")
        meta = json.loads(handle.metadata()[_META_KEY])
    except Exception as err:  # safetensors and json raise their own error types
        raise ValueError(
            f"{path} is not a readable cellvi checkpoint ({type(err).__name__}: {err}); it is "
            "corrupted or was written by another program. Delete it to start from scratch."
        ) from err
    if meta.get("format") != FORMAT or int(meta.get("version", 0)) > FORMAT_VERSION:
        raise ValueError(
            f"{path} is a checkpoint format this cellvi cannot read ({meta.get('format')!r} "
            f"version {meta.get('version')!r}); upgrade cellvi or start from scratch."
        )
    return meta, handle


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Inverse of :func:`write_checkpoint`; parses JSON and tensor bytes only."""
    path = Path(path)
    meta, handle = _open_meta(path)
    tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
    try:
        return _decode(meta["tree"], tensors)
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{path} is a corrupted cellvi checkpoint ({err}).") from err


def _section(path: str | Path, key: str) -> Any:
    """``checkpoint["cellvi"][key]`` (tensor-free), without loading any tensor."""
    meta, _ = _open_meta(Path(path))
    try:
        node = meta["tree"]
        for name in ("cellvi", key):
            node = dict((k, v) for k, v in node["dict"])[name]
        return _decode(node, {})
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{path} is a corrupted cellvi checkpoint (no {key}: {err}).") from err


def read_run_info(path: str | Path) -> dict[str, Any]:
    """The ``run`` description a checkpoint was saved with."""
    return _section(path, "run")


def read_checkpoint_epochs(path: str | Path) -> int:
    """Number of epochs completed when the checkpoint at `path` was saved."""
    return int(_section(path, "epochs_completed"))


class SafeCheckpointIO(CheckpointIO):
    """Lightning checkpoint plugin that never pickles: see :func:`write_checkpoint`."""

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        write_checkpoint(checkpoint, path)

    def load_checkpoint(self, path, map_location=None, weights_only=None) -> dict[str, Any]:
        return read_checkpoint(path)

    def remove_checkpoint(self, path) -> None:
        Path(path).unlink(missing_ok=True)


# -- random number generators -----------------------------------------------------------------
def rng_states(generator: torch.Generator) -> dict[str, Any]:
    """Every RNG state a training step reads, as tensors, arrays and numbers."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()  # noqa: NPY002
    states = {
        "torch": torch.get_rng_state(),
        "shuffle": generator.get_state(),
        "numpy": {"kind": kind, "keys": keys, "pos": pos, "has_gauss": has_gauss, "cached": cached},
        "python": list(random.getstate()),
    }
    if torch.cuda.is_available():
        states["cuda"] = list(torch.cuda.get_rng_state_all())
    return states


def set_rng_states(states: dict[str, Any], generator: torch.Generator) -> None:
    """Inverse of :func:`rng_states`."""
    torch.set_rng_state(states["torch"])
    generator.set_state(states["shuffle"])
    n = states["numpy"]
    np.random.set_state(  # noqa: NPY002
        (n["kind"], n["keys"].astype(np.uint32), n["pos"], n["has_gauss"], n["cached"])
    )
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


# -- the callback ---------------------------------------------------------------------------------
class EpochCheckpoint(Checkpoint):
    """Save a checkpoint every `every_n_epochs` epochs and after the last one.

    Subclassing :class:`~lightning.pytorch.callbacks.Checkpoint` makes Lightning call it after
    the training plan's own end-of-epoch hook, so the saved history includes the epoch.
    """

    def __init__(
        self, path: Path, every_n_epochs: int, generator: torch.Generator, run: dict[str, Any]
    ) -> None:
        self.path, self.every_n_epochs = Path(path), int(every_n_epochs)
        self.generator, self.run = generator, run
        self._restored: dict[str, Any] | None = None

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        epoch = trainer.current_epoch + 1
        last = epoch >= (trainer.max_epochs or 0) or trainer.should_stop
        if epoch % self.every_n_epochs == 0 or last:
            trainer.save_checkpoint(self.path)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        epochs = trainer.current_epoch + 1
        checkpoint["cellvi"] = {
            "run": self.run,
            "epochs_completed": epochs,
            # early stopping ends a run without a trace in Lightning's loop state
            "finished": bool(trainer.should_stop or epochs >= (trainer.max_epochs or 0)),
            "rng": rng_states(self.generator),
            "history": {k: list(v) for k, v in pl_module.history.items()},
        }

    def on_load_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        self._restored = checkpoint["cellvi"]
        pl_module.history = {k: list(v) for k, v in self._restored["history"].items()}

    def on_train_start(self, trainer, pl_module) -> None:
        # RNGs are restored as late as possible, so nothing Lightning does while setting up the
        # run can draw from them and shift the resumed run away from an uninterrupted one
        if self._restored is not None:
            set_rng_states(self._restored["rng"], self.generator)
            trainer.should_stop = trainer.should_stop or self._restored.get("finished", False)
            pl_module.last_good_state = {
                k: v.detach().clone() for k, v in pl_module.module.state_dict().items()
            }
            self._restored = None


# -- what scvi_train asks for ---------------------------------------------------------------------
@dataclass
class CheckpointSetup:
    """Where to checkpoint, how often, and the checkpoint to resume from (``None``: fresh)."""

    path: Path
    every_n_epochs: int
    run: dict[str, Any]
    resume_path: Path | None = None
    epochs_done: int = 0
    io: SafeCheckpointIO = field(default_factory=SafeCheckpointIO)

    def callback(self, generator: torch.Generator) -> EpochCheckpoint:
        return EpochCheckpoint(self.path, self.every_n_epochs, generator, self.run)


def _differences(saved: dict[str, Any], run: dict[str, Any]) -> list[str]:
    keys = sorted(set(saved) | set(run))
    return [f"{k}: {saved.get(k)!r} -> {run.get(k)!r}" for k in keys if saved.get(k) != run.get(k)]


def prepare_checkpoint(
    directory: str | Path, *, every_n_epochs: int, resume: bool, run: dict[str, Any]
) -> CheckpointSetup:
    """Check the checkpoint folder before training; find the checkpoint to resume from.

    `run` describes the training (JSON values); a checkpoint is resumed only by a run with the
    same description, so a resumed model is the one the arguments ask for.
    """
    if int(every_n_epochs) < 1:
        raise ValueError(f"checkpoint_every must be a positive integer, got {every_n_epochs}.")
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise FileExistsError(f"checkpoint_dir {str(directory)!r} is a file; pass a folder.")
    path = directory / CHECKPOINT_FILE
    run = json.loads(json.dumps(run))  # the form it has after a round trip through the file
    setup = CheckpointSetup(path, int(every_n_epochs), run)
    if not path.exists():
        directory.mkdir(parents=True, exist_ok=True)
        return setup
    if not resume:
        raise FileExistsError(
            f"{path} holds a checkpoint of an earlier run; pass resume=True to continue it, or "
            "choose an empty checkpoint_dir (or delete the file) to start from scratch."
        )
    saved = read_run_info(path)
    changed = _differences(saved, run)
    if changed:
        raise ValueError(
            f"The checkpoint in {str(directory)!r} was saved by a run with other arguments or "
            f"data ({'; '.join(changed)}); resume with the same arguments, or pass another "
            "checkpoint_dir to start a new run."
        )
    setup.resume_path = path
    setup.epochs_done = int(read_checkpoint_epochs(path))
    return setup
