"""Code outside a family's own modules asks the family what it can do instead of naming it.

A family owns the files under ``models/`` and those named after it (``families/totalvi.py``,
``tl/_totalvi_apply.py``, ...). Everywhere else the name may appear only where the family is
exported or registered: adding a file that names it fails here, with the offenders listed.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "cellvi"
#: Text files the scan reads (code and the kernels' C sources; data files are left out).
SOURCE_SUFFIXES = {".py", ".pyi", ".c", ".h"}
#: Files outside totalVI's own that may name it: the verbs ``cv.tl`` exports and the import
#: that registers the family. At most three.
TOTALVI_ALLOWED = {"tl/__init__.py", "families/__init__.py"}


def family_owns(path: PurePosixPath, family: str) -> bool:
    """Whether ``path`` (relative to the package) is one of ``family``'s own modules."""
    return path.parts[0] == "models" or any(family in part.lower() for part in path.parts)


def files_naming(root: Path, family: str) -> set[str]:
    """Source files under ``root``, not the family's own, that name ``family`` (any case)."""
    found = set()
    for file in root.rglob("*"):
        rel = PurePosixPath(file.relative_to(root).as_posix())
        if not file.is_file() or file.suffix not in SOURCE_SUFFIXES or "__pycache__" in rel.parts:
            continue
        if not family_owns(rel, family) and family in file.read_text("utf-8").lower():
            found.add(str(rel))
    return found


def test_totalvi_is_named_only_where_it_is_exported_or_registered():
    assert len(TOTALVI_ALLOWED) <= 3
    found = files_naming(PACKAGE, "totalvi")
    offenders, stale = sorted(found - TOTALVI_ALLOWED), sorted(TOTALVI_ALLOWED - found)
    assert not offenders, (
        f"these files name totalVI outside the family's own modules: {offenders}; describe "
        "what the model reads or can do instead (e.g. 'an RNA + protein model'), or ask the "
        "family (`family.has_proteins`, its capabilities)"
    )
    assert not stale, f"no longer name totalVI, drop them from TOTALVI_ALLOWED: {stale}"


def test_the_rule_tells_family_files_from_the_others():
    owned = ["models/totalvi.py", "models/_protein_prior.py", "families/totalvi.py",
             "tl/_totalvi_apply.py", "tl/_TotalVI_train.py", "totalvi/helpers.py"]  # fmt: skip
    others = ["tl/_de.py", "pl/_criticism.py", "families/__init__.py", "nn/protein_decoder.py"]
    assert all(family_owns(PurePosixPath(p), "totalvi") for p in owned)
    assert not any(family_owns(PurePosixPath(p), "totalvi") for p in others)


def test_the_scan_finds_a_file_that_names_the_family(tmp_path):
    files = {
        "models/totalvi.py": "class TOTALVI: ...",  # the family's own
        "tl/_totalvi_apply.py": "def totalvi_embed(): ...",  # named after it
        "tl/_de.py": '"""For a totalVI model the proteins follow the genes."""',
        "distributions/_kernel.c": "/* TotalVI's mixture */",
        "pl/_plot.py": '"""For an RNA + protein model."""',
        "datasets/notes.md": "totalVI data",  # not a source file
        "tl/__pycache__/_de.py": "totalvi",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert files_naming(tmp_path, "totalvi") == {"tl/_de.py", "distributions/_kernel.c"}
