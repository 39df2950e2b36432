"""Setting up and running a Lightning trainer for a training plan."""

from __future__ import annotations

import contextlib
import logging
import math
import warnings
from collections.abc import Sequence

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import EarlyStopping

from ..data.backed import BackedData
from ..data.chunked_loader import ChunkedLoader
from ..data.loader import Companion, CompanionLoader, MinibatchLoader, TensorData
from .callbacks import DeviceResidentData, EpochProgressBar
from .checkpoint import CheckpointSetup
from .interrupt import InterruptCheck, TrainingInterrupted, catch_interrupt
from .plan import TrainingPlan

#: Cell passes a default-length run aims for (``max_epochs`` = this / n_cells, within bounds).
DEFAULT_CELL_PASSES = 5_000_000
MIN_DEFAULT_EPOCHS, MAX_DEFAULT_EPOCHS = 20, 400


def default_max_epochs(n_cells: int) -> int:
    """Default number of epochs: about 5 million cell passes, between 20 and 400 epochs.

    Small data sets get many epochs (400 for 12,500 cells or fewer), large ones few (20 from
    250,000 cells), so the number of gradient steps stays within a useful range.
    """
    epochs = math.ceil(DEFAULT_CELL_PASSES / max(n_cells, 1))
    return int(np.clip(epochs, MIN_DEFAULT_EPOCHS, MAX_DEFAULT_EPOCHS))


def default_kl_warmup(max_epochs: int) -> int:
    """Default KL warm-up: the first quarter of training, so it always ends before training."""
    return max(1, math.ceil(max_epochs / 4))


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 matrices natively (AVX512-BF16 or AMX)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "")
    except OSError:  # not Linux: stay in float32
        return False
    return any(flag in flags.split() for flag in ("avx512_bf16", "amx_bf16"))


def resolve_precision(precision: str, accelerator: str = "auto") -> str:
    """Lightning precision for ``precision="auto"``.

    On a CPU with native bfloat16 matrix instructions, ``"bf16-mixed"``: matrix products in
    bfloat16 with float32 accumulation (several times faster there), float32 weights, and the
    likelihood, KL and every evaluation in float32. Elsewhere, and on GPUs, ``"32-true"``.
    """
    if precision != "auto":
        return precision
    on_gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    return "bf16-mixed" if not on_gpu and cpu_has_native_bf16() else "32-true"


def resolve_devices(devices, strategy: str, num_nodes: int = 1) -> tuple:
    """``devices`` and ``strategy`` for the Lightning trainer.

    ``devices="auto"`` means one device (Lightning would start one process per visible GPU);
    several devices or nodes with ``strategy="auto"`` use ``"ddp_spawn"``. Strategies that
    would not shard the cells (e.g. ``"dp"``, DeepSpeed, FSDP) are refused.
    """
    if devices == "auto":
        devices = 1
    n_devices = len(devices) if isinstance(devices, list | tuple) else int(devices)
    if n_devices == -1 or n_devices > 1 or num_nodes > 1:
        if strategy == "auto":
            strategy = "ddp_spawn"
        name = strategy if isinstance(strategy, str) else type(strategy).__name__.lower()
        if not name.startswith("ddp"):
            raise ValueError(
                f"strategy={strategy!r}: cellvi trains on several devices with Lightning's DDP "
                'strategies only; use strategy="ddp_spawn" (works in notebooks) or "ddp" '
                "(scripts, torchrun, srun)."
            )
    return devices, strategy


def _training_loader(data, indices, batch_size: int, generator, companion=None):
    """Shuffled minibatches of the training cells; counts on disk are read chunk by chunk.
    With a :class:`~cellvi.data.loader.Companion`, each minibatch carries one of its own."""
    options = {"batch_size": batch_size, "generator": generator, "dense_x": False, "shard": True}
    if isinstance(data, BackedData):
        loader = ChunkedLoader(data, indices, **options)
    else:
        loader = MinibatchLoader(data, indices, shuffle=True, **options)
    return loader if companion is None else CompanionLoader(loader, companion, batch_size)


@contextlib.contextmanager
def _tensor_sharing_for(strategy):
    """Spawned processes receive tensors through shared memory; the default way (passing file
    descriptors) fails in some containers, so named shared-memory files are used meanwhile."""
    if not (isinstance(strategy, str) and "spawn" in strategy):
        yield
        return
    previous = torch.multiprocessing.get_sharing_strategy()
    torch.multiprocessing.set_sharing_strategy("file_system")
    try:
        yield
    finally:
        torch.multiprocessing.set_sharing_strategy(previous)


