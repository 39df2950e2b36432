"""Fast minibatches from registered data held once as torch tensors.

The count matrix is wrapped, without a copy where possible, as torch tensors: CSR stays CSR
(``indptr``, ``indices``, ``data``) and a minibatch is gathered with a handful of vectorised
tensor operations, so there is no per-batch scipy slicing, no Python loop over cells and no
DataLoader worker process. Each sparse minibatch also carries the coordinates of its non-zero
entries, which the likelihood uses to skip work on zero counts, and each cell's total count
(``nz_totals``). On the CPU, with a C compiler, ``_gather_kernel.c`` gathers the rows in one
pass instead of a dozen torch operations.
"""

from __future__ import annotations

import ctypes
import math
from collections.abc import Iterator
from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

from ..utils._memory import release_free_memory
from ..utils.distributed import world_and_rank
from ..utils.native import enabled_kernel_function

MIN_BATCH_CELLS = 3  # BatchNorm needs more than one cell; a tiny last batch joins the previous one
# log(x!) is summed over pieces of this many entries, so that its float64 temporaries stay small
_LGAMMA_CHUNK = 2**20

_GATHER_SOURCE = Path(__file__).with_name("_gather_kernel.c")
_P, _I64 = ctypes.c_void_p, ctypes.c_int64
_COUNT_ARGS = (_I64, _P, _I64, _P, _I64, _P)
_FILL_ARGS = (_I64, _P, _P, _P, _P, _P, _P, _P, _P, _P)
_FILL_NAMES = {torch.int32: "cellvi_csr_fill_i32", torch.int64: "cellvi_csr_fill_i64"}


