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
# # Your own model family: a linearly decoded scVI (LDVAE)
#
# cellvi's tools do not know scVI or totalVI by name: they ask the model's *family* what it
# reads, how to build it and what it can do (see {doc}`../families`). A new model is therefore
# one definition and one registration, written outside the package with the public API only,
# and every verb (training with all its options, embedding, normalisation, evaluation,
# differential expression, criticism, saving, query mapping, tuning) works on it at once.
#
# This tutorial writes the linearly decoded VAE of Svensson et al. (2020, *Bioinformatics*
# 36:3418), LDVAE: scVI's encoder, but a *linear* map from the latent to the genes' expression
# logits. The price is some reconstruction quality; the gain is that each latent dimension has
# one weight per gene, a loading, which reads like a factor of a factor analysis. The family
# puts those loadings in `adata.varm["ldvae_loadings"]`, where scanpy keeps PCA's.
#
# Run it as a script (`python tutorials/custom_model.py`) or as a notebook; the documentation
# build runs it on a few epochs (`CELLVI_TUTORIAL_EPOCHS`).

# %%
import os

import numpy as np
import pandas as pd
import scanpy as sc
import torch
from torch import nn

import cellvi as cv
from cellvi.families import Capability, Hyperparameter, ModelFamily
from cellvi.models import SCVIModule

sc.set_figure_params(dpi=80, frameon=False)
# Epochs of each training run: the documentation build sets a few; unset, cellvi's default rule.
MAX_EPOCHS = int(os.environ.get("CELLVI_TUTORIAL_EPOCHS", 0)) or None

# %% [markdown]
# ## The module: scVI with a linear decoder
#
# A family's module is a plain torch module: it never sees an AnnData. The simplest way to a
# new one is often to change one part of an existing one. `SCVIModule` calls
# `self.decoder(z, log_library, cats, cont)`, where `cats` are the batch and categorical
# covariates as integer codes and `cont` the continuous covariates, and expects the genes'
# expression logits (`scale_logits`; a softmax gives the proportions) and the library back. The
# linear decoder below gives every categorical covariate an additive offset per gene, held in
# an `nn.Embedding` whose rows are the categories: that is what lets query mapping add rows
# for new batches (it extends tensors along their first dimension).


# %%
class LinearDecoder(nn.Module):
    """``scale_logits = W z + offsets[batch] + ...``: one loading per gene and latent dimension."""

    def __init__(self, n_latent, n_genes, *, n_cats=(), n_cont=0, zero_inflation=False):
        super().__init__()
        self.loadings = nn.Linear(n_latent, n_genes, bias=False)
        self.offsets = nn.ModuleList(nn.Embedding(n, n_genes) for n in n_cats)
        for offset in self.offsets:
            nn.init.zeros_(offset.weight)
        self.bias = nn.Parameter(torch.zeros(n_genes))
        self.continuous = nn.Linear(n_cont, n_genes, bias=False) if n_cont else None
        self.zi_logits = nn.Linear(n_latent, n_genes) if zero_inflation else None

    def forward(self, z, log_library, cats=(), cont=None):
        z = z.float()
        logits = self.loadings(z) + self.bias
        for offset, codes in zip(self.offsets, cats, strict=True):
            logits = logits + offset(codes)
        if self.continuous is not None and cont is not None:
            logits = logits + self.continuous(cont.float())
        out = {"scale_logits": logits, "log_library": log_library}
        if self.zi_logits is not None:
            out["zi_logits"] = self.zi_logits(z)
        return out


