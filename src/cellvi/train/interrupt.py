"""Ctrl-C during training: stop after the current step and keep the last completed epoch.

Lightning answers a ``KeyboardInterrupt`` by ignoring SIGINT for the rest of the process and
calling ``sys.exit(1)``, which would end a notebook kernel's training call with ``SystemExit``
and leave Ctrl-C disabled. While cellvi trains, SIGINT instead sets a flag; the next training
step raises :class:`TrainingInterrupted`, which Lightning passes through like any error, and the
caller decides what to keep. Results are then written under :func:`deferred_interrupt`, so a
second Ctrl-C cannot leave them half written.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from lightning.pytorch.callbacks import Callback


class TrainingInterrupted(Exception):  # not a KeyboardInterrupt: Lightning would sys.exit
    """Training was stopped by Ctrl-C (SIGINT)."""


class InterruptFlag:
    """Whether SIGINT arrived while a :func:`catch_interrupt` block ran."""

    def __init__(self) -> None:
        self.raised = False

    def set(self, signum=None, frame=None) -> None:
        self.raised = True


@contextmanager
def catch_interrupt() -> Iterator[InterruptFlag]:
    """Within the block, SIGINT sets the yielded flag instead of raising ``KeyboardInterrupt``.

    Signal handlers can only be changed in the main thread; elsewhere the flag never sets and
    SIGINT keeps its usual effect.
    """
    flag = InterruptFlag()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return
    previous = signal.signal(signal.SIGINT, flag.set)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous)


@contextmanager
def deferred_interrupt() -> Iterator[None]:
    """Hold back Ctrl-C until the block has finished, then raise ``KeyboardInterrupt``."""
    with catch_interrupt() as flag:
        yield
    if flag.raised:
        raise KeyboardInterrupt


class InterruptCheck(Callback):
    """Raise :class:`TrainingInterrupted` after the step in which Ctrl-C was pressed."""

    def __init__(self, flag: InterruptFlag) -> None:
        self.flag = flag

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.flag.raised:
            raise TrainingInterrupted("training interrupted by Ctrl-C")
