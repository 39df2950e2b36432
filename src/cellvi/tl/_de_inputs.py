"""What differential expression compares, per model: its genes, and for an RNA + protein model
also its denoised proteins (named ``"protein:<name>"`` so they never clash with gene names)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd
from scipy import sparse

from ..data._mudata import is_mudata, rna_anndata
from ..data.loader import TensorData
from ..lifecycle.modalities import registered_counts
from ..lifecycle.runtime import LoadedModel

#: Prefix of protein names in the DE results of an RNA + protein model.
PROTEIN_PREFIX = "protein:"
#: Added to denoised protein expression (counts) before the log fold change: a tenth of a count.
PROTEIN_PSEUDOCOUNT = 0.1


@dataclass
class DEInputs:
    """Model inputs, raw counts (features in columns) and names of the compared features."""

    data: TensorData
    rna_counts: Any
    counts: Any
    names: list[str]
    obs: pd.DataFrame
    n_proteins: int = field(default=0)

    def families(self, pseudocount: float) -> list[tuple[slice, float]]:
        """Feature columns tested together, and the pseudocount of each: genes, then proteins."""
        if not self.n_proteins:
            return [(slice(None), pseudocount)]
        n_genes = len(self.names) - self.n_proteins
        return [(slice(0, n_genes), pseudocount), (slice(n_genes, None), PROTEIN_PSEUDOCOUNT)]

    def params(self) -> dict[str, Any]:
        if not self.n_proteins:
            return {}
        return {
            "n_proteins": self.n_proteins,
            "protein_prefix": PROTEIN_PREFIX,
            "protein_pseudocount": PROTEIN_PSEUDOCOUNT,
        }


def protein_inputs(data, model: LoadedModel, groupby: str) -> DEInputs:
    """RNA + protein inputs of a MuData (or AnnData with ``.obsm`` proteins); ``groupby`` is
    looked up in the MuData's ``.obs``, then in the RNA modality's."""
    proteins = model.protein_names
    registered, protein, tensors = registered_counts(data, model)
    own_obs = not is_mudata(data) or groupby in data.obs
    obs = data.obs if own_obs else rna_anndata(data, model.registry).obs
    counts = sparse.hstack([sparse.csr_matrix(registered.X), sparse.csr_matrix(protein)]).tocsr()
    names = [*map(str, model.var_names), *(PROTEIN_PREFIX + p for p in proteins)]
    return DEInputs(tensors, registered.X, counts, names, obs, n_proteins=len(proteins))
