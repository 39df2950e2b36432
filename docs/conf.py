"""Sphinx configuration of the cellvi documentation.

Builds offline: no intersphinx, nothing is downloaded. Tutorials in ``../tutorials`` (linked as
``docs/tutorials``) are executed by myst-nb; ``CELLVI_DOCS_EXECUTE`` picks myst-nb's execution
mode (``force`` by default, ``off`` for a quick build of the text only, ``cache`` to re-run only
notebooks that changed) and ``CELLVI_TUTORIAL_EPOCHS`` is read by the notebooks themselves (few
epochs in CI, cellvi's defaults when unset).
"""

import os
import sys
from pathlib import Path

HERE = Path(__file__).parent
# Document the source tree next to this file, even when another cellvi is installed.
sys.path.insert(0, str(HERE.parent / "src"))

import cellvi  # noqa: E402

project = "cellvi"
author = "cellvi developers"
copyright = "2026, cellvi developers"
release = cellvi.__version__
version = release

extensions = [
    "myst_nb",  # Markdown pages (MyST) and notebooks; includes myst_parser
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",  # numpydoc-style docstrings
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
]

# .rst first: autosummary writes its generated API pages with the first suffix.
source_suffix = {
    ".rst": "restructuredtext",
    ".md": "myst-nb",
    ".ipynb": "myst-nb",
    ".py": "myst-nb",  # tutorials written as scripts (jupytext percent format), see below
}
exclude_patterns = [
    "_build",
    "_readme_proposal.md",  # material for README.md, not a page
    "**.ipynb_checkpoints",
    "tutorials/README.md",
    "conf.py",
    "tutorials/quickstart.py",  # a command-line script (README's quick start), not a page
]
templates_path = ["_templates"]

# -- API reference ------------------------------------------------------------------------------
autosummary_generate = True
autosummary_imported_members = False
autodoc_default_options = {"members": False}
autodoc_member_order = "bysource"
# Types come from the annotations (docstrings name parameters only, as in scanpy); they are
# added to the parameters a docstring documents.
autodoc_typehints = "description"
autodoc_typehints_description_target = "documented_params"
autodoc_typehints_format = "short"
autodoc_preserve_defaults = True
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = False
napoleon_use_ivar = True
# Our Returns sections are prose (what is returned and every field written), as in scanpy:
# render them as written instead of parsing the first line as a return type.
napoleon_custom_sections = ["Returns"]

# -- MyST and notebooks -------------------------------------------------------------------------
myst_enable_extensions = ["colon_fence", "deflist", "dollarmath", "smartquotes"]
myst_heading_anchors = 3
nb_execution_mode = os.environ.get("CELLVI_DOCS_EXECUTE", "force")
nb_execution_timeout = int(os.environ.get("CELLVI_DOCS_TIMEOUT", "1800"))
nb_execution_raise_on_error = True  # a tutorial that fails fails the build
nb_execution_in_temp = True  # files a tutorial writes go to a temporary folder
nb_execution_show_tb = True
nb_merge_streams = True
# a tutorial may be a Python script in jupytext's percent format (runnable with `python`)
nb_custom_formats = {".py": ["jupytext.reads", {"fmt": "py:percent"}]}

# -- HTML ---------------------------------------------------------------------------------------
html_theme = "furo"
html_title = f"cellvi {release}"
html_static_path = []
html_show_sourcelink = False
