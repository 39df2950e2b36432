"""Run by test_checkpoint.py in a subprocess: a slow tiny training that checkpoints every epoch.

``python _resume_worker.py CHECKPOINT_DIR EPOCH_LOG WEIGHTS_OUT`` trains (resuming from the
checkpoint folder if it holds a checkpoint), appends the number of every epoch it finishes to
EPOCH_LOG, and writes the final weights blob to WEIGHTS_OUT (``.npy``).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conftest import synthetic_counts  # noqa: E402

import cellvi as cv  # noqa: E402
from cellvi.train.plan import TrainingPlan  # noqa: E402

#: Shared with the test, which trains the same model uninterrupted in its own process.
ARGS = {"max_epochs": 6, "n_hidden": 16, "batch_size": 64, "seed": 5, "precision": "32-true"}
SLEEP_S = 0.4  # per epoch, so that the test can kill the run part-way


def main(checkpoint_dir: str, epoch_log: str, weights_out: str) -> None:
    torch.set_num_threads(1)
    cv.settings.progress_bar = False
    end_of_epoch = TrainingPlan.on_train_epoch_end

    def logged(self) -> None:
        end_of_epoch(self)
        with open(epoch_log, "a") as f:
            f.write(f"{self.current_epoch + 1}\n")
        time.sleep(SLEEP_S)

    TrainingPlan.on_train_epoch_end = logged
    adata = synthetic_counts()
    cv.pp.setup_registry(adata, layer="counts", batch_key="batch")
    cv.tl.scvi_train(adata, checkpoint_dir=checkpoint_dir, resume=True, **ARGS)
    np.save(weights_out, adata.uns["scvi"]["weights"])


if __name__ == "__main__":
    main(*sys.argv[1:4])
