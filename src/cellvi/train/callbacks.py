"""Lightning callbacks: an epoch-level progress bar."""

from __future__ import annotations

import sys

from lightning.pytorch.callbacks import ProgressBar


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
