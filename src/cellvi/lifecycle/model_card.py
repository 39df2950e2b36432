"""The model card (``README.md`` with YAML front matter) of a saved model folder."""

from __future__ import annotations

import json
import re
from typing import Any

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
CARD_FILE = "README.md"
_CARD_PARAMS = (
    "n_latent",
    "n_hidden",
    "n_layers",
    "dropout_rate",
    "gene_likelihood",
    "dispersion",
    "latent_distribution",
    "max_epochs",
    "batch_size",
    "lr",
    "train_size",
    "seed",
    "precision",
)


def _yaml_str(text: str) -> str:
    return text if re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._/-]*", text) else json.dumps(text)


def _table(rows: list[tuple[str, Any]], header: tuple[str, str]) -> list[str]:
    lines = [f"| {header[0]} | {header[1]} |", "| --- | --- |"]
    return lines + [f"| {name} | {value} |" for name, value in rows]


def model_card(
    config: dict[str, Any],
    license: str,
    repo_id: str | None,
    *,
    data: str | None = None,
    data_file: str | None = None,
) -> str:
    """The model card; ``data`` says what the data file ``data_file`` (``adata.h5ad`` by
    default) holds (``"full"``, ``"minified"``)."""
    model = str(config["model"])
    registry = config["registry"]
    tags = list(dict.fromkeys(["cellvi", "single-cell", "scvi", model, "rna"]))
    front = ["---", "library_name: cellvi", f"license: {_yaml_str(license)}", "tags:"]
    front += [f"- {_yaml_str(tag)}" for tag in tags] + ["---", ""]
    batches = [str(b) for b in registry.get("batch_categories", [])]
    batch_key = registry.get("batch_key") or "(none)"
    data_rows = [
        ("cells", f"{int(registry['n_cells']):,}"),
        ("genes", f"{int(registry['n_vars']):,}"),
        ("batches", f"{int(registry['n_batch']):,} (obs column `{batch_key}`)"),
        ("batch categories", ", ".join(f"`{b}`" for b in batches[:20]) + _more(batches, 20)),
        ("counts", f"layer `{registry['layer']}`" if registry.get("layer") else "`adata.X`"),
    ]
    if registry.get("labels_key"):
        data_rows.append(("labels", f"obs column `{registry['labels_key']}`"))
    params = config.get("params", {})
    param_rows = [(f"`{p}`", f"`{params[p]}`") for p in _CARD_PARAMS if p in params]
    body = [
        f"# cellvi `{model}` model",
        "",
        f"A trained `{model}` variational autoencoder for single-cell RNA counts, made with "
        f"[cellvi](https://pypi.org/project/cellvi/) (payload format "
        f"{config.get('encoding-version', '?')}). The weights are in `{WEIGHTS_FILE}`; "
        f"everything needed to rebuild the model (parameters, data registry, gene names) and "
        f"the training record are in `{CONFIG_FILE}`.",
        "",
        "## Training data",
        "",
        *_table(data_rows, ("data", "value")),
        "",
        "## Training parameters",
        "",
        *_table(param_rows, ("parameter", "value")),
        "",
    ]
    metrics = config.get("metrics") or {}
    if metrics:
        rows = [(f"`{k}`", f"{v:.4f}" if isinstance(v, float) else v) for k, v in metrics.items()]
        body += ["## Held-out metrics", "", *_table(rows, ("metric", "value")), ""]
    versions = config.get("versions") or {}
    if versions:
        body += ["## Versions", "", *_table(list(versions.items()), ("package", "version")), ""]
    body += _shared_data(data, repo_id, data_file or "adata.h5ad", model)
    body += _how_to_load(repo_id, int(registry["n_vars"]))
    return "\n".join(front + body) + "\n"


def _shared_data(data: str | None, repo_id: str | None, data_file: str, model: str) -> list[str]:
    if data is None:
        return []
    what = (
        "the reference cells without their counts: each cell's latent posterior (mean and "
        "variance) and library size, enough to embed, normalise and decode them again"
        if data == "minified"
        else "the reference cells with their raw counts in the registered layer"
    )
    where = f'"{repo_id}"' if repo_id else '"path/to/folder"'
    key = "" if model == "scvi" else f', key="{model}"'  # where the model's tools look
    call = f"cv.hub.{'pull_data' if repo_id else 'load_data'}({where}{key})"
    return [
        "## Reference data",
        "",
        f"`{data_file}` holds {what}, the registered `obs` columns and the latent. "
        f"`adata = {call}` gives it back with the model in `adata.uns`.",
        "",
    ]


def _more(items: list, limit: int) -> str:
    return f", ... ({len(items) - limit} more)" if len(items) > limit else ""


def _how_to_load(repo_id: str | None, n_vars: int) -> list[str]:
    return [
        "## How to use",
        "",
        f"The data must have the model's {n_vars:,} genes in the same order (the `var_names` "
        f"in `{CONFIG_FILE}`; select them with `adata = adata[:, var_names].copy()`), raw "
        "counts in the registered layer, and only batch categories listed above.",
        "",
        "```python",
        "import cellvi as cv",
        "",
        f'cv.hub.pull("{repo_id or "<org>/<name>"}", adata)  # from the Hugging Face Hub',
        'cv.hub.load("path/to/this/folder", adata)  # or from a local copy',
        'cv.tl.scvi_embed(adata)  # -> adata.obsm["X_scvi"]',
        "```",
        "",
    ]


# -- save / load ---------------------------------------------------------------------------------
