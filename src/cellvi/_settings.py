"""Global settings: seed, threads, progress bars and verbosity."""

from __future__ import annotations

import logging
import os

import torch

_LEVELS = {0: logging.ERROR, 1: logging.WARNING, 2: logging.INFO, 3: logging.DEBUG}


class CellviSettings:
    """Package-wide settings, available as ``cellvi.settings``.

    Attributes
    ----------
    seed
        Default random seed used by training functions when they are not given one.
    n_threads
        Number of CPU threads torch may use (``None`` keeps torch's default).
    progress_bar
        Whether training shows a progress bar.
    verbosity
        0 = errors, 1 = warnings, 2 = info (default), 3 = debug.
    device
        Where trained models run for embedding, evaluation and normalisation: ``"auto"`` (a
        GPU when torch sees one, else the CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``. Training
        uses the ``accelerator`` argument of the training functions instead.
    native_kernels
        Whether cellvi may use its compiled C kernels on the CPU: the NB / ZINB and protein
        mixture likelihoods, dropout, the covariate + batch-norm + ReLU + dropout step of each
        hidden layer in training, and the gathering of sparse minibatches (built on first use
        with the system C compiler; see :mod:`cellvi.utils.native`). They compute what the
        torch implementations compute, each about two to six times faster. Default:
        ``True``, unless the environment variable ``CELLVI_NATIVE_KERNELS`` is ``0``.
    """

    def __init__(self) -> None:
        self.seed = 0
        self.progress_bar = True
        self._device = "auto"
        self._n_threads: int | None = None
        self._verbosity = 2
        self._native_kernels = os.environ.get("CELLVI_NATIVE_KERNELS", "1") != "0"
        self._apply_verbosity()

    @property
    def n_threads(self) -> int | None:
        return self._n_threads

    @n_threads.setter
    def n_threads(self, value: int | None) -> None:
        if value is not None:
            if int(value) < 1:
                raise ValueError(f"n_threads must be a positive integer or None, got {value!r}.")
            torch.set_num_threads(int(value))
        self._n_threads = None if value is None else int(value)

    @property
    def native_kernels(self) -> bool:
        return self._native_kernels

    @native_kernels.setter
    def native_kernels(self, value: bool) -> None:
        if not isinstance(value, bool):
            raise ValueError(f"native_kernels must be True or False, got {value!r}.")
        self._native_kernels = value

    @property
    def device(self) -> str:
        return self._device

    @device.setter
    def device(self, value: str) -> None:
        value = str(value)
        if value not in ("auto", "cpu") and not value.startswith("cuda"):
            raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {value!r}.")
        self._device = value

    @property
    def verbosity(self) -> int:
        return self._verbosity

    @verbosity.setter
    def verbosity(self, value: int) -> None:
        if value not in _LEVELS:
            raise ValueError(f"verbosity must be one of {sorted(_LEVELS)}, got {value!r}.")
        self._verbosity = int(value)
        self._apply_verbosity()

    def _apply_verbosity(self) -> None:
        logger = logging.getLogger("cellvi")
        logger.setLevel(_LEVELS[self._verbosity])
        if not logger.handlers:
            handler = logging.StreamHandler()
            handler.setFormatter(logging.Formatter("%(message)s"))
            logger.addHandler(handler)
            logger.propagate = False

    def __repr__(self) -> str:
        return (
            f"CellviSettings(seed={self.seed}, n_threads={self.n_threads}, "
            f"progress_bar={self.progress_bar}, verbosity={self.verbosity}, "
            f"device={self.device!r}, native_kernels={self.native_kernels})"
        )


settings = CellviSettings()
