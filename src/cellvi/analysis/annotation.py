"""Agreement of predicted cell labels with given ones: confusion matrix, accuracy, F1."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class LabelAgreement:
    """Predicted against given labels on the scored cells.

    ``confusion[i, j]`` counts the cells given ``given_classes[i]`` and predicted
    ``predicted_classes[j]``; ``f1`` is per given class (0 for a class never predicted).
    """

    given_classes: list[str]
    predicted_classes: list[str]
    confusion: np.ndarray
    accuracy: float
    macro_f1: float
    f1: dict[str, float]
    n_cells: int


def label_agreement(
    given: Sequence[str], predicted: Sequence[str], *, classes: Sequence[str] | None = None
) -> LabelAgreement:
    """Compare ``predicted`` with ``given`` labels (one per cell, same order).

    ``classes`` orders the predicted columns (a model's classes); given labels the model does
    not predict get rows of their own (their F1 is 0, and they count in the macro F1).
    """
    given = np.asarray(given).astype(str)
    predicted = np.asarray(predicted).astype(str)
    if given.shape != predicted.shape:
        raise ValueError(f"{given.size} given labels for {predicted.size} predictions.")
    if given.size == 0:
        raise ValueError("no cells to score: every cell was left out.")
    columns = list(classes) if classes is not None else sorted(set(predicted) | set(given))
    columns += sorted(set(predicted) - set(columns))
    rows = [c for c in columns if c in set(given)] + sorted(set(given) - set(columns))
    row_of = {c: i for i, c in enumerate(rows)}
    col_of = {c: j for j, c in enumerate(columns)}
    confusion = np.zeros((len(rows), len(columns)), dtype=np.int64)
    np.add.at(confusion, ([row_of[g] for g in given], [col_of[p] for p in predicted]), 1)
    f1 = {}
    for name in rows:
        true_positive = float(np.sum((given == name) & (predicted == name)))
        denominator = float(np.sum(given == name) + np.sum(predicted == name))
        f1[name] = 2 * true_positive / denominator if denominator else 0.0
    return LabelAgreement(
        given_classes=rows,
        predicted_classes=columns,
        confusion=confusion,
        accuracy=float(np.mean(given == predicted)),
        macro_f1=float(np.mean(list(f1.values()))),
        f1=f1,
        n_cells=int(given.size),
    )
