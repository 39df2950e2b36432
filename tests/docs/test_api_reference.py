"""The API reference (docs/api/index.md) lists exactly the public functions of the front."""

import re
from pathlib import Path

import cellvi

API_PAGE = Path(__file__).resolve().parents[2] / "docs" / "api" / "index.md"
FRONT = ("pp", "tl", "pl", "hub", "datasets")


def _listed() -> set[str]:
    """Entries of the autosummary lists, e.g. ``tl.scvi_train``."""
    listed = set()
    for block in re.findall(r"\.\. autosummary::\n(.*?)```", API_PAGE.read_text(), re.S):
        for line in block.splitlines():
            entry = line.strip()
            if entry and not entry.startswith(":"):
                listed.add(entry)
    return listed


def test_every_public_function_is_in_the_api_reference():
    public = {f"{module}.{name}" for module in FRONT for name in getattr(cellvi, module).__all__}
    public.add("settings")
    listed = _listed()
    assert public - listed == set(), f"add these to {API_PAGE.name}: {sorted(public - listed)}"
    assert listed - public == set(), f"not public, remove: {sorted(listed - public)}"
