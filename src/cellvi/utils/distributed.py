"""Where this process stands in a distributed (multi-process) run."""

from __future__ import annotations

import os

import torch


def world_and_rank() -> tuple[int, int]:
    """``(world_size, global_rank)`` of the initialised process group, ``(1, 0)`` without one."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


def is_main_process() -> bool:
    """Whether this process is the one that keeps results (global rank 0).

    True in a plain single-process session, and in the notebook/script process of
    ``strategy="ddp_spawn"``; in runs where every process executes the script (``strategy="ddp"``
    launched by Lightning, ``torchrun`` or ``srun``) only on the process of global rank 0.
    Guard writing files with it::

        cv.tl.scvi_train(adata, accelerator="gpu", devices=4, strategy="ddp")
        if cv.utils.is_main_process():
            adata.write_h5ad("trained.h5ad")
    """
    _, rank = world_and_rank()
    if rank:
        return False
    # launchers set RANK before the process group exists (and it may already be torn down)
    return int(os.environ.get("RANK", "0")) == 0
