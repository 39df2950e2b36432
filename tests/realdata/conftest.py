"""Real-data tests: quiet, and with 2 torch threads (they train on thousands of cells)."""

import pytest
import torch

import cellvi as cv


@pytest.fixture(autouse=True)
def _quiet_and_small():
    """Overrides the top-level conftest fixture of the same name (which uses 1 thread)."""
    cv.settings.progress_bar = False
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(previous)
