"""Minibatches that carry the protein counts next to the RNA counts."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ._extract import extract_registered_data
from ._mudata import dense_protein_counts, rna_anndata
from .backed import counts_on_disk
from .loader import TensorData
from .tensors import tensor_data


@dataclass
class ProteinTensorData(TensorData):
    """:class:`TensorData` plus dense protein counts; minibatches gain ``y``."""

    protein: torch.Tensor | None = None

    @classmethod
    def from_registered_with_proteins(cls, data, protein: np.ndarray) -> ProteinTensorData:
        """Wrap RNA fields (a ``RegisteredData``) and a dense ``(n_cells, n_proteins)`` array."""
        base = tensor_data(data)
        if protein.shape[0] != base.n_cells:
            raise ValueError(
                f"{protein.shape[0]:,} cells of protein counts for {base.n_cells:,} RNA cells."
            )
        fields = {name: getattr(base, name) for name in base.__dataclass_fields__}
        tensor = torch.from_numpy(np.ascontiguousarray(protein, dtype=np.float32))
        return cls(**fields, protein=tensor)

    @property
    def n_proteins(self) -> int:
        """Number of proteins."""
        return int(self.protein.shape[1])

    def gather(self, rows: torch.Tensor, *, dense_x: bool = True) -> dict[str, torch.Tensor]:
        """The RNA minibatch of :meth:`TensorData.gather` with the proteins as ``y``."""
        out = super().gather(rows, dense_x=dense_x)
        out["y"] = self.protein.index_select(0, rows)
        return out


def protein_tensor_data(
    data, registry: dict, *, var_names=None, protein_names=None
) -> ProteinTensorData:
    """RNA and protein tensors of a MuData (or AnnData + ``.obsm``) read with ``registry``.

    ``var_names`` and ``protein_names``, when given (a trained model's), must match the data's
    genes and proteins in order. Everything is checked before any tensor is built.
    """
    rna = rna_anndata(data, registry)
    if counts_on_disk(rna):
        raise ValueError(
            "The RNA counts are on disk (backed); RNA + protein models read them from memory: "
            "load them with `adata = adata.to_memory()` first."
        )
    registered = extract_registered_data(rna, registry, var_names=var_names)
    protein, _ = dense_protein_counts(data, registry["protein"], expected_names=protein_names)
    return ProteinTensorData.from_registered_with_proteins(registered, protein)
