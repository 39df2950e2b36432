"""``cv.pl.training_history``: ELBO, reconstruction and KL per epoch of a trained model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from anndata import AnnData

from ..lifecycle.runtime import get_payload

_PANELS = (
    ("elbo", "ELBO per cell"),
    ("reconstruction", "reconstruction error per cell"),
    ("kl_local", "KL divergence per cell"),
)


def training_history(
    adata: AnnData,
    *,
    key: str = "scvi",
    show: bool | None = None,
    save: str | Path | None = None,
):
    """Plot the training curves stored with the model in ``adata.uns[key]``.

    One panel each for the ELBO, the reconstruction error and the KL divergence, per epoch,
    for the training cells and, where it was computed, the validation cells. The KL warm-up
    weight is drawn on the KL panel's second axis.

    Parameters
    ----------
    adata
        Data holding a trained model.
    key
        Key of the model in ``.uns``.
    show
        Show the figure (``None``: only in interactive sessions).
    save
        Write the figure to this path.

    Returns
    -------
    The :class:`matplotlib.figure.Figure`.
    """
    import matplotlib.pyplot as plt

    history = {k: np.asarray(v) for k, v in get_payload(adata, key).get("history", {}).items()}
    if "epoch" not in history:
        raise ValueError(f"adata.uns[{key!r}] has no training history to plot.")
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6), layout="constrained")
    for ax, (name, title) in zip(axes, _PANELS, strict=True):
        ax.plot(history["epoch"], history[f"{name}_train"], label="train")
        if f"{name}_validation" in history:
            ax.plot(
                history["validation_epoch"],
                history[f"{name}_validation"],
                "o-",
                markersize=3,
                label="validation",
            )
        ax.set(title=title, xlabel="epoch")
        ax.legend(frameon=False)
    weight_ax = axes[2].twinx()
    weight_ax.plot(history["epoch"], history["kl_weight"], color="grey", ls="--", lw=1)
    weight_ax.set_ylabel("KL weight", color="grey")
    weight_ax.set_ylim(0, 1.05)
    fig.suptitle(f"training history of adata.uns[{key!r}]")
    if save is not None:
        fig.savefig(save, dpi=150, bbox_inches="tight")
    if show or (show is None and plt.isinteractive()):
        plt.show()
    return fig