def _gather_kernels(indices_dtype: torch.dtype):
    """The count and fill functions of the gather kernel, or ``None`` (no compiler, switched
    off, or column indices of another type)."""
    name = _FILL_NAMES.get(indices_dtype)
    if name is None:
        return None
    count = enabled_kernel_function(_GATHER_SOURCE, "cellvi_csr_count", _COUNT_ARGS, _I64)
    fill = enabled_kernel_function(_GATHER_SOURCE, name, _FILL_ARGS)
    return None if count is None or fill is None else (count, fill)


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
        """Wrap a :class:`~cellvi.data.registry.RegisteredData` whose counts are in memory
        (counts still on disk go through :func:`cellvi.data.tensors.tensor_data`)."""
        X = data.X
        if not isinstance(X, np.ndarray) and not sp.issparse(X):
            raise TypeError(
                f"TensorData.from_registered takes counts in memory, got {type(X).__name__}; "
                "use cellvi.data.tensors.tensor_data, which reads counts on disk as needed."
            )
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

    def __getstate__(self) -> dict:
        # pickled as numpy arrays (e.g. for spawned training processes): torch would move every
        # tensor to shared memory first, which fails for empty ones (no covariates)
        return {
            k: v.cpu().numpy() if isinstance(v, torch.Tensor) else v
            for k, v in vars(self).items()
            if not k.startswith("_")  # caches
        }

    def __setstate__(self, state: dict) -> None:
        for k, v in state.items():
            setattr(self, k, torch.from_numpy(v) if isinstance(v, np.ndarray) else v)

    @property
    def nbytes(self) -> int:
        """Bytes held by all tensors (what moving the data to a device would allocate there)."""
        tensors = (getattr(self, f.name) for f in fields(self))
        return sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))

    def to(self, device: torch.device | str) -> TensorData:
        """The same data with every tensor on ``device`` (no copy for the device it is on), so
        that minibatches are gathered there without host-to-device transfers."""
        moved = {
            f.name: getattr(self, f.name).to(device)
            for f in fields(self)
            if isinstance(getattr(self, f.name), torch.Tensor)
        }
        return replace(self, **moved)

    def gather(self, rows: torch.Tensor, *, dense_x: bool = True) -> dict[str, torch.Tensor]:
        """The minibatch of the given cell indices, as a dict of tensors.

        From sparse data the non-zero entries come as ``nz_rows``, ``nz_cols`` and
        ``nz_values``; the dense ``x`` is built only when ``dense_x`` (training needs only the
        non-zeros).
        """
        rows = rows.to(self.batch.device)
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
        local_rows, cols, values, totals = self._gather_nonzero(rows)
        out.update(nz_rows=local_rows, nz_cols=cols, nz_values=values, nz_totals=totals)
        device = self.indptr.device
        if dense_x:
            x = torch.zeros(len(rows) * self.n_vars, dtype=torch.float32, device=device)
            out["x"] = x.index_copy_(0, local_rows * self.n_vars + cols, values).view(
                len(rows), self.n_vars
            )
        return out

    def _gather_nonzero(self, rows: torch.Tensor):
        """Minibatch row, column, value of the non-zero entries of the cells ``rows`` (in that
        order, columns as in the CSR) and each cell's total count."""
        kernels = None
        arrays = (self.indptr, self.indices, self.values)
        if (
            self.indptr.device.type == "cpu"
            and self.values.dtype == torch.float32
            and all(t.is_contiguous() for t in arrays)
            and len(self.indices) == len(self.values)
        ):
            kernels = _gather_kernels(self.indices.dtype)
        if kernels is not None:
            count, fill = kernels
            indptr = self._indptr64()
            rows = rows.long().contiguous()
            n = len(rows)
            out_indptr = torch.empty(n + 1, dtype=torch.int64)
            nnz = count(
                n, rows.data_ptr(), self.n_cells, indptr.data_ptr(), len(self.values),
                out_indptr.data_ptr(),
            )  # fmt: skip
            if nnz == -1:
                raise IndexError("A minibatch cell index is outside the data.")
            if nnz < 0:
                raise ValueError(
                    "The sparse count matrix is malformed (its row pointer runs outside its "
                    "entries); rebuild it with scipy.sparse.csr_matrix."
                )
            local_rows, cols = (
                torch.empty(nnz, dtype=torch.int64),
                torch.empty(nnz, dtype=torch.int64),
            )
            values, totals = torch.empty(nnz), torch.empty(n)
            fill(
                n, rows.data_ptr(), indptr.data_ptr(), self.indices.data_ptr(),
                self.values.data_ptr(), out_indptr.data_ptr(), local_rows.data_ptr(),
                cols.data_ptr(), values.data_ptr(), totals.data_ptr(),
            )  # fmt: skip
            return local_rows, cols, values, totals
        starts = self.indptr.index_select(0, rows).long()
        counts = self.indptr.index_select(0, rows + 1).long() - starts
        device = self.indptr.device
        local_rows = torch.repeat_interleave(torch.arange(len(rows), device=device), counts)
        # position in the CSR arrays of the k-th gathered entry: k - (entries before its row
        # in the batch) + (start of its row in the CSR)
        shift = (starts - (torch.cumsum(counts, 0) - counts)).index_select(0, local_rows)
        pos = torch.arange(len(local_rows), device=device).add_(shift)
        cols = self.indices.index_select(0, pos).long()
        values = self.values.index_select(0, pos)
        totals = torch.zeros(len(rows), dtype=values.dtype, device=device)
        return local_rows, cols, values, totals.index_add_(0, local_rows, values)

    def _indptr64(self) -> torch.Tensor:
        """The CSR row pointer as int64 (converted once; scipy may give int32)."""
        source, converted = self.__dict__.get("_indptr_cache", (None, None))
        if source is not self.indptr:
            source, converted = self.indptr, self.indptr.long().contiguous()
            self.__dict__["_indptr_cache"] = (source, converted)
        return converted


