"""``cv.pl.confusion``: predicted against given cell labels, and the predictions' confidence
(the scores come from :mod:`cellvi.analysis.annotation`; this module only draws)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from anndata import AnnData

from ..analysis.annotation import LabelAgreement, label_agreement
from ..data._fields import obs_column
from ..families import Capability, family_of
from ..lifecycle.runtime import get_payload


def _scored_cells(adata: AnnData, registry: dict, truth: str | None, key: str):
    """The labels to compare with and the cells they are for, and what they are called."""
    labels_key = str(registry["labels_key"])
    unlabeled = registry.get("unlabeled_category")
    has_column = bool(labels_key) and labels_key in adata.obs.columns
    if truth is None:
        if not has_column:
            why = (
                f"the model's labels column {labels_key!r} is not in adata.obs (a mapped query "
                "has none)" if labels_key else "the model was trained without a labels column"
            )  # fmt: skip
            raise ValueError(
                f"no given labels to compare the predictions of .uns[{key!r}] with: {why}. "
                "Pass truth='<column>', an adata.obs column of known labels."
            )
        given = adata.obs[labels_key].astype(str)
        mask = (given != str(unlabeled)).to_numpy() if unlabeled is not None else np.ones(adata.n_obs, bool)  # fmt: skip
        return given.to_numpy(), mask, f"given label ({labels_key})", "labelled cells"
    given = obs_column(adata, truth, role="truth").astype(object)
    mask = given.notna().to_numpy()
    where = "cells"
    if has_column and unlabeled is not None:
        # the cells whose label the model was not given
        mask &= (adata.obs[labels_key].astype(str) == str(unlabeled)).to_numpy()
        where = "cells without a given label"
    return given.astype(str).to_numpy(), mask, f"true label ({truth})", where


def _matrix_panel(ax, scores: LabelAgreement, ylabel: str) -> None:
    counts = scores.confusion.astype(float)
    fractions = counts / np.maximum(counts.sum(1, keepdims=True), 1.0)
    image = ax.imshow(fractions, cmap="Blues", vmin=0.0, vmax=1.0, aspect="auto")
    ax.figure.colorbar(image, ax=ax, fraction=0.046, pad=0.02, label="fraction of the row")
    small = "x-small" if max(fractions.shape) > 12 else "small"
    for i, j in zip(*np.nonzero(fractions >= 0.01), strict=True):
        color = "white" if fractions[i, j] > 0.6 else "black"
        ax.text(j, i, f"{fractions[i, j]:.2f}", ha="center", va="center", fontsize=small, color=color)  # fmt: skip
    ax.set_xticks(range(len(scores.predicted_classes)), scores.predicted_classes, rotation=90)
    ax.set_yticks(range(len(scores.given_classes)), scores.given_classes)
    ax.set(xlabel="predicted label", ylabel=ylabel)


def _confidence_panel(ax, confidence: np.ndarray, correct: np.ndarray) -> None:
    bins = np.linspace(0.0, 1.0, 26)
    ax.hist(confidence[correct], bins=bins, alpha=0.7, label=f"right ({correct.sum():,})")
    ax.hist(confidence[~correct], bins=bins, alpha=0.7, label=f"wrong ({(~correct).sum():,})")
    ax.set(xlabel="confidence (probability of the predicted label)", ylabel="cells",
           title="confidence of the predictions")  # fmt: skip
    ax.legend(frameon=False)


def confusion(
    adata: AnnData,
    *,
    key: str = "scanvi",
    truth: str | None = None,
    show: bool | None = None,
    save: str | Path | None = None,
):
    """Plot the cell-type predictions of the model in ``adata.uns[key]`` against known labels.

    Left: the confusion matrix, each row (a known label) normalised to the fractions of its
    cells predicted as each label, with the accuracy and macro F1 in the title. Right: the
    distribution of ``obs[key + "_confidence"]`` for the right and the wrong predictions.

    Without ``truth``, the predictions are compared with the labels the model was trained with,
    on the labelled cells (those not in the model's unlabelled category): how well the model
    fits what it was told. With ``truth``, a column of true labels, they are compared on the
    cells the model had no label for (all cells of a mapped query): how well it annotates.

    Parameters
    ----------
    adata
        Data with a trained (or mapped) model that predicts labels (e.g. scANVI's) and its
        predictions in ``obs[key + "_prediction"]`` and ``obs[key + "_confidence"]``.
    key
        Key of the model in ``.uns``.
    truth
        ``adata.obs`` column of known labels to score against (cells with a missing value are
        left out).
    show
        Show the figure (``None``: only in interactive sessions).
    save
        Write the figure to this path.

    Returns
    -------
    The :class:`matplotlib.figure.Figure`; the scores are in ``fig.cellvi_scores`` (a
    :class:`cellvi.analysis.annotation.LabelAgreement`).
    """
    import matplotlib.pyplot as plt

    payload = get_payload(adata, key)
    family = family_of(payload)
    family.require(Capability.PREDICT_LABELS, verb="cv.pl.confusion", key=key)
    columns = [f"{key}_prediction", f"{key}_confidence"]
    missing = [c for c in columns if c not in adata.obs.columns]
    if missing:
        raise KeyError(
            f"adata.obs has no {missing}: the predictions of .uns[{key!r}] are written by "
            f"`{family.train_verb}` and `cv.tl.map_query`; run one of them again."
        )
    given, mask, ylabel, where = _scored_cells(adata, payload["registry"], truth, key)
    predicted = adata.obs[columns[0]]
    classes = list(predicted.cat.categories) if isinstance(predicted.dtype, pd.CategoricalDtype) else None  # fmt: skip
    predicted = predicted.astype(str).to_numpy()
    if not mask.any():
        raise ValueError(f"no {where} to score the predictions of .uns[{key!r}] on.")
    scores = label_agreement(given[mask], predicted[mask], classes=classes)
    n_rows = len(scores.given_classes)
    width = max(5.0, 0.45 * len(scores.predicted_classes) + 2.5)
    fig, axes = plt.subplots(
        1, 2, figsize=(width + 4.5, max(3.8, 0.4 * n_rows + 2)), layout="constrained",
        gridspec_kw={"width_ratios": [width, 4.5]},
    )  # fmt: skip
    _matrix_panel(axes[0], scores, ylabel)
    axes[0].set_title(
        f"{scores.n_cells:,} {where}: accuracy {scores.accuracy:.3f}, "
        f"macro F1 {scores.macro_f1:.3f}"
    )
    confidence = adata.obs[columns[1]].to_numpy(dtype=float)[mask]
    _confidence_panel(axes[1], confidence, given[mask] == predicted[mask])
    fig.suptitle(f"{family.title} predictions of adata.uns[{key!r}]")
    fig.cellvi_scores = scores
    if save is not None:
        fig.savefig(save, dpi=150, bbox_inches="tight")
    if show or (show is None and plt.isinteractive()):
        plt.show()
    return fig
