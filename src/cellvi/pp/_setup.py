"""``setup_registry``: validate an AnnData and record what cellvi models will read from it."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING

from anndata import AnnData

from ..data._fields import check_anndata
from ..data._mudata import is_mudata
from ..data.backed import counts_on_disk
from ..data.registry import REGISTRY_KEY, build_registry
from ._setup_multimodal import setup_multimodal

if TYPE_CHECKING:
    from mudata import MuData

logger = logging.getLogger("cellvi")


def setup_registry(
    adata: AnnData | MuData,
    *,
    layer: str | None = None,
    batch_key: str | None = None,
    labels_key: str | None = None,
    size_factor_key: str | None = None,
    categorical_covariate_keys: Sequence[str] | None = None,
    continuous_covariate_keys: Sequence[str] | None = None,
    rna_layer: str | None = None,
    protein_layer: str | None = None,
    rna_modality: str = "rna",
    protein_modality: str = "prot",
    protein_obsm_key: str | None = None,
    protein_names: Sequence[str] | None = None,
    copy: bool = False,
) -> AnnData | MuData | None:
    """Validate the raw counts and annotations a model will use and register them.

    Everything is checked before anything is changed, so `adata` is left untouched when a check
    fails. Zero-count cells, all-zero genes and single-cell batches are allowed, with a warning.

    Parameters
    ----------
    adata
        Annotated data matrix with raw counts, in memory or backed
        (``anndata.read_h5ad(path, backed="r")``, CSR or dense ``X`` in an ``.h5ad`` file):
        backed counts are validated in blocks of rows and never loaded as a whole.
    layer
        Layer with the raw counts; ``None`` uses ``adata.X``.
    batch_key
        ``adata.obs`` column with the batch of each cell.
    labels_key
        ``adata.obs`` column with cell labels (e.g. cell types).
    size_factor_key
        ``adata.obs`` column with positive size factors; ``None`` uses library sizes.
    categorical_covariate_keys
        ``adata.obs`` columns with further categorical covariates (e.g. donor).
    continuous_covariate_keys
        ``adata.obs`` columns with further numeric covariates (e.g. percent mitochondrial).
    rna_layer
        For RNA + protein data: layer of the RNA modality with raw counts (same as
        ``layer``; ``None``: its ``X``).
    protein_layer
        For a MuData: layer of the protein modality with raw counts (``None``: its ``X``).
    rna_modality, protein_modality
        For a MuData: names of the RNA and protein modalities.
    protein_obsm_key
        For an AnnData with protein counts in ``.obsm`` (a DataFrame, dense or sparse array):
        its key. Registers the proteins too.
    protein_names
        Names of the proteins when ``.obsm[protein_obsm_key]`` is an array (default
        ``protein_0``, ...; a DataFrame's columns are used as they are).
    copy
        Return a registered copy instead of modifying `adata`.

    Returns
    -------
    A registered copy if `copy` is ``True``, else ``None``; sets the registry (see
    :mod:`cellvi.data.registry`) as ``adata.uns["cellvi_registry"]`` (for a MuData:
    ``mdata.uns["cellvi_registry"]``, with a ``protein`` entry, see :mod:`cellvi.data._mudata`).
    """
    if is_mudata(adata) or protein_obsm_key is not None:
        return setup_multimodal(
            adata,
            rna_layer=_one_layer(layer, rna_layer),
            protein_layer=protein_layer,
            rna_modality=rna_modality,
            protein_modality=protein_modality,
            protein_obsm_key=protein_obsm_key,
            protein_names=protein_names,
            obs_keys={
                "batch_key": batch_key,
                "labels_key": labels_key,
                "size_factor_key": size_factor_key,
                "categorical_covariate_keys": categorical_covariate_keys,
                "continuous_covariate_keys": continuous_covariate_keys,
            },
            copy=copy,
        )
    if rna_layer is not None or protein_layer is not None or protein_names is not None:
        raise ValueError(
            "rna_layer, protein_layer and protein_names are for RNA + protein data: pass a "
            "MuData, or an AnnData with protein_obsm_key=...; for RNA alone use layer=."
        )
    check_anndata(adata)
    if counts_on_disk(adata) and (copy or adata.is_view):
        raise ValueError(
            "adata keeps its counts on disk (a backed .h5ad or a zarr store) and "
            f"{'copy=True' if copy else 'a view'} would need the whole matrix in memory: "
            "register the backed AnnData itself (`cv.pp.setup_registry(adata, ...)`), or load it "
            "with `adata = adata.to_memory()` first."
        )
    registry = build_registry(
        adata,
        layer=layer,
        batch_key=batch_key,
        labels_key=labels_key,
        size_factor_key=size_factor_key,
        categorical_covariate_keys=categorical_covariate_keys,
        continuous_covariate_keys=continuous_covariate_keys,
    )
    if copy:
        adata = adata.copy()
    elif adata.is_view:
        # Like scanpy: a view cannot hold new .uns entries, so it becomes an actual AnnData.
        warnings.warn("Received a view of an AnnData. Making a copy.", UserWarning, stacklevel=2)
        adata._init_as_actual(adata.copy())
    adata.uns[REGISTRY_KEY] = registry
    logger.info(_summary(registry))
    return adata if copy else None


def _one_layer(layer: str | None, rna_layer: str | None) -> str | None:
    if layer is not None and rna_layer is not None and layer != rna_layer:
        raise ValueError(f"layer={layer!r} and rna_layer={rna_layer!r} differ; pass only one.")
    return rna_layer if rna_layer is not None else layer


def _summary(registry: dict) -> str:
    """One line describing what was registered."""
    source = f"layer {registry['layer']!r}" if registry["layer"] else "X"
    parts = [f"{registry['n_cells']:,} cells × {registry['n_vars']:,} genes from {source}"]
    for key, count, noun in (
        ("batch_key", "n_batch", "batches"),
        ("labels_key", "n_labels", "labels"),
    ):
        if registry[key]:
            parts.append(f"{key}={registry[key]!r} ({registry[count]:,} {noun})")
    n_cat = len(registry["categorical_covariate_keys"])
    n_cont = len(registry["continuous_covariate_keys"])
    if n_cat or n_cont:
        parts.append(f"{n_cat} categorical and {n_cont} continuous covariates")
    if registry["size_factor_key"]:
        parts.append(f"size factors from {registry['size_factor_key']!r}")
    if registry["n_zero_count_cells"]:
        parts.append(f"{registry['n_zero_count_cells']:,} zero-count cells")
    return f"cellvi registry in adata.uns[{REGISTRY_KEY!r}]: " + "; ".join(parts) + "."