def _log_factorial_rows_sparse(indptr: np.ndarray, values: np.ndarray) -> torch.Tensor:
    """Per-cell sum of log(x!) over the non-zero entries (zeros contribute log 0! = 0)."""
    # blocks of whole rows with about _LGAMMA_CHUNK entries each: a float64 copy of all values
    # at once would double the memory the matrix takes
    indptr = np.asarray(indptr, dtype=np.int64)
    n_rows = len(indptr) - 1
    sums = np.zeros(n_rows, dtype=np.float32)
    targets = np.arange(_LGAMMA_CHUNK, indptr[-1], _LGAMMA_CHUNK)
    cuts = np.unique(np.concatenate([[0], np.searchsorted(indptr, targets), [n_rows]]))
    for r0, r1 in zip(cuts[:-1], cuts[1:], strict=True):
        lo, hi = indptr[r0], indptr[r1]
        if hi == lo:
            continue
        piece = torch.from_numpy(values[lo:hi]).to(torch.float64, copy=True)
        terms = piece.add_(1.0).lgamma_().numpy()
        starts = indptr[r0:r1] - lo
        filled = indptr[r0 + 1 : r1 + 1] > indptr[r0:r1]  # empty rows keep their sum of 0
        sums[r0:r1][filled] = np.add.reduceat(terms, starts[filled])
    release_free_memory()  # the float64 pieces, which the allocator would otherwise keep
    return torch.from_numpy(sums)


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
    shard
        In a distributed run (an initialised ``torch.distributed`` process group), give each
        process its own share of the cells; see :meth:`epoch_order`.
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
        shard: bool = False,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size}.")
        self.data = data
        self.indices = torch.as_tensor(np.asarray(indices), dtype=torch.long)
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.generator = generator
        self.dense_x = dense_x
        self.shard = shard
        self._passes = 0
        self._shared_seed: int | None = None

    def _n_cells(self) -> int:
        """Cells this process covers in one pass."""
        world, rank = world_and_rank() if self.shard else (1, 0)
        n = len(self.indices)
        if world == 1:
            return n
        # training shards are padded to equal sizes (equal steps on every process)
        return math.ceil(n / world) if self.shuffle else len(range(rank, n, world))

    def _bounds(self) -> list[tuple[int, int]]:
        n = self._n_cells()
        starts = list(range(0, n, self.batch_size))
        bounds = [(s, min(s + self.batch_size, n)) for s in starts]
        if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] < MIN_BATCH_CELLS:
            last = bounds.pop()
            bounds[-1] = (bounds[-1][0], last[1])
        return bounds

    def __len__(self) -> int:
        return len(self._bounds())

    def _permutation(self, generator: torch.Generator | None) -> torch.Tensor:
        """The covered cells in a random order."""
        return self.indices[torch.randperm(len(self.indices), generator=generator)]

    def epoch_order(self) -> torch.Tensor:
        """The cells of this pass, in the order this process visits them.

        Single process: all cells, reshuffled with ``generator`` when ``shuffle``. Distributed
        (``shard=True``): every process computes the same permutation, from a seed drawn once
        from ``generator`` plus the pass number, and takes every ``world_size``-th cell from its
        rank on; with ``shuffle`` the order is first padded by wrapping around so that all
        processes get the same number of cells (as :class:`torch.utils.data.DistributedSampler`).
        """
        world, rank = world_and_rank() if self.shard else (1, 0)
        if world == 1:
            return self._permutation(self.generator) if self.shuffle else self.indices
        if not self.shuffle:
            return self.indices[rank::world]
        if self._shared_seed is None:  # the generators of all processes are in the same state
            self._shared_seed = int(torch.randint(0, 2**62, (1,), generator=self.generator))
        order = self._permutation(torch.Generator().manual_seed(self._shared_seed + self._passes))
        self._passes += 1
        padded = math.ceil(len(order) / world) * world
        return order[torch.arange(padded) % len(order)][rank::world]

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        order = self.epoch_order()
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


@dataclass(frozen=True)
class Companion:
    """A second minibatch drawn with every training minibatch and given to the module as
    ``mb[name]`` (e.g. labelled cells balanced by label, for a classifier's loss).

    Parameters
    ----------
    name
        The key of the companion minibatch in the training minibatch.
    indices
        The cells it is drawn from (row positions in the training data).
    weights
        Relative probability of each of ``indices`` (``None``: equal); cells are drawn with
        replacement.
    size
        Cells per companion minibatch (``None``: the training batch size).
    """

    name: str
    indices: np.ndarray
    weights: np.ndarray | None = None
    size: int | None = None


class CompanionLoader:
    """The minibatches of ``loader``, each with a :class:`Companion` minibatch drawn from the
    same data with the loader's generator (so that a resumed run draws the same cells).

    ``data`` is the wrapped loader's (a callback that moves it to the device moves both).
    """

    def __init__(self, loader: MinibatchLoader, companion: Companion, batch_size: int) -> None:
        self.loader = loader
        self.name = companion.name
        self.indices = torch.as_tensor(np.asarray(companion.indices), dtype=torch.long)
        weights = np.ones(len(self.indices)) if companion.weights is None else companion.weights
        self.probabilities = torch.as_tensor(np.asarray(weights, dtype=np.float64))
        self.size = int(companion.size or batch_size)
        if len(self.indices) == 0 or not (self.probabilities > 0).any():
            raise ValueError(f"the companion minibatch {self.name!r} has no cell to draw from.")

    @property
    def data(self):
        return self.loader.data

    @data.setter
    def data(self, value) -> None:
        self.loader.data = value

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        for mb in self.loader:
            drawn = torch.multinomial(
                self.probabilities, self.size, replacement=True, generator=self.loader.generator
            )
            mb[self.name] = self.loader.data.gather(self.indices[drawn], dense_x=False)
            yield mb
