# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Annotating cells from a handful of labels with scANVI
#
# Annotating a new data set by hand is slow, but labelling a few cells of each type (from
# markers, a FACS gate, a previous study) is quick. scANVI (Xu et al. 2021, *Mol. Syst. Biol.*
# 17:e9620) learns from those few labels and from every unlabelled cell at once: it is scVI
# with the cell type in the prior of the latent space, and a classifier on that latent
# space. It starts from a trained scVI model, so integration and annotation share one
# embedding.
#
# This tutorial annotates the bundled PBMC data (four 10x Genomics data sets) from about 10 %
# of the curated labels of one of them, checks the predictions against the labels it was not
# given, and compares them with the simplest alternative: a nearest-neighbour vote on the scVI
# latent space. See {doc}`../scanvi` for the model, its options and the benchmark.
#
# Run it as a script (`python tutorials/scanvi_annotation.py`) or as a notebook; the
# documentation build runs it on a few epochs (`CELLVI_TUTORIAL_EPOCHS`), so the numbers in
# the built page are those of a short training, not of the defaults.

# %%
import os

import numpy as np
import pandas as pd
import scanpy as sc
from sklearn.metrics import f1_score
from sklearn.neighbors import KNeighborsClassifier

import cellvi as cv

sc.set_figure_params(dpi=80, frameon=False)
# Epochs of each training run: the documentation build sets a few; unset, cellvi's defaults.
MAX_EPOCHS = int(os.environ.get("CELLVI_TUTORIAL_EPOCHS", 0)) or None

# %% [markdown]
# ## A few labels
#
# `obs["cell_type"]` holds curated coarse labels for the `pbmc4k_v2` cells
# (`has_curated_label`); every other cell is `"unknown"`. To have something to check the
# predictions against, we keep the label of a random 10 % of each type and set the rest to
# `"unknown"` too: the model sees about 200 labelled cells out of about 5,000. `truth` keeps
# the curated labels (missing where there are none) for scoring only.

# %%
adata = cv.datasets.pbmc_10x()
truth = adata.obs["cell_type"].astype(str).where(adata.obs["has_curated_label"])
rng = np.random.default_rng(0)
label = np.full(adata.n_obs, "unknown", dtype=object)
for cell_type in truth.dropna().unique():
    cells = np.flatnonzero((truth == cell_type).to_numpy())
    keep = rng.choice(cells, max(1, round(0.1 * len(cells))), replace=False)
    label[keep] = cell_type
adata.obs["label"] = pd.Categorical(label)
adata.obs["truth"] = truth
adata.obs["label"].value_counts()

# %% [markdown]
# The labels column is registered like the batch; the cells without a label carry one
# category, here `"unknown"` (scANVI's default is `"Unknown"`: pass yours as
# `unlabeled_category`).

# %%
cv.pp.setup_registry(adata, layer="counts", batch_key="batch", labels_key="label")
cv.tl.scvi_train(adata, max_epochs=MAX_EPOCHS, seed=0)
cv.tl.scanvi_train(adata, unlabeled_category="unknown", seed=0)

# %% [markdown]
# `scanvi_train` copied the scVI model's encoder and decoder from `adata.uns["scvi"]`, fitted
# the classifier alone on the scVI latent of the labelled cells (200 steps, a fraction of a
# second), then trained the whole model for 10 epochs (a fine-tune: the scVI model has done
# most of the work) and wrote, beside the latent `obsm["X_scanvi"]` and the model
# `uns["scanvi"]`:
#
# - `obs["scanvi_prediction"]`: the predicted type of every cell (the registry's label
#   categories, without `"unknown"`);
# - `obs["scanvi_confidence"]`: the probability the classifier gives that type;
# - `obsm["scanvi_probabilities"]`: the probability of every type, its columns named in
#   `uns["scanvi_probabilities_columns"]`.

# %%
adata.obs[["label", "scanvi_prediction", "scanvi_confidence"]].head()

# %% [markdown]
# ## How good are the predictions?
#
# {func}`cellvi.pl.confusion` draws the predictions against known labels. Without `truth` it
# uses the labels the model was given, on the labelled cells: a check that the model fits
# what it was told, not of how well it annotates.

# %%
fig = cv.pl.confusion(adata)

# %% [markdown]
# With `truth`, the predictions are scored on the cells the model had no label for. Here
# those are the 90 % of curated `pbmc4k_v2` cells whose label we hid (the other batches have
# no curated label, so they are left out). The right panel shows that the wrong predictions
# are mostly the uncertain ones: a confidence threshold finds the cells to look at by hand.

# %%
fig = cv.pl.confusion(adata, truth="truth")
scores = fig.cellvi_scores
print(f"scANVI on {scores.n_cells:,} hidden labels: accuracy {scores.accuracy:.3f}, "
      f"macro F1 {scores.macro_f1:.3f}")  # fmt: skip

# %% [markdown]
# ## Against a nearest-neighbour vote on the scVI latent
#
# Without scANVI, the usual way to spread a few labels is a k-nearest-neighbour vote in the
# scVI latent space. scANVI should do at least as well; it also gives calibrated
# probabilities and a model that can annotate new data ({func}`cellvi.tl.map_query`).

# %%
given = (adata.obs["label"] != "unknown").to_numpy()
hidden = (adata.obs["label"] == "unknown").to_numpy() & adata.obs["truth"].notna().to_numpy()
knn = KNeighborsClassifier(n_neighbors=15).fit(adata.obsm["X_scvi"][given], label[given])
vote = knn.predict(adata.obsm["X_scvi"][hidden])
answer = adata.obs["truth"].to_numpy()[hidden].astype(str)
predicted = adata.obs["scanvi_prediction"].astype(str).to_numpy()[hidden]
pd.DataFrame(
    {
        "accuracy": [np.mean(predicted == answer), np.mean(vote == answer)],
        "macro F1": [
            f1_score(answer, predicted, average="macro"),
            f1_score(answer, vote, average="macro"),
        ],  # fmt: skip
    },
    index=["scANVI", "15-NN on the scVI latent"],
).round(3)

# %% [markdown]
# ## The embedding
#
# The scANVI latent is the scVI latent refined by the labels: cells of one type come closer
# together, across batches. scanpy works on it as on any embedding.

# %%
sc.pp.neighbors(adata, use_rep="X_scanvi")
sc.tl.umap(adata)
sc.pl.umap(adata, color=["batch", "scanvi_prediction", "scanvi_confidence"], wspace=0.4)

# %% [markdown]
# ## Everything in one file
#
# The predictions, both models and the data go into one `.h5ad`; after `read_h5ad` every tool
# finds the models where it left them, e.g. for differential expression between predicted
# types.

# %%
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

import anndata as ad  # noqa: E402

with tempfile.TemporaryDirectory() as folder:
    path = Path(folder) / "pbmc_annotated.h5ad"
    adata.write_h5ad(path)
    again = ad.read_h5ad(path)
cv.tl.differential_expression(again, key="scanvi", groupby="scanvi_prediction",
                              groups=["B cell"], n_samples=200, seed=0)  # fmt: skip
sc.get.rank_genes_groups_df(again, group="B cell", key="rank_genes_groups_scanvi").head()
