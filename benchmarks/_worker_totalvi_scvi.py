"""Benchmark worker: train scvi-tools' TOTALVI on train.h5mu, evaluate on test.h5mu, write JSON.

Started by ``bench_totalvi_speed.py`` with the scvi-tools interpreter. Only ``model.train`` is
timed. Protein counts are made dense first: scvi-tools 1.4.2 needs dense proteins for its
empirical background prior.

Two held-out ELBOs are written. ``scvi_get_elbo`` is ``model.get_elbo(test)``. Besides the
ELBO's terms, scvi-tools' loss adds two penalties per cell: a log-normal prior on its learned
per-batch protein efficiencies (a global parameter) and a small ``1e-3`` regulariser on the
mixing logits. ``heldout_elbo`` leaves those two out, which gives exactly the terms cellvi's
``totalvi_evaluate`` sums: RNA and protein log-likelihoods (full, normalised), the KL of ``z``
and the KL of the protein background.
"""

from __future__ import annotations

import time

_T_START = time.perf_counter()

import json  # noqa: E402
import logging  # noqa: E402
import warnings  # noqa: E402

from _worker_common import versions, worker_parser  # noqa: E402


def _densify(mdata) -> None:
    import scipy.sparse as sp

    prot = mdata.mod["prot"]
    if sp.issparse(prot.X):
        prot.X = prot.X.toarray()


def _model_elbo(model, test, batch_size: int = 1024) -> dict:
    """Per-cell mean ELBO terms of the held-out cells, without the two penalties."""
    import torch
    from torch.distributions import Bernoulli, LogNormal

    torch.manual_seed(0)
    sums = {"rec_rna": 0.0, "rec_protein": 0.0, "kl_z": 0.0, "kl_background": 0.0, "penalties": 0.0}
    n = 0
    test = model._validate_anndata(test)
    loader = model._make_data_loader(adata=test, batch_size=batch_size)
    model.module.eval()
    with torch.inference_mode():
        for tensors in loader:
            _, gen, losses = model.module(tensors)
            rec, kl = losses.reconstruction_loss, losses.kl_local
            eff = gen["per_batch_efficiency"]
            prior = LogNormal(torch.zeros(()), torch.ones(()))
            penalty = -prior.log_prob(eff).sum(1)
            mixing = gen["py_"]["mixing"]
            penalty = penalty - 1e-3 * Bernoulli(logits=mixing).log_prob(
                torch.ones_like(mixing)
            ).sum(1)
            sums["rec_rna"] += float(rec["reconst_loss_gene"].sum())
            sums["rec_protein"] += float(rec["reconst_loss_protein"].sum())
            sums["kl_z"] += float(kl["kl_div_z"].sum() + kl["kl_div_l_gene"].sum())
            sums["kl_background"] += float((kl["kl_div_back_pro"] - penalty).sum())
            sums["penalties"] += float(penalty.sum())
            n += int(rec["reconst_loss_gene"].shape[0])
    terms = {k: v / n for k, v in sums.items()}
    terms["elbo"] = -(
        terms["rec_rna"] + terms["rec_protein"] + terms["kl_z"] + terms["kl_background"]
    )
    return terms


def main() -> None:
    p = worker_parser(__doc__)
    p.add_argument("--latent-out", required=True)
    args = p.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")

    import mudata as mu
    import numpy as np
    import scvi

    scvi.settings.verbosity = logging.WARNING
    scvi.settings.dl_num_workers = 0
    scvi.settings.seed = args.seed
    scvi.settings.num_threads = args.threads
    train = mu.read_h5mu(args.train)
    test = mu.read_h5mu(args.test)
    for m in (train, test):
        _densify(m)
    modalities = {"rna_layer": "rna", "protein_layer": "prot", "batch_key": "rna"}
    scvi.model.TOTALVI.setup_mudata(train, batch_key="batch", modalities=modalities)
    model = scvi.model.TOTALVI(
        train, n_latent=args.n_latent, n_hidden=args.n_hidden, n_layers_encoder=args.n_layers
    )

    t0 = time.perf_counter()
    model.train(
        max_epochs=args.epochs,
        lr=args.lr,
        batch_size=args.batch_size,
        train_size=1.0,
        early_stopping=False,
        reduce_lr_on_plateau=False,
        n_epochs_kl_warmup=args.kl_warmup,
        accelerator="cpu",
        devices=1,
        enable_progress_bar=False,
    )
    train_seconds = time.perf_counter() - t0
    np.save(args.latent_out, model.get_latent_representation())
    terms = _model_elbo(model, test)
    get_elbo = float(model.get_elbo(adata=test))  # scvi-tools returns the ELBO itself
    result = {
        "tool": "scvi-tools",
        "train_seconds": train_seconds,
        "n_train_cells": int(train.n_obs),
        "n_test_cells": int(test.n_obs),
        "cells_per_s": train.n_obs * args.epochs / train_seconds,
        "heldout_elbo": terms["elbo"],
        "heldout_terms": terms,
        "scvi_get_elbo": get_elbo,
        "worker_seconds": time.perf_counter() - _T_START,
        "versions": versions("scvi-tools", scvi.__version__),
    }
    with open(args.out, "w") as fh:
        json.dump(result, fh, indent=2)


if __name__ == "__main__":
    main()
