"""Shuffled training minibatches from counts on disk, with bounded memory.

Random cells from a file cost one read each; :class:`ChunkedLoader` instead shuffles at two
levels. The cells are cut into chunks of ``chunk_cells`` consecutive rows; each pass puts the
chunks in a random order and groups them ``buffer_cells // chunk_cells`` at a time; a group is
read from disk (one contiguous read per chunk) and its cells are shuffled among themselves. Every
cell is read once per pass, and at most two groups are in memory at a time (a minibatch may take
its first cells from one group and the rest from the next).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from ..utils.distributed import world_and_rank
from .backed import BackedData
from .loader import MinibatchLoader, TensorData

#: Consecutive cells read together (one contiguous read).
CHUNK_CELLS = 1024
#: Cells shuffled together in memory; a group of chunks, read before its minibatches are served.
BUFFER_CELLS = 65536


class ChunkedLoader(MinibatchLoader):
    """A shuffling :class:`~cellvi.data.loader.MinibatchLoader` for :class:`BackedData`.

    Memory: at most two groups of ``buffer_cells`` cells in memory, i.e. about
    ``2 * buffer_cells * (mean non-zeros per cell) * 8`` bytes (float32 value + int32 index).
    Sharding across processes works as for the in-memory loader; each process then reads the
    chunks of its own cells.
    """

    def __init__(
        self,
        data: BackedData,
        indices,
        *,
        batch_size: int = 128,
        generator: torch.Generator | None = None,
        dense_x: bool = True,
        shard: bool = False,
        chunk_cells: int | None = None,
        buffer_cells: int | None = None,
    ) -> None:
        super().__init__(
            data,
            indices,
            batch_size=batch_size,
            shuffle=True,
            generator=generator,
            dense_x=dense_x,
            shard=shard,
        )
        # module defaults looked up here, so that they can be changed at run time
        self.chunk_cells = max(1, int(chunk_cells or CHUNK_CELLS))
        self.chunks_per_group = max(1, int(buffer_cells or BUFFER_CELLS) // self.chunk_cells)
        self._group_ends = np.array([len(self.indices)])

    def _permutation(self, generator: torch.Generator | None) -> torch.Tensor:
        chunk_of = self.indices // self.chunk_cells
        chunks = torch.unique(chunk_of)
        chunks = chunks[torch.randperm(len(chunks), generator=generator)]
        parts, ends = [], []
        for g in range(0, len(chunks), self.chunks_per_group):
            cells = self.indices[torch.isin(chunk_of, chunks[g : g + self.chunks_per_group])]
            parts.append(cells[torch.randperm(len(cells), generator=generator)])
            ends.append(len(cells))
        self._group_ends = np.cumsum(ends)
        return torch.cat(parts)

    def _local_group_ends(self, n_local: int) -> np.ndarray:
        """Where the groups end in this process's share of the order."""
        world, rank = world_and_rank() if self.shard else (1, 0)
        ends = np.ceil((self._group_ends - rank) / world).astype(np.int64).clip(0, n_local)
        return np.unique(np.append(ends, n_local))

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        order = self.epoch_order()
        ends = self._local_group_ends(len(order))
        loaded: tuple[int, torch.Tensor, TensorData] | None = None  # (end, sorted rows, data)
        for start, stop in self._bounds():
            parts, pos = [], start
            while pos < stop:
                if loaded is None or pos >= loaded[0]:
                    end = int(ends[np.searchsorted(ends, pos, side="right")])
                    rows = torch.unique(order[pos:end])  # sorted, distinct
                    loaded = (end, rows, self.data.load(rows.numpy()))
                end, rows, buffer = loaded
                take = min(stop, end)
                local = torch.searchsorted(rows, order[pos:take])
                parts.append(buffer.gather(local, dense_x=self.dense_x))
                pos = take
            yield parts[0] if len(parts) == 1 else concat_minibatches(parts)


def concat_minibatches(parts: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """One minibatch from several gathered ones (cells in the given order)."""
    out = {}
    offset, offsets = 0, []
    for part in parts:
        offsets.append(offset)
        offset += len(part["batch"])
    for key in parts[0]:
        if key == "nz_rows":
            pieces = [p[key] + o for p, o in zip(parts, offsets, strict=True)]
        else:
            pieces = [p[key] for p in parts]
        out[key] = torch.cat(pieces)
    return out