class LDVAEModule(SCVIModule):
    """scVI's encoders and likelihoods with :class:`LinearDecoder` as the decoder.

    The keyword-only options are the family's hyperparameters (their defaults are read from
    this signature). The latent is Gaussian and the batch one-hot, so that the loadings act
    on the latent itself.
    """

    def __init__(
        self,
        n_input: int,
        *,
        n_batch: int = 1,
        n_labels: int = 1,
        n_cats_per_cov=(),
        n_cont: int = 0,
        n_hidden: int = 128,
        n_latent: int = 10,
        n_layers: int = 1,
        dropout_rate: float = 0.1,
        dispersion: str = "gene",
        gene_likelihood: str = "nb",
        use_observed_lib_size: bool = False,
        encode_covariates: bool = False,
    ) -> None:
        if dispersion == "gene-cell":
            raise ValueError(
                "LDVAE has no per-cell dispersion head; use dispersion='gene', 'gene-batch' "
                "or 'gene-label'."
            )
        super().__init__(
            n_input, n_batch=n_batch, n_labels=n_labels, n_cats_per_cov=n_cats_per_cov,
            n_cont=n_cont, n_hidden=n_hidden, n_latent=n_latent, n_layers=n_layers,
            dropout_rate=dropout_rate, dispersion=dispersion, gene_likelihood=gene_likelihood,
            use_observed_lib_size=use_observed_lib_size, encode_covariates=encode_covariates,
        )  # fmt: skip
        self.decoder = LinearDecoder(
            n_latent,
            n_input,
            n_cats=[n_batch, *n_cats_per_cov],
            n_cont=n_cont,
            zero_inflation=gene_likelihood == "zinb",
        )

    def loadings(self) -> np.ndarray:
        """The decoder's weights, genes x latent dimensions."""
        return self.decoder.loadings.weight.detach().cpu().numpy().astype(np.float32)


# %% [markdown]
# ## The family: what every tool asks
#
# The family says how to build the module from the recorded parameters and a registry (the
# same call rebuilds a stored model before its weights are loaded), which options it has with
# their defaults and tuning ranges, what its models can do, and two hooks: `prepare` sets the
# library-size prior of a fresh module from the registry (the one scVI uses, from the public
# helpers), and `outputs` names what a trained model adds to the data beside `obsm["X_ldvae"]`
# and `uns["ldvae"]`: the loadings in `varm`. Reading the RNA counts of one AnnData is the
# default, so there is no `read` hook.

# %%
MODULE_OPTIONS = cv.families.module_options(LDVAEModule)


def build(params, registry, n_vars):
    shape = cv.families.data_shape(registry, n_vars)
    options = {k: params[k] for k in MODULE_OPTIONS if k in params}
    return LDVAEModule(shape.pop("n_input"), **shape, **options)


def uses_labels(params):
    return params.get("dispersion") == "gene-label"


def outputs(module, tensors, var_names, key):
    return {"varm": {f"{key}_loadings": module.loadings()}}


LDVAE = ModelFamily(
    name="ldvae",
    title="LDVAE",
    key_added="ldvae",
    build=build,
    capabilities=frozenset(
        {
            Capability.EMBED,
            Capability.NORMALIZE,
            Capability.EVALUATE,
            Capability.DE,
            Capability.POSTERIOR_PREDICTIVE,
            Capability.MARGINAL_LL,
            Capability.CRITICISM,
            Capability.MAP_QUERY,
            Capability.TUNE,
        }
    ),  # fmt: skip
    hyperparameters=cv.families.hyperparameters(
        LDVAEModule,
        {"n_latent": ("int", 5, 20), "n_hidden": ("cat", [64, 128, 256])},
        {"lr": cv.families.LR, "batch_size": Hyperparameter(128)},
    ),
    train_verb="cv.tl.train(adata, model='ldvae')",
    prepare=cv.families.init_library_prior,
    uses_labels=uses_labels,
    init_query=cv.families.init_query_library_prior,
    outputs=outputs,
)
cv.families.register_family(LDVAE, replace=True)  # replace: rerunning the cell is fine
cv.families.family_names()

# %% [markdown]
# ## Training it like any other model
#
# The bundled data: 5,030 PBMCs from four 10x Genomics runs, 2,000 highly variable genes, raw
# counts in `layers["counts"]`, curated cell types for part of the cells. `cv.tl.train` is the
# training path of every family, with every option (`seed`, `early_stopping`,
# `checkpoint_dir` and `resume`, `precision`, `devices`, ...).

