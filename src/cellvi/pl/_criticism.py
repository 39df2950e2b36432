"""``cv.pl.criticism``: posterior predictive checks as one figure (the metrics come from
``cv.tl.criticism``; this module only draws)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from anndata import AnnData

from ..lifecycle.criticism_run import criticism as compute_criticism
from ..lifecycle.criticism_run import model_keys


@dataclass(frozen=True)
class _Scatter:
    """An observed-vs-generated panel: where its values are in the results, and its labels."""

    title: str
    field: str
    observed: str
    predicted: str
    score: str
    xlabel: str = "observed"
    ylabel: str = "generated"
    log: bool = False  # CVs span orders of magnitude (rare genes reach CV ~ sqrt(n_cells))


_GENE_CV = _Scatter(
    "gene CV", "gene", "observed_gene_cv", "predicted_gene_cv", "gene_cv_mae", log=True
)
_CELL_CV = _Scatter("cell CV", "cell", "observed_cv", "predicted_cv", "cell_cv_mae", log=True)
_ZEROS = _Scatter(
    "zero fraction per gene",
    "gene",
    "observed_gene_zero_fraction",
    "predicted_gene_zero_fraction",
    "gene_zero_fraction_mae",
)
_LFC = _Scatter(
    "log2 fold change per group",
    "de",
    "lfc_observed",
    "lfc_predicted",
    "lfc_mae",
    xlabel="from observed counts",
    ylabel="from generated counts",
)


def _identity(ax, x: np.ndarray, y: np.ndarray, *, log: bool = False) -> None:
    values = np.concatenate([x[np.isfinite(x)], y[np.isfinite(y)]])
    if log:
        values = values[values > 0]
    if values.size == 0:
        return
    low, high = float(values.min()), float(values.max())
    ax.plot([low, high], [low, high], color="black", lw=0.8, ls="--", zorder=0)


def _scatter_panel(ax, results: dict[str, dict], panel: _Scatter, colors, title: str) -> None:
    xs, ys = [], []
    for key, result in results.items():
        x = np.asarray(result[panel.field][panel.observed], dtype=float).ravel()
        y = np.asarray(result[panel.field][panel.predicted], dtype=float).ravel()
        mae = float(result["summary"][panel.score])
        ax.scatter(x, y, s=6, alpha=0.5, color=colors[key], label=f"{key} (MAE {mae:.3g})")
        xs.append(x)
        ys.append(y)
    _identity(ax, np.concatenate(xs), np.concatenate(ys), log=panel.log)
    if panel.log:
        ax.set_xscale("log", nonpositive="mask")
        ax.set_yscale("log", nonpositive="mask")
    ax.set(title=title, xlabel=panel.xlabel, ylabel=panel.ylabel)
    ax.legend(frameon=False, fontsize="small", markerscale=2)


def _calibration_panel(ax, results: dict[str, dict], colors, title: str) -> None:
    for key, result in results.items():
        cal = result["calibration"]
        error = float(result["summary"]["calibration_error"])
        ax.plot(
            cal["nominal"], cal["observed"], "o-", ms=3, color=colors[key],
            label=f"{key} ({error:.3f})",
        )  # fmt: skip
    ax.plot([0, 1], [0, 1], color="black", lw=0.8, ls="--", zorder=0)
    ax.set(
        title=title,
        xlabel="nominal coverage of predictive interval",
        ylabel="observed coverage",
        xlim=(0, 1),
        ylim=(0, 1),
    )
    ax.legend(frameon=False, fontsize="small")


#: Rows of the figure, in order, and how their titles name the modality and its features.
_MODALITIES = {"rna": ("RNA", "gene"), "protein": ("protein", "protein")}


def _by_modality(results: dict[str, dict]) -> dict[str, dict[str, dict]]:
    """``{modality: {model: result}}``: the result of an RNA + protein model holds one result
    per modality, that of an RNA model is the RNA one."""
    rows: dict[str, dict[str, dict]] = {}
    for key, result in results.items():
        parts = {"rna": result} if "summary" in result else result
        for modality in _MODALITIES:
            if modality in parts:
                rows.setdefault(modality, {})[key] = parts[modality]
    return {m: rows[m] for m in _MODALITIES if m in rows}


def _title(text: str, modality: str, n_rows: int) -> str:
    """A panel title; with several rows, prefixed by the modality and naming its features."""
    if n_rows == 1:
        return text
    label, feature = _MODALITIES[modality]
    return f"{label}: {text.replace('gene', feature)}"


def draw_criticism(results: dict[str, dict], *, title: str | None = None):
    """The figure of posterior predictive checks from ``cv.tl.criticism`` results.

    ``results`` maps a model name to its ``adata.uns[key + "_criticism"]``. One row of five panels
    per modality: RNA (every model), then proteins (models of protein counts); a model keeps its
    colour in every row.
    """
    import matplotlib.pyplot as plt

    rows = _by_modality(results)
    colors = {key: f"C{i}" for i, key in enumerate(results)}
    fig, axes = plt.subplots(
        len(rows), 5, figsize=(22, 4.2 * len(rows)), layout="constrained", squeeze=False
    )
    for row, (modality, part) in zip(axes, rows.items(), strict=True):
        for ax, panel in zip(row[:3], (_GENE_CV, _CELL_CV, _ZEROS), strict=True):
            _scatter_panel(ax, part, panel, colors, _title(panel.title, modality, len(rows)))
        cal_title = _title("calibration (error in legend)", modality, len(rows))
        _calibration_panel(row[3], part, colors, cal_title)
        _scatter_panel(row[4], part, _LFC, colors, _title(_LFC.title, modality, len(rows)))
    fig.suptitle(title or f"posterior predictive checks: {', '.join(results)}")
    return fig


def criticism(
    adata: AnnData,
    *,
    key: str | Sequence[str] = "scvi",
    n_samples: int = 10,
    groupby: str | None = None,
    layer: str | None = None,
    seed: int = 0,
    show: bool | None = None,
    save: str | Path | None = None,
):
    """Posterior predictive checks of one or several trained models, as one figure.

    Runs :func:`cellvi.tl.criticism` (which stores the metrics in ``adata.uns[key +
    "_criticism"]``) and draws one panel per check: observed vs generated coefficient of
    variation per gene and per cell and zero fraction per gene (with the identity line),
    the calibration curve of the predictive intervals, and observed vs generated log fold
    changes of each group. Several models (``key=["scvi", "scvi_nb"]``) share the panels, one
    colour each. A model that generates protein counts adds a second row of the same five
    panels for its proteins (per protein instead of per gene), computed from its protein draws.
    See ``docs/criticism.md`` for how to read it.

    Parameters
    ----------
    adata
        Data with the trained model(s) and their counts (for an RNA + protein model a MuData
        or an AnnData with protein counts in ``.obsm``).
    key
        Key of a model in ``.uns``, or a list of keys.
    n_samples
        Posterior predictive draws per cell.
    groupby
        ``adata.obs`` column with the groups of the fold-change check (default: registered
        labels, else Leiden clusters of the latent).
    layer
        Layer with the counts, both encoded by the models and compared with their draws
        (default: each model's registered layer).
    seed
        Seed of the draws.
    show
        Show the figure (``None``: only in interactive sessions).
    save
        Write the figure to this path.

    Returns
    -------
    The :class:`matplotlib.figure.Figure` (5 axes per row: one row for RNA, one more for proteins
    when a model of protein counts is checked); sets ``adata.uns[k + "_criticism"]`` for each key
    (see :func:`cellvi.tl.criticism`).
    """
    import matplotlib.pyplot as plt

    keys = model_keys(key)
    compute_criticism(adata, key=keys, n_samples=n_samples, groupby=groupby, layer=layer, seed=seed)
    fig = draw_criticism({k: adata.uns[f"{k}_criticism"] for k in keys})
    if save is not None:
        fig.savefig(save, dpi=150, bbox_inches="tight")
    if show or (show is None and plt.isinteractive()):
        plt.show()
    return fig
