"""Opening someone else's file cannot run code: no load path unpickles.

A pickle that creates a marker folder when unpickled is planted wherever a loader might look
(the ``.uns`` payload of an h5ad file, a model folder, a checkpoint folder, in the files' own
names and under the names other tools use). Every load must either ignore it or refuse it with a
clear error, the marker must never appear, and no unpickler may even be called.
"""

from __future__ import annotations

import ast
import os
import pickle
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import torch

import cellvi as cv
from cellvi.train.checkpoint import CHECKPOINT_FILE

SRC = Path(cv.__file__).parent
FAST = {"max_epochs": 2, "n_hidden": 16, "batch_size": 64}
FOREIGN_NAMES = ("pytorch_model.bin", "model.pkl", "model.pt", "last.ckpt", "model.ckpt")


class _Bomb:
    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


@pytest.fixture
def bomb(tmp_path):
    """(pickle bytes, torch.save bytes, marker path) of a payload that runs os.mkdir."""
    marker = tmp_path / "PWNED"
    torch_file = tmp_path / "bomb.pt"
    torch.save({"state_dict": _Bomb(marker)}, torch_file)
    blob = pickle.dumps(_Bomb(marker))
    pickle._loads(blob)  # the bomb is live: unpickling it does create the marker
    assert marker.is_dir()
    marker.rmdir()
    return blob, torch_file.read_bytes(), marker


@pytest.fixture
def no_unpickling(monkeypatch):
    """Any unpickler call fails the test (the calls are recorded, then raise)."""
    calls = []

    def refuse(name):
        def call(*args, **kwargs):
            calls.append(name)
            raise AssertionError(f"{name} was called")

        return call

    for module, name in ((pickle, "load"), (pickle, "loads"), (torch, "load")):
        monkeypatch.setattr(module, name, refuse(f"{module.__name__}.{name}"))
    monkeypatch.setattr(pickle, "Unpickler", refuse("pickle.Unpickler"))
    yield calls
    assert calls == []


@pytest.fixture
def trained(adata):
    cv.pp.setup_registry(adata, layer="counts", batch_key="batch")
    cv.tl.scvi_train(adata, seed=0, **FAST)
    return adata


@pytest.mark.parametrize("kind", ["pickle", "torch.save"])
def test_h5ad_payload_with_pickled_weights_is_refused(trained, tmp_path, bomb, kind, no_unpickling):
    blob = bomb[0] if kind == "pickle" else bomb[1]
    trained.uns["scvi"]["weights"] = np.frombuffer(blob, dtype=np.uint8).copy()
    trained.write_h5ad(tmp_path / "a.h5ad")
    back = ad.read_h5ad(tmp_path / "a.h5ad")
    with pytest.raises(ValueError, match=r"weights .* cannot be loaded .* corrupted"):
        cv.tl.scvi_embed(back)
    assert not bomb[2].exists()


def test_model_folder_ignores_planted_pickles_and_refuses_pickled_weights(
    trained, tmp_path, bomb, no_unpickling
):
    folder = cv.hub.save(trained, tmp_path / "model")
    for name in FOREIGN_NAMES:
        (folder / name).write_bytes(bomb[1])
    fresh = ad.AnnData(trained.layers["counts"].copy(), obs=trained.obs.copy())
    fresh.var_names, fresh.layers["counts"] = trained.var_names, trained.layers["counts"].copy()
    cv.hub.load(folder, fresh)
    cv.tl.scvi_embed(fresh)
    np.testing.assert_array_equal(fresh.obsm["X_scvi"], trained.obsm["X_scvi"])
    for blob in bomb[:2]:
        (folder / "model.safetensors").write_bytes(blob)
        with pytest.raises(ValueError, match=r"cannot be loaded"):
            cv.hub.load(folder)
    assert not bomb[2].exists()


def test_checkpoint_folder_ignores_planted_pickles_and_refuses_a_pickled_checkpoint(
    adata, tmp_path, bomb, no_unpickling
):
    cv.pp.setup_registry(adata, layer="counts", batch_key="batch")
    folder = tmp_path / "ck"
    cv.tl.scvi_train(adata, copy=True, checkpoint_dir=folder, **FAST)
    for name in FOREIGN_NAMES:
        (folder / name).write_bytes(bomb[1])
    cv.tl.scvi_train(adata, copy=True, checkpoint_dir=folder, resume=True, **FAST)
    for blob in bomb[:2]:
        (folder / CHECKPOINT_FILE).write_bytes(blob)
        with pytest.raises(ValueError, match=r"not a readable cellvi checkpoint"):
            cv.tl.scvi_train(adata, checkpoint_dir=folder, resume=True, **FAST)
    assert not bomb[2].exists()


# -- and no code path that could unpickle exists ---------------------------------------------------
_FORBIDDEN_MODULES = {"pickle", "cPickle", "dill", "cloudpickle", "joblib", "shelve", "marshal"}
_FORBIDDEN_CALLS = {"torch.load", "torch.jit.load", "pd.read_pickle", "pandas.read_pickle"}


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return node.id if isinstance(node, ast.Name) else ""


def _problems(tree: ast.AST) -> list[str]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
            found += [n for n in names if n.split(".")[0] in _FORBIDDEN_MODULES]
        elif isinstance(node, ast.Call):
            name = _dotted(node.func)
            if name in _FORBIDDEN_CALLS:
                found.append(name)
            for kw in node.keywords:
                unsafe = {"allow_pickle": True, "weights_only": False}
                value = getattr(kw.value, "value", None)
                if kw.arg in unsafe and value is unsafe[kw.arg]:
                    found.append(f"{name}({kw.arg}={value})")
    return found


def test_no_unpickling_anywhere_in_the_package():
    files = sorted(SRC.rglob("*.py"))
    assert len(files) > 30
    problems = {
        str(p.relative_to(SRC)): found
        for p in files
        if (found := _problems(ast.parse(p.read_text(encoding="utf-8"))))
    }
    assert problems == {}
    # the scan does find what it looks for
    probe = "import pickle\ntorch.load(f, weights_only=False)\nnp.load(f, allow_pickle=True)"
    assert _problems(ast.parse(probe)) == [
        "pickle",
        "torch.load",
        "torch.load(weights_only=False)",
        "np.load(allow_pickle=True)",
    ]
