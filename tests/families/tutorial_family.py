"""The family that tutorials/custom_model.py defines, registered from the tutorial itself.

The tutorial's code cells (jupytext percent format) run up to and including the one that calls
``register_family``, so the contract suite runs the very code a user reads, not a copy of it.
"""

from __future__ import annotations

import re
from pathlib import Path

TUTORIAL = Path(__file__).resolve().parents[2] / "tutorials" / "custom_model.py"


def code_cells(source: str) -> list[str]:
    """The code cells of a percent-format script (markdown cells left out)."""
    cells = re.split(r"^# %%.*$", source, flags=re.M)
    headers = re.findall(r"^# %%.*$", source, flags=re.M)
    return [
        cell for header, cell in zip(headers, cells[1:], strict=True) if "[markdown]" not in header
    ]


def register_tutorial_family() -> str:
    """Run the tutorial's definitions; returns the name of the family it registered."""
    namespace: dict = {"__name__": "custom_model_tutorial"}
    for cell in code_cells(TUTORIAL.read_text(encoding="utf-8")):
        exec(compile(cell, str(TUTORIAL), "exec"), namespace)  # noqa: S102
        if "register_family(" in cell:
            return namespace["LDVAE"].name
    raise AssertionError(f"{TUTORIAL} has no cell that calls register_family")
