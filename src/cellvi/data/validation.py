"""Checks that a count matrix holds raw counts that cellvi can model.

The models place count likelihoods (negative binomial, Poisson) on every entry, so a matrix that
was normalised, log-transformed or scaled fits silently but produces meaningless results. These
checks look at every stored entry and explain what is wrong and how to fix it.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import sparse

from ..utils._memory import release_free_memory

__all__ = [
    "cell_totals",
    "check_matrix_type",
    "count_zero_genes",
    "matrix_source",
    "user_stacklevel",
    "validate_counts",
    "warn_zero_count_cells",
    "warn_zero_genes",
]

# Scans work on pieces of this many entries so that their temporaries stay small even for
# matrices with billions of entries: a float32 piece needs about 10 bytes per entry (a float
# copy and a few boolean masks), 40 MB here. Measured: 2**24 entries put a 0.17 GB peak on top
# of a 300,000-cell matrix, more than the whole rest of set-up.
_CHUNK_ENTRIES = 2**22
_KINDS = ("NaN", "infinite", "negative", "non-integer", "too large")
# float32, in which models see counts, stores integers exactly up to 2**24 only
_MAX_COUNT = 2**24
_ACCEPTED_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
# Largest value of log1p-transformed data in practice is ~12; normalised-only data goes far higher.
_LOG_SCALE_MAX = 50.0


def user_stacklevel() -> int:
    """``stacklevel`` for :func:`warnings.warn` that points at the first caller outside cellvi."""
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_globals.get("__name__", "").startswith("cellvi."):
        frame, level = frame.f_back, level + 1
    return level


def matrix_source(layer: str | None) -> str:
    """Name of the matrix used in messages: ``"X"`` or ``"layers['counts']"``."""
    return "X" if not layer else f"layers[{layer!r}]"


def check_matrix_type(matrix: object, *, source: str) -> None:
    """Raise :class:`TypeError` unless `matrix` is a dense array or CSR/CSC matrix of counts.

    Parameters
    ----------
    matrix
        The count matrix (cells × genes).
    source
        How messages name the matrix, see :func:`matrix_source`.
    """
    if matrix is None:
        raise TypeError(f"adata.{source} is empty (None); cellvi needs a count matrix there.")
    if sparse.issparse(matrix):
        if matrix.format not in ("csr", "csc"):
            raise TypeError(
                f"adata.{source} is a sparse {matrix.format.upper()} matrix; cellvi reads CSR or "
                f"CSC: convert it with `adata.{source} = adata.{source}.tocsr()`."
            )
    elif not isinstance(matrix, np.ndarray):
        raise TypeError(
            f"adata.{source} has type {type(matrix).__name__}; cellvi reads numpy arrays and "
            "scipy CSR/CSC matrices: load the data into memory as one of those first."
        )
    dtype = np.dtype(matrix.dtype)
    if dtype == np.float16:
        raise TypeError(
            f"adata.{source} has dtype float16, which cannot store counts above 2048 exactly; "
            f"convert it with `adata.{source} = adata.{source}.astype(np.float32)`."
        )
    if dtype.kind not in "iu" and dtype not in _ACCEPTED_DTYPES:
        raise TypeError(
            f"adata.{source} has dtype {dtype}; cellvi needs counts stored as integers, float32 "
            "or float64."
        )


def validate_counts(matrix: object, *, source: str, available_layers: Sequence[str]) -> int:
    """Check that every entry of `matrix` is a finite, non-negative integer.

    For sparse matrices the stored entries are checked; dense matrices are scanned in blocks of
    rows so that memory stays bounded.

    Parameters
    ----------
    matrix
        The count matrix (cells × genes): a numpy array or scipy CSR/CSC matrix or array.
    source
        How messages name the matrix, see :func:`matrix_source`.
    available_layers
        Names of the layers of the AnnData, used to suggest where raw counts may be.

    Returns
    -------
    The number of cells (rows) whose counts are all zero.
    """
    check_matrix_type(matrix, source=source)
    tally = _scan(matrix)
    release_free_memory()  # the scan's block temporaries, kept by the allocator otherwise
    if tally.entries:
        raise ValueError(_problem_message(tally, source=source, available_layers=available_layers))
    return int(np.count_nonzero(cell_totals(matrix) == 0))


def cell_totals(matrix: object) -> np.ndarray:
    """Total counts of every cell (row sums) as float64."""
    if sparse.issparse(matrix):
        return np.asarray(matrix.sum(axis=1, dtype=np.float64)).ravel()
    blocks = [block.sum(axis=1, dtype=np.float64) for _, block in _dense_blocks(matrix)]
    return np.concatenate(blocks) if blocks else np.zeros(0)


def count_zero_genes(matrix: object) -> int:
    """Number of genes (columns) without a single count; assumes validated counts."""
    if sparse.issparse(matrix):
        totals = np.asarray(matrix.sum(axis=0, dtype=np.float64)).ravel()
    else:
        totals = np.zeros(matrix.shape[1])
        for _, block in _dense_blocks(matrix):
            totals += block.sum(axis=0, dtype=np.float64)
    return int(np.count_nonzero(totals == 0))


def warn_zero_count_cells(n_zero: int, *, n_cells: int) -> None:
    """Warn that `n_zero` of `n_cells` cells have no counts at all (they are kept)."""
    if n_zero:
        warnings.warn(
            f"{n_zero:,} of {n_cells:,} cells have zero total counts. They are kept and handled "
            "(their library size counts as 1), but carry no information; to remove them run "
            "`sc.pp.filter_cells(adata, min_counts=1)` before setup_registry.",
            UserWarning,
            stacklevel=user_stacklevel(),
        )


def warn_zero_genes(n_zero: int, *, n_vars: int) -> None:
    """Warn that `n_zero` of `n_vars` genes have no counts in any cell (they are kept)."""
    if n_zero:
        warnings.warn(
            f"{n_zero:,} of {n_vars:,} genes have zero counts in every cell. They are kept, but "
            "carry no information; to remove them run `sc.pp.filter_genes(adata, min_counts=1)` "
            "before setup_registry.",
            UserWarning,
            stacklevel=user_stacklevel(),
        )


@dataclass
class _Tally:
    """Running count of bad entries per kind, the rows they are in and their extreme values."""

    n_rows: int
    entries: dict[str, int] = field(default_factory=dict)
    rows: dict[str, np.ndarray] = field(default_factory=dict)
    extremes: dict[str, float] = field(default_factory=dict)

    def add(self, kind: str, values: np.ndarray, rows: np.ndarray) -> None:
        self.entries[kind] = self.entries.get(kind, 0) + int(values.size)
        flags = self.rows.setdefault(kind, np.zeros(self.n_rows, dtype=bool))
        flags[rows] = True
        if kind == "non-integer":
            self.extremes[kind] = max(self.extremes.get(kind, -np.inf), float(values.max()))
        elif kind == "negative":
            self.extremes[kind] = min(self.extremes.get(kind, np.inf), float(values.min()))
        elif kind == "too large":
            self.extremes[kind] = max(self.extremes.get(kind, -np.inf), float(values.max()))


def _bad_masks(values: np.ndarray) -> dict[str, np.ndarray]:
    """Boolean masks of the entries of `values` that are not valid counts, by kind."""
    if values.dtype.kind == "u":
        return {"too large": values > _MAX_COUNT}
    if values.dtype.kind == "i":
        return {"negative": values < 0, "too large": values > _MAX_COUNT}
    nan = np.isnan(values)
    inf = np.isinf(values)
    return {
        "NaN": nan,
        "infinite": inf,
        "negative": (values < 0) & ~inf,
        "non-integer": (values != np.floor(values)) & ~nan & ~inf,
        "too large": (values > _MAX_COUNT) & ~inf,
    }


def _dense_blocks(matrix: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(first_row, block)`` pieces of a dense matrix of about `_CHUNK_ENTRIES` entries."""
    step = max(1, _CHUNK_ENTRIES // max(matrix.shape[1], 1))
    for start in range(0, matrix.shape[0], step):
        yield start, np.asarray(matrix[start : start + step])


def _scan(matrix: object) -> _Tally:
    tally = _Tally(matrix.shape[0])
    if sparse.issparse(matrix):
        # Entries past indptr[-1] are unused buffer space, not part of the matrix.
        data = matrix.data[: matrix.indptr[-1]]
        for start in range(0, data.size, _CHUNK_ENTRIES):
            block = data[start : start + _CHUNK_ENTRIES]
            for kind, mask in _bad_masks(block).items():
                if mask.any():
                    rows = _rows_of_entries(matrix, start + np.flatnonzero(mask))
                    tally.add(kind, block[mask], rows)
    else:
        for start, block in _dense_blocks(matrix):
            for kind, mask in _bad_masks(block).items():
                if mask.any():
                    tally.add(kind, block[mask], start + np.flatnonzero(mask.any(axis=1)))
    return tally


def _rows_of_entries(matrix: sparse.spmatrix, positions: np.ndarray) -> np.ndarray:
    """Row index of the stored entries at `positions` of ``matrix.data``."""
    if matrix.format == "csc":
        return matrix.indices[positions]
    return np.searchsorted(matrix.indptr, positions, side="right") - 1


def _problem_message(tally: _Tally, *, source: str, available_layers: Sequence[str]) -> str:
    details = "; ".join(_describe(kind, tally) for kind in _KINDS if kind in tally.entries)
    if set(tally.entries) == {"too large"}:
        return (
            f"{source} has counts above {_MAX_COUNT:,} ({details}), more than float32 (in which "
            "cellvi models counts) stores exactly and far more than one cell yields; check that "
            f"adata.{source} holds the raw counts of single cells (not summed or scaled values)."
        )
    fix = _fix_hint(source, available_layers)
    return (
        f"{source} {_headline(tally)} ({details}); cellvi needs raw counts (non-negative "
        f"integers): {fix}."
    )


def _headline(tally: _Tally) -> str:
    """A guess of what happened to the data, from the kinds of bad entries found."""
    if "negative" in tally.entries and "non-integer" in tally.entries:
        return "looks scaled or centred"
    if "non-integer" in tally.entries:
        if tally.extremes["non-integer"] <= _LOG_SCALE_MAX:
            return "looks log-normalised"
        return "looks normalised"
    return "is not a raw count matrix"


def _describe(kind: str, tally: _Tally) -> str:
    extreme = ""
    if kind == "non-integer":
        extreme = f" up to {tally.extremes[kind]:.4g}"
    elif kind == "negative":
        extreme = f" down to {tally.extremes[kind]:.4g}"
    elif kind == "too large":
        extreme = f" up to {tally.extremes[kind]:,.0f}"
    n_entries = _plural(tally.entries[kind], "entry", "entries")
    n_cells = _plural(int(np.count_nonzero(tally.rows[kind])), "cell", "cells")
    return f"{kind} values{extreme} in {n_entries} of {n_cells}"


def _plural(count: int, singular: str, plural: str) -> str:
    return f"{count:,} {singular if count == 1 else plural}"


def _fix_hint(source: str, available_layers: Sequence[str]) -> str:
    others = [name for name in available_layers if matrix_source(name) != source]
    if not others:
        return (
            "no layer holds raw counts, so reload the raw data and store the counts in a layer "
            "before normalising (`adata.layers['counts'] = adata.X.copy()`), then pass "
            "layer='counts'"
        )
    listed = ", ".join(repr(name) for name in others)
    if "counts" in others:
        return f"pass layer='counts' (available layers: {listed})"
    return f"pass layer=<the layer that holds raw counts> (available layers: {listed})"
