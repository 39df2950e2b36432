"""Counts that stay on disk: a backed ``.h5ad`` or a zarr store read in row ranges, never whole.

An AnnData opened with ``anndata.read_h5ad(path, backed="r")`` keeps its ``X`` in the file; one
built around ``anndata.io.sparse_dataset(zarr.open(path)["X"])`` keeps it in a zarr store. The
counts are validated and summarised in one pass over blocks of rows (:func:`backed_count_stats`)
and read for training and inference a few row ranges at a time (:class:`BackedData`): CSR on
disk is ``indptr`` / ``indices`` / ``data``, so the rows ``a:b`` are the entries
``indptr[a]:indptr[b]``, one contiguous read each. Only ``indptr`` (8 bytes per cell) and the
per-cell annotations are held in memory.
"""

from __future__ import annotations

from dataclasses import replace

import h5py
import numpy as np
import scipy.sparse as sp
import torch
from anndata.abc import CSCDataset, CSRDataset

from .loader import TensorData
from .validation import _bad_masks, _problem_message, _rows_of_entries, _Tally

#: Entries read per block when scanning the whole matrix (float32 + int32: 128 MiB a block).
SCAN_ENTRIES = 2**24
#: A read covers at most this many consecutive rows ...
MAX_SPAN_ROWS = 4096
#: ... and skips at most this many unneeded rows between two needed ones (a separate read costs
#: about as much as reading a few dozen rows).
MAX_GAP_ROWS = 32


def is_backed(matrix: object) -> bool:
    """Whether ``matrix`` is a count matrix still on disk (backed AnnData's ``X``, or a sparse
    dataset of a zarr store)."""
    return isinstance(matrix, CSRDataset | CSCDataset | h5py.Dataset)


def counts_on_disk(adata) -> bool:
    """Whether ``adata`` keeps its matrix on disk: opened with ``backed="r"``, or built around
    a sparse dataset of a file or zarr store (copying it would load the whole matrix)."""
    return bool(adata.isbacked) or is_backed(adata.X)


def _location(element: object, source: str) -> tuple[str, str, str]:
    """``(format, file or store folder, path inside it)`` of an on-disk matrix element."""
    if isinstance(element, h5py.Group | h5py.Dataset):
        return "hdf5", element.file.filename, element.name
    if type(element).__module__.startswith("zarr"):
        root = getattr(getattr(element, "store", None), "root", None)
        if root is not None:  # a local folder (LocalStore): readable from any process
            return "zarr", str(root), element.path
    raise TypeError(
        f"adata.{source} is stored in a {type(element).__name__}; cellvi reads counts on disk "
        "from .h5ad files and local zarr stores: load them into memory with "
        "`adata = adata.to_memory()`."
    )


