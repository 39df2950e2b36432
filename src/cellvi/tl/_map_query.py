"""``cv.tl.map_query``: map new batches onto a trained reference (scArches-style)."""

from __future__ import annotations

import logging
import time
import warnings
from contextlib import nullcontext
from typing import TYPE_CHECKING

import numpy as np
from anndata import AnnData

from .._settings import settings
from ..analysis.surgery import fixed_parts, frozen_except
from ..data._mudata import rna_anndata
from ..families import Capability
from ..lifecycle.payload import encode
from ..lifecycle.runtime import compute_latent, load_model
from ..train.plan import TrainingPlan
from ..train.trainer import default_max_epochs, fit, resolve_precision
from ..utils.native import take_used
from ..utils.seeding import seed_everything
from ..utils.session import session_report, versions
from ._query import gene_overlap, genes_match, prepare_rna
from ._query_protein import check_layout, prepare_with_proteins
from ._train import write_results

if TYPE_CHECKING:
    from mudata import MuData

logger = logging.getLogger("cellvi")

#: Query training is a fine-tune of a few parameters: fewer epochs than a fresh model.
MAX_DEFAULT_QUERY_EPOCHS = 200


def _check(model, query, copy: bool, min_gene_overlap: float, max_epochs) -> float:
    """Every check on the arguments and the genes; the fraction of the reference's genes."""
    if not str(model.registry["batch_key"]):
        raise ValueError(
            "the reference model was trained without a batch_key, so it has no batch columns "
            "to extend; train the reference with `cv.pp.setup_registry(ref, batch_key=...)`."
        )
    if not 0.0 < min_gene_overlap <= 1.0:
        raise ValueError(f"min_gene_overlap must be in (0, 1], got {min_gene_overlap}.")
    if max_epochs is not None and int(max_epochs) < 1:
        raise ValueError(f"max_epochs must be a positive integer or None, got {max_epochs}.")
    if "protein" in model.registry:
        check_layout(query, model.registry["protein"])
        rna = rna_anndata(query, model.registry)
    else:
        rna = query
    overlap = gene_overlap(rna, model.var_names, min_gene_overlap)
    if not copy and not genes_match(rna, model.var_names):
        raise ValueError(
            "the query's genes are not the reference's genes in the same order, and genes "
            "cannot be added to an AnnData in place: use `query = cv.tl.map_query(query, "
            "reference=..., copy=True)`, which returns a copy with the reference's genes "
            "(missing ones as zero counts)."
        )
    return overlap


