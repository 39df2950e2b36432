"""Fast minibatches from registered data held once as torch tensors.

The count matrix is wrapped, without a copy where possible, as torch tensors: CSR stays CSR
(``indptr``, ``indices``, ``data``) and a minibatch is gathered with a handful of vectorised
tensor operations, so there is no per-batch scipy slicing, no Python loop over cells and no
DataLoader worker process. Each sparse minibatch also carries the coordinates of its non-zero
entries, which the likelihood uses to skip work on zero counts.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch

MIN_BATCH_CELLS = 3  # BatchNorm needs more than one cell; a tiny last batch joins the previous one


@dataclass
class TensorData:
    """Registered fields as torch tensors (shared memory with the numpy sources)."""

    n_cells: int
    n_vars: int
    batch: torch.Tensor
    labels: torch.Tensor
    cat_covs: torch.Tensor
    cont_covs: torch.Tensor
    size_factor: torch.Tensor | None
    log_x_factorial: torch.Tensor
    dense: torch.Tensor | None = None
    indptr: torch.Tensor | None = None
    indices: torch.Tensor | None = None
    values: torch.Tensor | None = None
    # a stored latent posterior per cell (minified data), gathered with each minibatch
    posterior: dict[str, torch.Tensor] | None = None

    @classmethod
    def from_registered(cls, data) -> TensorData:
        """Wrap a :class:`~cellvi.data.registry.RegisteredData`."""
        X = data.X
        fields = {
            "n_cells": X.shape[0],
            "n_vars": X.shape[1],
            "batch": torch.from_numpy(np.ascontiguousarray(data.batch, dtype=np.int64)),
            "labels": torch.from_numpy(np.ascontiguousarray(data.labels, dtype=np.int64)),
            "cat_covs": torch.from_numpy(np.ascontiguousarray(data.cat_covs, dtype=np.int64)),
            "cont_covs": torch.from_numpy(np.ascontiguousarray(data.cont_covs, dtype=np.float32)),
            "size_factor": None
            if data.size_factor is None
            else torch.from_numpy(np.ascontiguousarray(data.size_factor, dtype=np.float32)),
        }
        if sp.issparse(X):
            X = sp.csr_matrix(X) if X.format != "csr" else X
            values = np.asarray(X.data, dtype=np.float32)
            fields["indptr"] = torch.from_numpy(np.asarray(X.indptr))
            fields["indices"] = torch.from_numpy(np.asarray(X.indices))
            fields["values"] = torch.from_numpy(values)
            fields["log_x_factorial"] = _log_factorial_rows_sparse(X.indptr, values)
        else:
            dense = torch.from_numpy(np.ascontiguousarray(X, dtype=np.float32))
            fields["dense"] = dense
            fields["log_x_factorial"] = torch.lgamma(dense + 1.0).sum(1)
        return cls(**fields)

    def gather(self, rows: torch.Tensor, *, dense_x: bool = True) -> dict[str, torch.Tensor]:
        """The minibatch of the given cell indices, as a dict of tensors.

        From sparse data the non-zero entries come as ``nz_rows``, ``nz_cols`` and
        ``nz_values``; the dense ``x`` is built only when ``dense_x`` (training needs only the
        non-zeros).
        """
        out = {
            "batch": self.batch.index_select(0, rows),
            "labels": self.labels.index_select(0, rows),
            "cat_covs": self.cat_covs.index_select(0, rows),
            "cont_covs": self.cont_covs.index_select(0, rows),
            "log_x_factorial": self.log_x_factorial.index_select(0, rows),
        }
        if self.size_factor is not None:
            out["size_factor"] = self.size_factor.index_select(0, rows)
        for name, value in (self.posterior or {}).items():
            out[name] = value.index_select(0, rows)
        if self.dense is not None:
            out["x"] = self.dense.index_select(0, rows)
            return out
        starts = self.indptr.index_select(0, rows).long()
        counts = self.indptr.index_select(0, rows + 1).long() - starts
        local_rows = torch.repeat_interleave(torch.arange(len(rows)), counts)
        # position in the CSR arrays of the k-th gathered entry: k - (entries before its row
        # in the batch) + (start of its row in the CSR)
        shift = (starts - (torch.cumsum(counts, 0) - counts)).index_select(0, local_rows)
        pos = torch.arange(len(local_rows)).add_(shift)
        cols = self.indices.index_select(0, pos).long()
        values = self.values.index_select(0, pos)
        out.update(nz_rows=local_rows, nz_cols=cols, nz_values=values)
        if dense_x:
            x = torch.zeros(len(rows) * self.n_vars, dtype=torch.float32)
            out["x"] = x.index_copy_(0, local_rows * self.n_vars + cols, values).view(
                len(rows), self.n_vars
            )
        return out


def _log_factorial_rows_sparse(indptr: np.ndarray, values: np.ndarray) -> torch.Tensor:
    """Per-cell sum of log(x!) over the non-zero entries (zeros contribute log 0! = 0)."""
    terms = torch.lgamma(torch.from_numpy(values).double() + 1.0).numpy()
    sums = np.add.reduceat(terms, indptr[:-1]) if len(terms) else np.zeros(len(indptr) - 1)
    sums[np.diff(indptr) == 0] = 0.0  # reduceat repeats the next value for empty rows
    return torch.from_numpy(sums.astype(np.float32))


class MinibatchLoader:
    """Iterable of minibatches over a subset of cells.

    Parameters
    ----------
    data
        The tensors to draw from.
    indices
        Cells (row positions) this loader covers.
    batch_size
        Cells per minibatch. A last batch with fewer than 3 cells is merged into the previous
        one, so BatchNorm always sees several cells and no cell is dropped.
    shuffle
        Reshuffle the cells at each pass, with ``generator``.
    generator
        Seeded torch generator, for reproducible shuffling.
    dense_x
        Also build the dense count matrix of each minibatch from sparse data (not needed for
        training, where the non-zero entries suffice).
    """

    def __init__(
        self,
        data: TensorData,
        indices: np.ndarray | torch.Tensor,
        *,
        batch_size: int = 128,
        shuffle: bool = False,
        generator: torch.Generator | None = None,
        dense_x: bool = True,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size}.")
        self.data = data
        self.indices = torch.as_tensor(np.asarray(indices), dtype=torch.long)
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.generator = generator
        self.dense_x = dense_x

    def _bounds(self) -> list[tuple[int, int]]:
        n = len(self.indices)
        starts = list(range(0, n, self.batch_size))
        bounds = [(s, min(s + self.batch_size, n)) for s in starts]
        if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] < MIN_BATCH_CELLS:
            last = bounds.pop()
            bounds[-1] = (bounds[-1][0], last[1])
        return bounds

    def __len__(self) -> int:
        return len(self._bounds())

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        order = self.indices
        if self.shuffle:
            order = order[torch.randperm(len(order), generator=self.generator)]
        for start, stop in self._bounds():
            yield self.data.gather(order[start:stop], dense_x=self.dense_x)


def train_validation_split(
    n_cells: int, train_size: float, generator: torch.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded random split of ``range(n_cells)`` into sorted train and validation indices."""
    if not 0.0 < train_size <= 1.0:
        raise ValueError(f"train_size must be in (0, 1], got {train_size}.")
    n_val = int(round((1.0 - train_size) * n_cells))
    if n_cells - n_val < MIN_BATCH_CELLS:
        raise ValueError(
            f"train_size={train_size} leaves {n_cells - n_val} training cell(s) out of "
            f"{n_cells}; at least {MIN_BATCH_CELLS} are needed: raise train_size (default 0.9)."
        )
    perm = torch.randperm(n_cells, generator=generator).numpy()
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])
