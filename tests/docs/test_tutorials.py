"""Tutorial notebooks are stored without outputs and are all run by the docs build."""

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((ROOT / "tutorials").glob("*.ipynb"))
#: Tutorials written as scripts in jupytext's percent format (run by the docs build too).
SCRIPTS = [p for p in sorted((ROOT / "tutorials").glob("*.py")) if "# %%" in p.read_text()]


def test_there_are_tutorials():
    assert NOTEBOOKS, "tutorials/*.ipynb not found"
    assert [p.name for p in SCRIPTS] == ["custom_model.py", "scanvi_annotation.py"], SCRIPTS


def test_script_tutorials_are_read_as_notebooks_by_the_docs():
    conf = (ROOT / "docs" / "conf.py").read_text(encoding="utf-8")
    assert '".py": "myst-nb"' in conf and "nb_custom_formats" in conf and "py:percent" in conf


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_stored_without_outputs(path):
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    with_outputs = [
        i
        for i, cell in enumerate(cells)
        if cell["cell_type"] == "code" and (cell["outputs"] or cell["execution_count"] is not None)
    ]
    assert with_outputs == [], (
        f"{path.name}: cells {with_outputs} have outputs; clear them "
        "in Jupyter (Edit > Clear Outputs of All Cells) before committing"
    )


@pytest.mark.parametrize("path", NOTEBOOKS + SCRIPTS, ids=lambda p: p.name)
def test_notebook_is_in_the_docs_toctree(path):
    # the docs build executes exactly the notebooks in a toctree, so this keeps each one tested
    index = (ROOT / "docs" / "index.md").read_text(encoding="utf-8")
    assert re.search(rf"^tutorials/{re.escape(path.stem)}$", index, re.M), (
        f"add tutorials/{path.stem} to a toctree in docs/index.md"
    )