def map_query(
    query: AnnData | MuData,
    *,
    reference: AnnData | MuData,
    key: str = "scvi",
    max_epochs: int | None = None,
    freeze: bool = True,
    min_gene_overlap: float = 0.5,
    batch_size: int = 128,
    lr: float = 1e-3,
    seed: int | None = None,
    accelerator: str = "auto",
    copy: bool = False,
) -> AnnData | MuData | None:
    """Map the cells of ``query`` into the latent space of the model in ``reference.uns[key]``.

    The reference's registry is applied to the query: genes are put in the reference's order
    (missing ones as all-zero columns, marked in ``var["cellvi_padded"]``; this needs
    ``copy=True`` when the genes differ), the query's new batches are appended to the batch
    categories, and the model gains one batch column per new batch in the layers that take
    the batch. Then only those columns train (``freeze=True``), with the batch norms the
    model names in ``query_adaptive_norms`` (scVI and scANVI: the decoder's, as in scArches;
    scANVI: also the classifier's), which use minibatch statistics and train their scale and
    shift; the query's latent is computed in the reference's space. See ``docs/analysis.md``
    for the recommended flow (train the reference with ``encode_covariates=True`` so that the
    encoder sees the batch).

    A reference of an RNA + protein model takes a query laid out as its training data (a
    MuData with the same modalities, or an AnnData with proteins in the same ``.obsm`` key).
    Proteins are matched by name and put in the reference's order; a protein the query lacks
    becomes an all-zero column marked in ``var["cellvi_padded"]`` (MuData) and is *not
    measured* in the new batches (left out of the protein likelihood, not zero counts). Each
    new batch also gets rows in the decoders' batch inputs, the per-batch dispersions and the
    protein background prior (started as training starts it: fitted to the new batch's
    counts when the reference used the empirical prior). A reference trained with an
    adversarial batch classifier is mapped without one (see the RNA + protein guide in ``docs/``).

    Parameters
    ----------
    query
        New cells: raw counts in the reference's layer, the reference's batch column (new
        and known batches allowed) and its categorical covariates; for an RNA + protein
        model also the protein counts, where the reference had them.
    reference
        AnnData (or MuData) holding the trained reference model in ``.uns[key]``.
    key
        Key of the model in the reference's ``.uns``; also where the query's model goes.
    max_epochs
        Training epochs (``None``: the default of ``cv.tl.scvi_train`` for the query's size,
        at most 200).
    freeze
        Train only the new batch columns (``True``) or fine-tune every weight (``False``)
        but those the model keeps fixed in ``query_fixed_when_fine_tuned`` (scANVI: the
        classifier, whose batch norm still adapts to the query, as with ``True``).
    min_gene_overlap
        Smallest fraction of the reference's genes the query must have.
    batch_size, lr
        Minibatch size and Adam learning rate (no weight decay, no KL warm-up).
    seed
        Random seed (``None``: ``cv.settings.seed``).
    accelerator
        Passed to Lightning (``"auto"`` uses a GPU when present).
    copy
        Return a mapped copy (required when the query's genes, or proteins, differ from the
        reference's).

    Returns
    -------
    ``None`` or a copy; sets

    ``obsm["X_" + key]``
        The query's latent, in the same space as the reference's ``obsm["X_" + key]`` (on
        the MuData itself for a MuData query).
    ``uns[key]``
        The query's model, a normal payload (every ``cv.tl`` function works on the query),
        whose registry is the reference's with the new batches; ``uns[key]["query_mapping"]``
        records the reference's batches, the new ones, ``freeze``, epochs and gene overlap
        (with proteins: also ``protein_overlap`` and ``missing_proteins``).
    """
    start = time.perf_counter()
    model = load_model(reference, key)
    family = model.require(Capability.MAP_QUERY, "cv.tl.map_query")
    overlap = _check(model, query, copy, min_gene_overlap, max_epochs)
    seed = settings.seed if seed is None else int(seed)
    if family.has_proteins:
        prepared = prepare_with_proteins(model, query, overlap, copy=copy, seed=seed)
    else:
        prepared = prepare_rna(model, query, overlap, seed=seed)
    registry, data = prepared.registry, prepared.data
    n_old = int(model.registry["n_batch"])
    module, history = _train(
        model, prepared, freeze, max_epochs, batch_size, lr, seed, accelerator, family
    )
    latent = compute_latent(module, data)
    results = family.results(module, data, model.var_names, key)
    record = {
        "reference_batches": list(registry["batch_categories"][:n_old]),
        "new_batches": list(registry["batch_categories"][n_old:]),
        "freeze": bool(freeze),
        "max_epochs": int(len(history.get("epoch", []))),
        "lr": float(lr),
        "seed": seed,
        **prepared.record,
    }
    payload = encode(
        family.name,
        module.cpu(),
        params=model.params,
        extra={
            "registry": registry,
            "var_names": np.asarray(model.var_names, dtype=str),
            **prepared.extra,
            "history": {k: np.asarray(v, dtype=np.float64) for k, v in history.items()},
            "query_mapping": record,
            "versions": versions(),
            "session_info": session_report(),
        },
    )
    target = prepared.target
    if target is query and copy:
        target = query.copy()
    target.obsm[f"X_{key}"] = latent
    write_results(target, results)
    target.uns[key] = payload
    logger.info(
        f"    finished in {time.perf_counter() - start:.1f}s: mapped {data.n_cells:,} cells "
        f"({len(record['new_batches'])} new batch(es)); added 'X_{key}' (obsm) and the model "
        f"(uns[{key!r}])"
    )
    return target if copy else None


def _train(model, prepared, freeze, max_epochs, batch_size, lr, seed, accelerator, family):
    """The extended reference model trained on the query (only the new rows when frozen).

    A reference trained with an adversarial batch classifier is fine-tuned without one: the
    classifier is not part of the stored model, and on the query's cells alone (usually one
    new batch) it would have no reference cells to mix the query with.
    """
    generator = seed_everything(seed)
    module, masks, data = prepared.module, prepared.masks, prepared.data
    if freeze and not model.params.get("encode_covariates", False):
        warnings.warn(
            "the reference was trained with encode_covariates=False: its encoder does not see "
            "the batch, so with freeze=True the query's latent comes from the unchanged "
            "encoder and training adjusts only the decoder. Train the reference with "
            "encode_covariates=True for scArches-style mapping.",
            UserWarning,
            stacklevel=3,
        )
    if freeze and not masks:
        logger.info("    the query has no new batches: nothing to train, embedding only")
        return module.eval(), {}
    epochs = max_epochs or min(default_max_epochs(data.n_cells), MAX_DEFAULT_QUERY_EPOCHS)
    # frozen entries must not move: Adam's weight decay would move them, so it is off
    plan = TrainingPlan(module, lr=lr, weight_decay=0.0, n_epochs_kl_warmup=0)
    adaptive = getattr(module, "query_adaptive_norms", ())
    if freeze:
        context = frozen_except(module, masks, adaptive_norms=adaptive)
    else:
        fixed = getattr(module, "query_fixed_when_fine_tuned", ())
        context = fixed_parts(module, fixed, adaptive_norms=adaptive) if fixed else nullcontext()
    take_used()  # the payload records the kernels this training uses
    with context:
        fit(
            plan,
            data,
            train_indices=np.arange(data.n_cells),
            validation_indices=np.zeros(0, dtype=np.int64),
            batch_size=batch_size,
            max_epochs=int(epochs),
            generator=generator,
            accelerator=accelerator,
            progress_bar=settings.progress_bar,
            description=f"{family.title} query",
            precision=resolve_precision("auto", accelerator),
        )
    return plan.module.cpu().eval(), plan.history
