"""Reproducible seeding of every random number generator a run touches."""

from __future__ import annotations

import random

import numpy as np
import torch


def seed_everything(seed: int) -> torch.Generator:
    """Seed python, numpy and torch; return a CPU generator for data shuffling."""
    random.seed(seed)
    np.random.seed(seed % (2**32))  # noqa: NPY002  (third-party code may use the legacy RNG)
    torch.manual_seed(seed)
    generator = torch.Generator()
    generator.manual_seed(seed)
    return generator
