"""DE results in scanpy's ``rank_genes_groups`` layout, and the getter of the full table."""

from __future__ import annotations

import numpy as np
import pandas as pd
from anndata import AnnData

#: Per-gene fields stored beside scanpy's, each a record array with one column per group.
EXTRA_FIELDS = (
    "proba_de",
    "proba_not_de",
    "bayes_factor",
    "lfc_median",
    "lfc_std",
    "lfc_min",
    "lfc_max",
    "scale1",
    "scale2",
    "raw_mean1",
    "raw_mean2",
    "is_de_fdr",
)
#: scanpy's field name -> ours.
SCANPY_FIELDS = {
    "scores": "score",
    "logfoldchanges": "lfc_mean",
    "pvals": "proba_not_de",
    "pvals_adj": "expected_fdr",
}


def rank_genes_groups_layout(
    tables: dict[str, pd.DataFrame], params: dict, pts: pd.DataFrame, pts_rest: pd.DataFrame
) -> dict:
    """The ``.uns`` entry: record arrays ordered by decreasing score within each group."""
    groups = list(tables)
    # saturated probabilities tie: the fold change breaks the tie
    ordered = {
        g: t.sort_values(["score", "lfc_mean"], ascending=False, kind="stable")
        for g, t in tables.items()
    }

    def records(column: str, dtype) -> np.recarray:
        arrays = [ordered[g][column].to_numpy().astype(dtype) for g in groups]
        return np.rec.fromarrays(arrays, names=groups)

    out = {"params": params, "names": records("names", object)}
    for name, column in SCANPY_FIELDS.items():
        out[name] = records(column, np.float32 if name != "pvals_adj" else np.float64)
    for column in EXTRA_FIELDS:
        out[column] = records(column, bool if column == "is_de_fdr" else np.float64)
    out["pts"], out["pts_rest"] = pts, pts_rest
    return out


def differential_expression_df(
    adata: AnnData, group: str | list[str] | None = None, *, key: str | None = None
) -> pd.DataFrame:
    """All per-gene statistics of :func:`~cellvi.tl.differential_expression` as a table.

    Parameters
    ----------
    adata
        Data on which ``cv.tl.differential_expression`` ran (also after an h5ad round trip).
    group
        Group(s) to return (``None``: all).
    key
        ``key_added`` of the DE run (default ``"rank_genes_groups_" + model key``): ``None``
        takes the only cellvi DE result in ``adata.uns``.

    Returns
    -------
    One row per gene and group, in rank order within each group, with columns ``group``,
    ``names``, ``scores``, ``logfoldchanges`` (= mean LFC, log2), ``pvals``
    (= ``proba_not_de``), ``pvals_adj`` (= posterior expected FDR), the fields
    ``proba_de``, ``proba_not_de``, ``bayes_factor``, ``lfc_median``, ``lfc_std``,
    ``lfc_min``, ``lfc_max``, ``scale1``, ``scale2`` (mean normalised expression),
    ``raw_mean1``, ``raw_mean2`` (mean counts), ``is_de_fdr``, and ``pct_nz_group``,
    ``pct_nz_reference`` (fraction of cells with a non-zero count). For a model of RNA and
    protein counts a ``modality`` column (``"rna"`` or ``"protein"``) follows ``group``.
    """
    if key is None:
        key = _only_result(adata)
    if key not in adata.uns or "proba_de" not in adata.uns[key]:
        raise KeyError(
            f"No cellvi differential expression at adata.uns[{key!r}]; run "
            f"`cv.tl.differential_expression(adata, groupby=..., key_added={key!r})` first."
        )
    result = adata.uns[key]
    known = list(result["names"].dtype.names)
    groups = known if group is None else [group] if isinstance(group, str) else list(group)
    unknown = [g for g in groups if g not in known]
    if unknown:
        raise ValueError(f"groups {unknown} are not in the DE results; known groups: {known}.")
    fields = ["names", *SCANPY_FIELDS, *EXTRA_FIELDS]
    frames = []
    for g in groups:
        table = pd.DataFrame({f: np.asarray(result[f][g]) for f in fields})
        table["names"] = table["names"].astype(str)
        table["pct_nz_group"] = result["pts"][g].reindex(table["names"]).to_numpy()
        table["pct_nz_reference"] = result["pts_rest"][g].reindex(table["names"]).to_numpy()
        table.insert(0, "group", g)
        frames.append(table)
    out = pd.concat(frames, ignore_index=True)
    prefix = result["params"].get("protein_prefix")
    if prefix is not None:  # RNA + protein model: genes and proteins in one table
        is_protein = out["names"].str.startswith(str(prefix))
        out.insert(1, "modality", np.where(is_protein, "protein", "rna"))
    out["group"] = pd.Categorical(out["group"], categories=groups)
    out["is_de_fdr"] = out["is_de_fdr"].astype(bool)
    return out


def _only_result(adata: AnnData) -> str:
    """The key of the one cellvi DE result in ``adata.uns`` (an error when none or several)."""
    found = [
        k
        for k, v in adata.uns.items()
        if str(k).startswith("rank_genes_groups_") and isinstance(v, dict) and "proba_de" in v
    ]
    if len(found) == 1:
        return found[0]
    if not found:
        return "rank_genes_groups_scvi"  # the error below names the call to run
    raise ValueError(f"adata.uns holds several cellvi DE results {found}; pass key=one of them.")
