"""``cv.tl.map_query``: map new batches onto a trained reference (scArches-style)."""

from __future__ import annotations

import logging
import time
import warnings
from contextlib import nullcontext

import numpy as np
import torch
from anndata import AnnData

from .._settings import settings
from ..analysis.surgery import frozen_except, transplant
from ..data.loader import TensorData
from ..data.registry import extract_registered_data
from ..lifecycle.payload import encode
from ..models.scvi_codec import build_module
from ..train.plan import TrainingPlan
from ..train.trainer import default_max_epochs, fit, resolve_precision
from ..utils.seeding import seed_everything
from ..utils.session import session_report, versions
from ._common import compute_latent, load_model
from ._model_kind import require_model
from ._query import align_genes, extend_registry, gene_overlap, genes_match

logger = logging.getLogger("cellvi")

#: Query training is a fine-tune of a few parameters: fewer epochs than a fresh model.
MAX_DEFAULT_QUERY_EPOCHS = 200


def _check(model, query: AnnData, copy: bool, min_gene_overlap: float, max_epochs) -> None:
    if not str(model.registry["batch_key"]):
        raise ValueError(
            "the reference model was trained without a batch_key, so it has no batch columns "
            "to extend; train the reference with `cv.pp.setup_registry(ref, batch_key=...)`."
        )
    if not 0.0 < min_gene_overlap <= 1.0:
        raise ValueError(f"min_gene_overlap must be in (0, 1], got {min_gene_overlap}.")
    if max_epochs is not None and int(max_epochs) < 1:
        raise ValueError(f"max_epochs must be a positive integer or None, got {max_epochs}.")
    gene_overlap(query, model.var_names, min_gene_overlap)
    if not copy and not genes_match(query, model.var_names):
        raise ValueError(
            "the query's genes are not the reference's genes in the same order, and genes "
            "cannot be added to an AnnData in place: use `query = cv.tl.map_query(query, "
            "reference=..., copy=True)`, which returns a copy with the reference's genes "
            "(missing ones as zero counts)."
        )


def map_query(
    query: AnnData,
    *,
    reference: AnnData,
    key: str = "scvi",
    max_epochs: int | None = None,
    freeze: bool = True,
    min_gene_overlap: float = 0.5,
    batch_size: int = 128,
    lr: float = 1e-3,
    seed: int | None = None,
    accelerator: str = "auto",
    copy: bool = False,
) -> AnnData | None:
    """Map the cells of ``query`` into the latent space of the model in ``reference.uns[key]``.

    The reference's registry is applied to the query: genes are put in the reference's order
    (missing ones as all-zero columns, marked in ``var["cellvi_padded"]``; this needs
    ``copy=True`` when the genes differ), the query's new batches are appended to the batch
    categories, and the model gains one batch column per new batch in the layers that take
    the batch. Then only those columns train (``freeze=True``) and the query's latent is
    computed in the reference's space. See ``docs/analysis.md`` for the recommended flow
    (train the reference with ``encode_covariates=True`` so that the encoder sees the batch).

    Parameters
    ----------
    query
        New cells: raw counts in the reference's layer, the reference's batch column (new
        and known batches allowed) and its categorical covariates.
    reference
        AnnData holding the trained reference model in ``.uns[key]``.
    key
        Key of the model in the reference's ``.uns``; also where the query's model goes.
    max_epochs
        Training epochs (``None``: the default of ``cv.tl.scvi_train`` for the query's size,
        at most 200).
    freeze
        Train only the new batch columns (``True``) or fine-tune every weight (``False``).
    min_gene_overlap
        Smallest fraction of the reference's genes the query must have.
    batch_size, lr
        Minibatch size and Adam learning rate (no weight decay, no KL warm-up).
    seed
        Random seed (``None``: ``cv.settings.seed``).
    accelerator
        Passed to Lightning (``"auto"`` uses a GPU when present).
    copy
        Return a mapped copy (required when the query's genes differ from the reference's).

    Returns
    -------
    ``None`` or a copy; sets

    ``obsm["X_" + key]``
        The query's latent, in the same space as the reference's ``obsm["X_" + key]``.
    ``uns[key]``
        The query's model, a normal payload (every ``cv.tl`` function works on the query),
        whose registry is the reference's with the new batches; ``uns[key]["query_mapping"]``
        records the reference's batches, the new ones, ``freeze``, epochs and gene overlap.
    """
    start = time.perf_counter()
    model = load_model(reference, key)
    require_model(model, ("scvi",), "map_query")
    _check(model, query, copy, min_gene_overlap, max_epochs)
    overlap = gene_overlap(query, model.var_names, min_gene_overlap)
    layer = str(model.registry["layer"])
    target = (
        query if genes_match(query, model.var_names) else align_genes(query, model.var_names, layer)
    )
    keep_labels = model.params.get("dispersion") == "gene-label"
    registry = extend_registry(model.registry, target, keep_labels=keep_labels)
    data = TensorData.from_registered(
        extract_registered_data(target, registry, var_names=model.var_names)
    )
    seed = settings.seed if seed is None else int(seed)
    n_old = int(model.registry["n_batch"])
    module, history = _train(
        model, registry, data, n_old, freeze, max_epochs, batch_size, lr, seed, accelerator
    )
    latent = compute_latent(module, data)
    record = {
        "reference_batches": list(registry["batch_categories"][:n_old]),
        "new_batches": list(registry["batch_categories"][n_old:]),
        "freeze": bool(freeze),
        "max_epochs": int(len(history.get("epoch", []))),
        "lr": float(lr),
        "seed": seed,
        "gene_overlap": overlap,
    }
    payload = encode(
        "scvi",
        module.cpu(),
        params=model.params,
        extra={
            "registry": registry,
            "var_names": np.asarray(model.var_names, dtype=str),
            "history": {k: np.asarray(v, dtype=np.float64) for k, v in history.items()},
            "query_mapping": record,
            "versions": versions(),
            "session_info": session_report(),
        },
    )
    if target is query and copy:
        target = query.copy()
    target.obsm[f"X_{key}"] = latent
    target.uns[key] = payload
    logger.info(
        f"    finished in {time.perf_counter() - start:.1f}s: mapped {data.n_cells:,} cells "
        f"({len(record['new_batches'])} new batch(es)); added 'X_{key}' (obsm) and the model "
        f"(uns[{key!r}])"
    )
    return target if copy else None


def _train(model, registry, data, n_old, freeze, max_epochs, batch_size, lr, seed, accelerator):
    """The reference model extended to the query's batches and trained on the query."""
    generator = seed_everything(seed)
    module = build_module(model.params, registry, len(model.var_names))
    masks = transplant(model.module, module, n_old)
    module.library_log_means.copy_(torch.as_tensor(registry["library_log_means"]))
    module.library_log_vars.copy_(torch.as_tensor(registry["library_log_vars"]).clamp(min=1e-4))
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
    context = frozen_except(module, masks) if freeze else nullcontext()
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
            description="scVI query",
            precision=resolve_precision("auto", accelerator),
        )
    return plan.module.cpu().eval(), plan.history