class BackedCounts:
    """Reads row ranges of an on-disk CSR or dense matrix as float32 CSR.

    The matrix is in an ``.h5ad`` (HDF5) file or a local zarr store. Holds only its location
    and ``indptr``; the file or store is (re)opened on first use, so the reader can be pickled
    into other processes.
    """

    def __init__(self, matrix: CSRDataset | h5py.Dataset, *, source: str = "X") -> None:
        element = matrix if isinstance(matrix, h5py.Dataset) else getattr(matrix, "group", None)
        if isinstance(matrix, CSCDataset):
            raise TypeError(
                f"adata.{source} is a CSC matrix on disk; reading cells from it needs the whole "
                "matrix. Store it as CSR (`adata = adata.to_memory(); adata.X = adata.X.tocsr(); "
                "adata.write_h5ad(path)`) or load it into memory with `adata.to_memory()`."
            )
        self.format, self.filename, self.path = _location(element, source)
        self.shape = tuple(int(n) for n in matrix.shape)
        self.dtype = np.dtype(matrix.dtype)
        self.sparse = not isinstance(element, h5py.Dataset)
        self.indptr = np.asarray(element["indptr"][:], dtype=np.int64) if self.sparse else None
        self._element = None
        self.rows_read = 0  # for tests and diagnostics: rows read since creation

    def __getstate__(self) -> dict:
        return {**vars(self), "_element": None}

    def _open(self):
        if self._element is None:
            if self.format == "zarr":
                import zarr  # an anndata dependency; only needed for zarr stores

                self._element = zarr.open_group(self.filename, mode="r")[self.path]
            else:
                self._element = h5py.File(self.filename, "r")[self.path]
        return self._element

    def nnz(self, start: int, stop: int) -> int:
        """Stored entries in rows ``start:stop`` (dense: all of them)."""
        if self.sparse:
            return int(self.indptr[stop] - self.indptr[start])
        return (stop - start) * self.shape[1]

    def read(self, start: int, stop: int) -> sp.csr_matrix:
        """Rows ``start:stop`` as CSR with float32 values and int32 indices (one read)."""
        element = self._open()
        self.rows_read += stop - start
        if not self.sparse:
            return sp.csr_matrix(np.asarray(element[start:stop], dtype=np.float32))
        lo, hi = self.indptr[start], self.indptr[stop]
        data = np.asarray(element["data"][lo:hi], dtype=np.float32)
        indices = np.asarray(element["indices"][lo:hi], dtype=np.int32)
        indptr = (self.indptr[start : stop + 1] - lo).astype(np.int32)
        return sp.csr_matrix((data, indices, indptr), shape=(stop - start, self.shape[1]))

    def read_rows(self, rows: np.ndarray) -> sp.csr_matrix:
        """The given sorted, distinct rows as CSR, read in spans of nearby rows."""
        if len(rows) == 0:
            return sp.csr_matrix((0, self.shape[1]), dtype=np.float32)
        # a new span starts after a long gap, or MAX_SPAN_ROWS past the current span's start
        cuts, first = [0], rows[0]
        gaps = np.diff(rows)
        for i in np.flatnonzero(gaps > 1) + 1:
            if gaps[i - 1] > MAX_GAP_ROWS + 1 or rows[i] - first >= MAX_SPAN_ROWS:
                cuts.append(i)
                first = rows[i]
        cuts.append(len(rows))
        parts = []
        for a, b in zip(cuts[:-1], cuts[1:], strict=True):
            span = self.read(int(rows[a]), int(rows[b - 1]) + 1)
            parts.append(span[rows[a:b] - rows[a]])
        return sp.vstack(parts, format="csr") if len(parts) > 1 else parts[0]

    def blocks(self):
        """``(start, stop)`` row blocks of about :data:`SCAN_ENTRIES` entries, covering all."""
        n = self.shape[0]
        if self.sparse:
            targets = np.arange(SCAN_ENTRIES, self.indptr[-1], SCAN_ENTRIES)
            cuts = np.unique(np.concatenate([[0], np.searchsorted(self.indptr, targets), [n]]))
        else:
            cuts = np.append(np.arange(0, n, max(1, SCAN_ENTRIES // max(self.shape[1], 1))), n)
        return [(int(a), int(b)) for a, b in zip(cuts[:-1], cuts[1:], strict=True) if b > a]


def backed_count_stats(
    counts: BackedCounts, *, source: str, available_layers
) -> tuple[int, np.ndarray, int]:
    """Validate on-disk counts block by block, as :func:`~cellvi.data.validation.validate_counts`.

    Returns
    -------
    The number of zero-count cells, the total counts of every cell (float64) and the number of
    genes without any count; raises the same errors as for in-memory counts.
    """
    if counts.dtype.kind not in "iuf" or counts.dtype == np.float16:
        raise TypeError(
            f"adata.{source} has dtype {counts.dtype}; cellvi needs counts stored as integers, "
            "float32 or float64."
        )
    tally = _Tally(counts.shape[0])
    totals = np.zeros(counts.shape[0])
    gene_totals = np.zeros(counts.shape[1])
    for start, stop in counts.blocks():
        values, block = _raw_block(counts, start, stop)
        for kind, mask in _bad_masks(values).items():
            if mask.any():
                if counts.sparse:
                    rows = start + _rows_of_entries(block, np.flatnonzero(mask))
                else:
                    rows = start + np.flatnonzero(mask.any(axis=1))
                tally.add(kind, values[mask], rows)
        if not tally.entries:  # the totals of invalid data are not used
            totals[start:stop] = np.asarray(block.sum(axis=1, dtype=np.float64)).ravel()
            gene_totals += np.asarray(block.sum(axis=0, dtype=np.float64)).ravel()
    if tally.entries:
        raise ValueError(
            _problem_message(tally, source=source, available_layers=list(available_layers))
        )
    return int(np.count_nonzero(totals == 0)), totals, int(np.count_nonzero(gene_totals == 0))


def _raw_block(counts: BackedCounts, start: int, stop: int) -> tuple[np.ndarray, sp.csr_matrix]:
    """The stored values of rows ``start:stop`` as they are on disk (for validation, before any
    cast), and the rows as CSR."""
    element = counts._open()
    if not counts.sparse:
        values = np.asarray(element[start:stop])
        return values, sp.csr_matrix(values)
    lo, hi = counts.indptr[start], counts.indptr[stop]
    values = np.asarray(element["data"][lo:hi])
    indices = np.asarray(element["indices"][lo:hi])
    indptr = counts.indptr[start : stop + 1] - lo
    return values, sp.csr_matrix((values, indices, indptr), shape=(stop - start, counts.shape[1]))


class BackedData:
    """Registered fields whose counts stay on disk; minibatches are read as they are needed.

    Offers what training and inference use of :class:`~cellvi.data.loader.TensorData`:
    ``n_cells``, ``n_vars`` and ``gather(rows)``. The per-cell fields (batch, labels,
    covariates, size factors) are in memory, as in the registered data.
    """

    def __init__(self, registered, counts: BackedCounts) -> None:
        self.registered = registered
        self.counts = counts
        self.n_cells, self.n_vars = counts.shape

    def load(self, rows: np.ndarray) -> TensorData:
        """The given sorted, distinct cells as an in-memory :class:`TensorData`."""
        reg = self.registered
        size_factor = None if reg.size_factor is None else reg.size_factor[rows]
        part = replace(
            reg,
            X=self.counts.read_rows(rows),
            batch=reg.batch[rows],
            labels=reg.labels[rows],
            cat_covs=reg.cat_covs[rows],
            cont_covs=reg.cont_covs[rows],
            size_factor=size_factor,
        )
        return TensorData.from_registered(part)

    def gather(self, rows: torch.Tensor, *, dense_x: bool = True) -> dict[str, torch.Tensor]:
        """The minibatch of the given cells (any order), read from disk in spans."""
        distinct, inverse = np.unique(np.asarray(rows.cpu()), return_inverse=True)
        return self.load(distinct).gather(torch.from_numpy(inverse), dense_x=dense_x)
