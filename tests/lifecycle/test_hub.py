"""``cv.hub``: model folders (safetensors + JSON + card), push and pull, all offline."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import torch
from huggingface_hub import ModelCard

import cellvi as cv
from cellvi.lifecycle import hub as hub_impl
from cellvi.lifecycle.payload import PAYLOAD_VERSION, array_to_state_dict, to_builtin

FILES = {"model.safetensors", "config.json", "README.md"}


@pytest.fixture
def trained(adata) -> ad.AnnData:
    cv.pp.setup_registry(adata, layer="counts", batch_key="batch")
    cv.tl.scvi_train(adata, max_epochs=2, n_hidden=16)
    return adata


@pytest.fixture
def folder(trained, tmp_path) -> Path:
    return cv.hub.save(trained, tmp_path / "model")


def _fresh(adata: ad.AnnData) -> ad.AnnData:
    """The same cells and counts, without any model or registry."""
    fresh = ad.AnnData(adata.X.copy(), obs=adata.obs.copy(), var=adata.var.copy())
    for name, layer in adata.layers.items():
        fresh.layers[name] = layer.copy()
    return fresh


def _assert_same_model(loaded: dict, original: dict) -> None:
    np.testing.assert_array_equal(loaded["weights"], original["weights"])
    assert loaded["weights"].dtype == np.uint8
    rest = {k: v for k, v in original.items() if k != "weights"}
    assert set(loaded) == set(original)
    for name, value in rest.items():
        if name in ("history", "registry"):
            assert set(loaded[name]) == set(value)
            for field, array in value.items():
                np.testing.assert_array_equal(np.asarray(loaded[name][field]), np.asarray(array))
        elif name == "validation_indices":
            assert loaded[name].dtype == np.int64
            np.testing.assert_array_equal(loaded[name], value)
        else:
            assert to_builtin(loaded[name]) == to_builtin(value), name


# -- save / load ---------------------------------------------------------------------------------
def test_save_writes_exactly_three_files_with_the_raw_weights(trained, folder):
    assert {p.name for p in folder.iterdir()} == FILES
    payload = trained.uns["scvi"]
    assert (folder / "model.safetensors").read_bytes() == payload["weights"].tobytes()
    config = json.loads((folder / "config.json").read_text())
    assert "weights" not in config
    assert (
        config["encoding-type"] == "cellvi-model" and config["encoding-version"] == PAYLOAD_VERSION
    )
    assert config["model"] == "scvi" and config["params"]["n_hidden"] == 16
    assert config["var_names"] == list(trained.var_names)
    assert config["registry"]["batch_categories"] == ["b0", "b1"]
    assert config["validation_indices"] == payload["validation_indices"].tolist()
    assert set(config) >= {"history", "metrics", "versions", "session_info"}


def test_round_trip_is_bit_identical_and_reproduces_the_latent(trained, folder):
    original = trained.uns["scvi"]
    payload = cv.hub.load(folder)
    _assert_same_model(payload, original)
    state, expected = (
        array_to_state_dict(payload["weights"]),
        array_to_state_dict(original["weights"]),
    )
    assert state.keys() == expected.keys()
    assert all(torch.equal(state[k], expected[k]) for k in expected)

    fresh = _fresh(trained)
    assert cv.hub.load(folder, fresh) is None
    assert "scvi" in fresh.uns and "cellvi_registry" not in fresh.uns
    cv.tl.scvi_embed(fresh)
    np.testing.assert_array_equal(fresh.obsm["X_scvi"], trained.obsm["X_scvi"])


def test_loaded_model_survives_h5ad_and_custom_key(trained, folder, tmp_path):
    fresh = _fresh(trained)
    cv.hub.load(folder, fresh, key="mine")
    fresh.write_h5ad(tmp_path / "back.h5ad")
    back = ad.read_h5ad(tmp_path / "back.h5ad")
    cv.tl.scvi_embed(back, key="mine")
    np.testing.assert_array_equal(back.obsm["X_mine"], trained.obsm["X_scvi"])


def test_model_card_front_matter_and_body(trained, folder):
    card = ModelCard.load(folder / "README.md")
    assert card.data.library_name == "cellvi"
    assert card.data.license == "cc-by-4.0"
    assert card.data.tags == ["cellvi", "single-cell", "scvi", "rna"]
    text = card.text
    assert "| cells | 240 |" in text and "| genes | 60 |" in text
    assert "| batches | 2 (obs column `batch`) |" in text and "`b0`, `b1`" in text
    assert "| `n_hidden` | `16` |" in text and "| `max_epochs` | `2` |" in text
    assert "## Held-out metrics" in text and "`elbo_validation`" in text
    assert "## Versions" in text and "| torch |" in text
    assert "cv.hub.load(" in text and "cv.hub.pull(" in text


def test_license_argument_goes_to_the_card(trained, tmp_path):
    path = cv.hub.save(trained, tmp_path / "m", license="mit")
    assert ModelCard.load(path / "README.md").data.license == "mit"


def test_save_refuses_a_non_empty_folder_unless_overwrite(trained, tmp_path):
    target = tmp_path / "m"
    target.mkdir()
    (target / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match=r"not empty; pass overwrite=True"):
        cv.hub.save(trained, target)
    assert {p.name for p in target.iterdir()} == {"notes.txt"}
    cv.hub.save(trained, target, overwrite=True)
    assert {p.name for p in target.iterdir()} == FILES | {"notes.txt"}
    cv.hub.save(trained, tmp_path / "empty_ok")  # a new folder is fine


def test_save_without_a_model_gives_a_clear_error(adata, tmp_path):
    with pytest.raises(KeyError, match=r"No trained model at adata.uns\['scvi'\].*scvi_train"):
        cv.hub.save(adata, tmp_path / "m")
    adata.uns["scvi"] = {"encoding-type": "something-else"}
    with pytest.raises(ValueError, match=r"not a cellvi model payload"):
        cv.hub.save(adata, tmp_path / "m")
    assert not (tmp_path / "m").exists()


def test_payload_read_from_an_h5ad_file_round_trips(tmp_path):
    fixture = Path(__file__).resolve().parents[1] / "tl" / "data" / "scvi_payload_v1_0_0.h5ad"
    stored = ad.read_h5ad(fixture)  # numpy scalars and object string arrays
    folder = cv.hub.save(stored, tmp_path / "m")
    fresh = _fresh(stored)
    cv.hub.load(folder, fresh)
    _assert_same_model(fresh.uns["scvi"], stored.uns["scvi"])
    cv.tl.scvi_embed(fresh, key_added="again")
    np.testing.assert_allclose(fresh.obsm["X_again"], stored.obsm["X_scvi"], rtol=1e-5, atol=1e-6)


def test_model_without_validation_cells_round_trips(adata, tmp_path):
    cv.pp.setup_registry(adata, layer="counts", batch_key="batch")
    cv.tl.scvi_train(adata, max_epochs=2, n_hidden=16, train_size=1.0)
    folder = cv.hub.save(adata, tmp_path / "m")
    payload = cv.hub.load(folder)
    assert payload["validation_indices"].dtype == np.int64
    assert payload["validation_indices"].size == 0 and payload["metrics"] == {}
    assert "Held-out metrics" not in (folder / "README.md").read_text()
    _assert_same_model(payload, adata.uns["scvi"])


@pytest.mark.parametrize(
    ("change", "fragments"),
    [
        pytest.param(
            lambda a: a[:, a.var_names[::-1]].copy(),
            ["different order", "adata = adata[:, var_names].copy()"],
            id="reordered",
        ),
        pytest.param(
            lambda a: a[:, 3:].copy(),
            ["3 genes are missing", "'gene0'", "adata = adata[:, var_names].copy()"],
            id="missing",
        ),
    ],
)
def test_load_into_data_with_other_genes_fails_and_leaves_it_unchanged(
    trained, folder, change, fragments
):
    data = change(_fresh(trained))
    with pytest.raises(ValueError) as err:
        cv.hub.load(folder, data)
    for fragment in fragments:
        assert fragment in str(err.value), (fragment, str(err.value))
    assert "scvi" not in data.uns


def test_load_into_data_with_unknown_batch_fails(trained, folder):
    data = _fresh(trained)
    data.obs["batch"] = data.obs["batch"].cat.rename_categories({"b1": "b9"})
    with pytest.raises(ValueError, match="b9"):
        cv.hub.load(folder, data)
    assert "scvi" not in data.uns
    del data.obs["batch"]
    with pytest.raises(KeyError, match="batch"):
        cv.hub.load(folder, data)


def test_load_of_a_newer_major_version_says_upgrade(folder):
    config = json.loads((folder / "config.json").read_text())
    config["encoding-version"] = "2.0.0"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"(?s)cannot be loaded.*newer cellvi.*pip install -U"):
        cv.hub.load(folder)


def test_load_refuses_folders_without_model_files(folder, tmp_path):
    (folder / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"no model.safetensors.*not a cellvi model"):
        cv.hub.load(folder)
    with pytest.raises(FileNotFoundError, match="not a folder"):
        cv.hub.load(tmp_path / "nothing")


def test_load_rejects_weights_that_do_not_fit(folder):
    blob = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(ValueError, match=r"(?s)cannot be loaded.*weights.*corrupted"):
        cv.hub.load(folder)


def test_pickle_files_in_the_folder_are_never_opened(trained, folder, monkeypatch):
    (folder / "model.pkl").write_bytes(b"\x80\x04garbage that must never be unpickled")
    opened = []
    real_read_bytes, real_read_text = Path.read_bytes, Path.read_text

    def read_bytes(self):
        opened.append(self.name)
        return real_read_bytes(self)

    def read_text(self, *args, **kwargs):
        opened.append(self.name)
        return real_read_text(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    monkeypatch.setattr(Path, "read_text", read_text)
    fresh = _fresh(trained)
    cv.hub.load(folder, fresh)
    assert set(opened) == {"config.json", "model.safetensors"}
    cv.tl.scvi_embed(fresh)
    np.testing.assert_array_equal(fresh.obsm["X_scvi"], trained.obsm["X_scvi"])


# -- push / pull ---------------------------------------------------------------------------------
class FakeHfApi:
    """Records what push asks of the Hub and keeps a copy of the uploaded files."""

    instances: list[FakeHfApi] = []

    def __init__(self, token=None):
        self.token = token
        self.calls: list[tuple[str, dict]] = []
        self.files: dict[str, bytes] = {}
        FakeHfApi.instances.append(self)

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", {"repo_id": repo_id, **kwargs}))
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, **kwargs):
        self.calls.append(("upload_folder", kwargs))
        self.files = {p.name: p.read_bytes() for p in Path(kwargs["folder_path"]).iterdir()}

        class Info:
            commit_url = f"https://huggingface.co/{kwargs['repo_id']}/commit/abc123"

        return Info()


def test_push_creates_the_repo_and_uploads_the_three_files(trained, monkeypatch):
    import huggingface_hub

    FakeHfApi.instances = []
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeHfApi)
    url = cv.hub.push(trained, "org/name", token="hf_secret", private=True)
    assert url == "https://huggingface.co/org/name/commit/abc123"
    (api,) = FakeHfApi.instances
    assert api.token == "hf_secret"
    (create, created), (upload, uploaded) = api.calls
    assert create == "create_repo" and upload == "upload_folder"
    assert created == {"repo_id": "org/name", "private": True, "exist_ok": True}
    assert uploaded["repo_id"] == "org/name"
    assert uploaded["commit_message"] == "Upload cellvi scvi model"
    assert not Path(uploaded["folder_path"]).exists()  # the temporary folder is cleaned up
    assert set(api.files) == FILES
    assert api.files["model.safetensors"] == trained.uns["scvi"]["weights"].tobytes()
    config = json.loads(api.files["config.json"])
    assert config["model"] == "scvi" and config["var_names"] == list(trained.var_names)
    card = api.files["README.md"].decode()
    assert card.startswith("---\nlibrary_name: cellvi\n")
    assert 'cv.hub.pull("org/name", adata)' in card


def test_push_passes_the_commit_message(trained, monkeypatch):
    import huggingface_hub

    FakeHfApi.instances = []
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeHfApi)
    cv.hub.push(trained, "me/m", commit_message="v2")
    (api,) = FakeHfApi.instances
    assert api.token is None
    assert api.calls[0][1]["private"] is False
    assert api.calls[1][1]["commit_message"] == "v2"


def _cache_repo(cache_dir: Path, repo_id: str, files: Path, commit: str) -> Path:
    """A Hugging Face cache entry as ``snapshot_download`` leaves it (blobs + snapshot links)."""
    storage = cache_dir / f"models--{repo_id.replace('/', '--')}"
    snapshot = storage / "snapshots" / commit
    (storage / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    (storage / "refs").mkdir()
    (storage / "refs" / "main").write_text(commit)
    for i, source in enumerate(sorted(files.iterdir())):
        blob = storage / "blobs" / f"blob{i}"
        shutil.copyfile(source, blob)
        (snapshot / source.name).symlink_to(Path("..", "..", "blobs", blob.name))
    return snapshot


def test_pull_from_the_local_cache_reproduces_the_latent(trained, folder, tmp_path):
    (folder / "model.pkl").write_bytes(b"never opened")
    _cache_repo(tmp_path / "cache", "org/name", folder, "a" * 40)
    fresh = _fresh(trained)
    result = cv.hub.pull("org/name", fresh, cache_dir=tmp_path / "cache", local_files_only=True)
    assert result is None
    _assert_same_model(fresh.uns["scvi"], trained.uns["scvi"])
    cv.tl.scvi_embed(fresh)
    np.testing.assert_array_equal(fresh.obsm["X_scvi"], trained.obsm["X_scvi"])
    payload = cv.hub.pull(
        "org/name", cache_dir=tmp_path / "cache", local_files_only=True, revision="a" * 40
    )
    assert payload["model"] == "scvi"


def test_pull_of_an_absent_repo_offline_gives_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        cv.hub.pull("org/absent", cache_dir=tmp_path, local_files_only=True)
    message = str(err.value)
    assert "'org/absent'" in message and "local_files_only=True" in message
    assert "network access" in message


def test_pull_allows_only_model_files(monkeypatch, folder):
    import huggingface_hub

    seen = {}

    def snapshot_download(repo_id, **kwargs):
        seen.update(kwargs, repo_id=repo_id)
        return str(folder)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    cv.hub.pull("org/name", revision="v1")
    assert seen["allow_patterns"] == ["*.json", "*.safetensors", "README.md"]
    assert seen["revision"] == "v1" and seen["repo_id"] == "org/name"
    assert hub_impl.ALLOW_PATTERNS == seen["allow_patterns"]
