"""Lightning callbacks: an epoch-level progress bar, data kept resident on the GPU."""

from __future__ import annotations

import sys

import torch
from lightning.pytorch.callbacks import Callback, ProgressBar


class EpochProgressBar(ProgressBar):
    """One tqdm bar over epochs (Lightning's default redraws a bar for every epoch)."""

    def __init__(self, description: str = "training") -> None:
        super().__init__()
        self.description = description
        self._bar = None
        self._enabled = True

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def on_train_start(self, trainer, pl_module) -> None:
        if not self._enabled:
            return
        from tqdm.auto import tqdm

        self._bar = tqdm(
            total=trainer.max_epochs,
            desc=self.description,
            unit="epoch",
            file=sys.stderr,
            dynamic_ncols=True,
        )

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self._bar is None:
            return
        metrics = {k: v for k, v in trainer.callback_metrics.items() if k.startswith("elbo")}
        self._bar.set_postfix({k: f"{float(v):.4g}" for k, v in metrics.items()}, refresh=False)
        self._bar.update(1)

    def on_train_end(self, trainer, pl_module) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


#: Keep the data on the GPU when it takes at most this fraction of the free GPU memory (the rest
#: is left for the model, activations and the optimiser).
RESIDENT_FRACTION = 0.5


def fits_on_device(nbytes: int, device: torch.device) -> bool:
    """Whether ``nbytes`` of data should live on ``device`` for the whole run.

    Only CUDA devices qualify (a CPU "device" already holds the data), and only when the data
    take at most :data:`RESIDENT_FRACTION` of the memory free there.
    """
    if device.type != "cuda":
        return False
    free, _ = torch.cuda.mem_get_info(device)
    return nbytes <= RESIDENT_FRACTION * free


class DeviceResidentData(Callback):
    """Moves the loaders' data onto the training device once, when it fits there.

    Minibatches are then gathered on the device: no host-to-device copy per step. This runs at
    ``setup``, in each training process, when the device of that process is known.
    """

    def __init__(self, loaders) -> None:
        super().__init__()
        self.loaders = [loader for loader in loaders if loader is not None]

    def setup(self, trainer, pl_module, stage: str) -> None:
        device = trainer.strategy.root_device
        moved: dict[int, object] = {}  # loaders that share data share the moved copy
        for loader in self.loaders:
            data = loader.data
            if not hasattr(data, "to") or not fits_on_device(data.nbytes, device):
                continue
            if id(data) not in moved:
                moved[id(data)] = data.to(device)
            loader.data = moved[id(data)]
