"""Registered data as the tensors a model reads: in memory, or read from disk as needed."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from .backed import BackedData
from .loader import TensorData


def tensor_data(data) -> TensorData | BackedData:
    """Wrap a :class:`~cellvi.data.registry.RegisteredData`: a :class:`TensorData` for counts in
    memory (dense or sparse), a :class:`~cellvi.data.backed.BackedData` for counts still on
    disk (backed h5ad, zarr), which reads the cells of each minibatch as they are needed."""
    X = data.X
    if isinstance(X, np.ndarray) or sp.issparse(X):
        return TensorData.from_registered(data)
    return BackedData(data, X)
