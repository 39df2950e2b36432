import sys

import numpy as np
import torch

from cellvi.lifecycle.runtime import TRIM_EVERY, minibatches
from cellvi.utils._memory import release_free_memory


def test_release_free_memory_runs_where_glibc_is_present():
    released = release_free_memory()
    assert isinstance(released, bool)
    if sys.platform.startswith("linux") and "musl" not in sys.version.lower():
        assert released


def test_trimming_minibatches_still_yield_every_cell_once(adata):
    import cellvi as cv
    from cellvi.data.loader import TensorData
    from cellvi.data.registry import extract_registered_data, get_registry

    cv.pp.setup_registry(adata, layer="counts", batch_key="batch")
    data = TensorData.from_registered(extract_registered_data(adata, get_registry(adata)))
    batch_size = max(1, adata.n_obs // (2 * TRIM_EVERY + 3))  # crosses two trims
    seen = [mb["batch"] for mb in minibatches(data, torch.device("cpu"), batch_size)]
    assert len(seen) > 2 * TRIM_EVERY
    np.testing.assert_array_equal(torch.cat(seen).numpy(), data.batch.numpy())