# %%
adata = cv.datasets.pbmc_10x()
cv.pp.setup_registry(adata, layer="counts", batch_key="batch")
cv.tl.train(adata, model="ldvae", max_epochs=MAX_EPOCHS, seed=0)
adata

# %% [markdown]
# The latent is in `obsm["X_ldvae"]`, the model in `uns["ldvae"]` and the loadings in
# `varm["ldvae_loadings"]`. The genes with the largest loadings of each dimension, either sign:

# %%
loadings = pd.DataFrame(
    adata.varm["ldvae_loadings"],
    index=adata.var_names,
    columns=[f"z{i}" for i in range(adata.varm["ldvae_loadings"].shape[1])],
)
top = {
    dim: [*loadings[dim].nlargest(4).index, "|", *loadings[dim].nsmallest(4).index]
    for dim in loadings.columns
}
pd.DataFrame(top, index=[*("+" * 4), "", *("-" * 4)]).T

# %% [markdown]
# The latent goes to scanpy as any embedding:

# %%
sc.pp.neighbors(adata, use_rep="X_ldvae")
sc.tl.umap(adata)
sc.pl.umap(adata, color=["batch", "cell_type"], wspace=0.4)

# %% [markdown]
# ## The generic verbs
#
# Nothing below knows the family by name: each verb reads `uns["ldvae"]["model"]`, looks the
# family up and asks it. Normalised expression, the held-out evidence lower bound, and Bayesian
# differential expression between the curated cell types:

# %%
cv.tl.normalize(adata, key="ldvae")
metrics = cv.tl.evaluate(adata, key="ldvae")
{k: round(float(v), 2) for k, v in metrics.items()}

# %%
labelled = adata[adata.obs["cell_type"] != "unknown"].copy()
cv.tl.differential_expression(labelled, key="ldvae", groupby="cell_type")
cv.tl.differential_expression_df(labelled, "B cell", key="rank_genes_groups_ldvae").head()

# %% [markdown]
# How well does a linear decoder fit? scVI on the same cells with the same seed gives the
# comparison, and posterior predictive checks (`cv.pl.criticism`) show where the two differ:
# each panel compares statistics of data simulated from the model with the observed ones.

# %%
cv.tl.scvi_train(adata, max_epochs=MAX_EPOCHS, seed=0)
scvi_elbo = cv.tl.evaluate(adata, key="scvi")["elbo"]
pd.Series({"LDVAE": metrics["elbo"], "scVI": scvi_elbo}, name="held-out ELBO per cell")

# %%
cv.pl.criticism(adata, key=["ldvae", "scvi"], n_samples=5)

# %% [markdown]
# ## Saving and loading
#
# The model is plain arrays and strings in `.uns`, so the `.h5ad` file carries it. A session
# that reads it back needs the family registered (run the definitions above, or import the
# module that holds them) before the first verb uses the model.

# %%
import tempfile
from pathlib import Path

with tempfile.TemporaryDirectory() as folder:
    path = Path(folder) / "pbmc_ldvae.h5ad"
    adata.write_h5ad(path)
    back = sc.read_h5ad(path)
cv.tl.embed(back, key="ldvae", key_added="ldvae_again")
float(np.abs(back.obsm["X_ldvae_again"] - adata.obsm["X_ldvae"]).max())

# %% [markdown]
# ## What the family did not have to write
#
# No file of cellvi changed for LDVAE. The contract test suite (`tests/families`) runs this very
# family, defined here, through every verb on every run of the tests: training with each
# option, resume after a crash, Ctrl-C, a NaN loss, the `.h5ad` and model-folder round trips,
# query mapping and a two-trial tuning run. A capability left out of `capabilities` gives a
# clear "not available for LDVAE models" error instead of a traceback.
