"""``cv.pl.tune``: optimisation history and parameter importances of a ``cv.tl.tune`` run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from anndata import AnnData


def _history(ax, trials: dict[str, np.ndarray], metric: str, direction: str) -> None:
    number, value = np.asarray(trials["number"]), np.asarray(trials["value"], dtype=float)
    state = np.asarray(trials["state"]).astype(str)
    done = state == "COMPLETE"
    pruned = (state == "PRUNED") & np.isfinite(value)
    ax.plot(number[done], value[done], "o", label="completed")
    if pruned.any():
        ax.plot(number[pruned], value[pruned], "x", color="grey", label="pruned (last value)")
    order = np.argsort(number[done])
    best = (np.fmax if direction == "maximize" else np.fmin).accumulate(value[done][order])
    ax.step(number[done][order], best, where="post", color="C3", label="best so far")
    failed = int((state == "FAIL").sum())
    title = "optimisation history" + (f" ({failed} failed)" if failed else "")
    ax.set(title=title, xlabel="trial", ylabel=metric)
    ax.legend(frameon=False)


def _importances(ax, importances: dict[str, float]) -> None:
    if not importances:
        ax.text(0.5, 0.5, "no importances\n(needs 2+ completed trials)", ha="center", va="center")
        ax.set_axis_off()
        return
    names = sorted(importances, key=lambda k: float(importances[k]))
    ax.barh(names, [float(importances[k]) for k in names])
    ax.set(title="parameter importance (fANOVA)", xlabel="importance")


def tune(
    adata: AnnData,
    *,
    key: str = "scvi_tune",
    show: bool | None = None,
    save: str | Path | None = None,
):
    """Plot the results of :func:`cellvi.tl.tune` stored in ``adata.uns[key]``.

    Left: the metric of every completed trial, the last value of pruned trials and the best
    value so far. Right: the fANOVA importance of each searched parameter.

    Parameters
    ----------
    adata
        Data holding tuning results.
    key
        Key of the results in ``.uns``.
    show
        Show the figure (``None``: only in interactive sessions).
    save
        Write the figure to this path.

    Returns
    -------
    The :class:`matplotlib.figure.Figure`.
    """
    import matplotlib.pyplot as plt

    results = adata.uns.get(key)
    if not isinstance(results, dict) or "trials" not in results:
        raise KeyError(
            f"No tuning results at adata.uns[{key!r}]; run `cv.tl.tune(adata)` first "
            "(its key_added names the key)."
        )
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), layout="constrained")
    _history(axes[0], results["trials"], str(results["metric"]), str(results["direction"]))
    _importances(axes[1], dict(results.get("param_importances", {})))
    fig.suptitle(f"hyperparameter search in adata.uns[{key!r}]")
    if save is not None:
        fig.savefig(save, dpi=150, bbox_inches="tight")
    if show or (show is None and plt.isinteractive()):
        plt.show()
    return fig