def fit(
    plan: TrainingPlan,
    data: TensorData,
    *,
    train_indices: np.ndarray,
    validation_indices: np.ndarray,
    batch_size: int,
    max_epochs: int,
    generator: torch.Generator,
    early_stopping: bool = False,
    early_stopping_patience: int = 45,
    check_val_every_n_epoch: int | None = None,
    accelerator: str = "auto",
    devices: int | str = "auto",
    progress_bar: bool = True,
    description: str = "training",
    precision: str = "32-true",
    strategy: str = "auto",
    num_nodes: int = 1,
    callbacks: Sequence[pl.Callback] | None = None,
    checkpoint: CheckpointSetup | None = None,
    companion: Companion | None = None,
) -> TrainingPlan:
    """Train ``plan`` on ``data``; validation runs every ``check_val_every_n_epoch`` epochs
    (every epoch when early stopping or LR-on-plateau needs it, never when ``None``).

    With several devices or nodes, each process trains on its own share of the cells (see
    :meth:`~cellvi.data.loader.MinibatchLoader.epoch_order`) and gradients are averaged by
    Lightning's DDP; ``strategy="auto"`` then means ``"ddp_spawn"``, which also works from
    notebooks and brings the trained weights back to the calling process.
    ``callbacks`` are added to the trainer's own (progress bar, early stopping).
    ``checkpoint`` saves (and resumes from) pickle-free checkpoints. ``companion`` adds a second
    minibatch to every training minibatch (see :class:`~cellvi.data.loader.Companion`). Ctrl-C stops training
    after the current step with :class:`~cellvi.train.interrupt.TrainingInterrupted`."""
    devices, strategy = resolve_devices(devices, strategy, num_nodes)
    train = _training_loader(data, train_indices, batch_size, generator, companion)
    has_val = len(validation_indices) > 0
    needs_val = early_stopping or plan.reduce_lr_on_plateau
    if needs_val and not has_val:
        raise ValueError(
            "early_stopping / reduce_lr_on_plateau need validation cells: use train_size < 1."
        )
    every = 1 if needs_val else check_val_every_n_epoch
    val = None
    if has_val and every:
        val = MinibatchLoader(
            data, validation_indices, batch_size=max(batch_size, 1024), dense_x=False, shard=True
        )
    extra_callbacks = list(callbacks or ())
    callbacks = [DeviceResidentData([train, val])]
    if progress_bar:
        callbacks.append(EpochProgressBar(description))
    if early_stopping:
        callbacks.append(
            EarlyStopping(
                monitor="elbo_validation",
                mode="max",
                patience=early_stopping_patience,
                min_delta=0.0,
            )
        )
    if checkpoint is not None:
        callbacks.append(checkpoint.callback(generator))
    callbacks.extend(extra_callbacks)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    logging.getLogger("lightning.fabric").setLevel(logging.WARNING)
    trainer = pl.Trainer(
        max_epochs=max_epochs,
        accelerator=accelerator,
        devices=devices,
        strategy=strategy,
        num_nodes=num_nodes,
        logger=False,
        enable_checkpointing=checkpoint is not None,  # our own Checkpoint callback, if any
        enable_model_summary=False,
        enable_progress_bar=progress_bar,
        callbacks=callbacks,
        num_sanity_val_steps=0,
        check_val_every_n_epoch=every or 1,
        limit_val_batches=1.0 if val is not None else 0,
        precision=resolve_precision(precision, accelerator),
        plugins=[checkpoint.io] if checkpoint is not None else None,
    )
    resume_path = checkpoint.resume_path if checkpoint is not None else None
    with warnings.catch_warnings(), _tensor_sharing_for(strategy), catch_interrupt() as interrupt:
        trainer.callbacks.append(InterruptCheck(interrupt))
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*`validation_step` but have no `val_data.*")
        warnings.filterwarnings("ignore", message=".*LeafSpec.*is deprecated.*")
        trainer.fit(plan, train_dataloaders=train, val_dataloaders=val, ckpt_path=resume_path)
    if interrupt.raised:  # pressed after the last step: training is complete, honour it anyway
        raise TrainingInterrupted("training interrupted by Ctrl-C")
    return plan
