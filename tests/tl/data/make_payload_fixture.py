"""Write the stored payload fixture ``scvi_payload_v<version>.h5ad`` next to this script.

The file freezes what the current payload writer produces, so later versions of cellvi can
test that they still read it (``tests/lifecycle/test_payload.py``). Run it once per payload
format version, never to refresh an existing fixture::

    PYTHONPATH=src python tests/tl/data/make_payload_fixture.py

Everything is seeded: 60 cells x 20 genes of negative-binomial counts from two cell types in two
batches, and a 2-epoch scVI with ``n_hidden=8``, ``n_latent=3`` trained on the CPU.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

import cellvi as cv
from cellvi.lifecycle.payload import PAYLOAD_VERSION

N_CELLS, N_GENES = 60, 20


def make_counts(seed: int = 0) -> ad.AnnData:
    """Two cell types (different gene programmes) in two batches (a gene-wise shift)."""
    rng = np.random.default_rng(seed)
    types = np.arange(N_CELLS) % 2
    batches = (np.arange(N_CELLS) // 2) % 2
    programmes = rng.gamma(0.6, 1.0, size=(2, N_GENES))
    batch_effect = rng.lognormal(0.0, 0.4, size=(2, N_GENES))
    rates = programmes[types] * batch_effect[batches]
    rates = rates / rates.sum(1, keepdims=True) * rng.lognormal(np.log(300), 0.3, N_CELLS)[:, None]
    counts = rng.negative_binomial(5, 5 / (5 + rates)).astype(np.float32)
    obs = pd.DataFrame(
        {
            "cell_type": pd.Categorical([f"type{t}" for t in types]),
            "batch": pd.Categorical([f"b{b}" for b in batches]),
        },
        index=[f"cell{i}" for i in range(N_CELLS)],
    )
    var = pd.DataFrame(index=[f"gene{j}" for j in range(N_GENES)])
    return ad.AnnData(sp.csr_matrix(counts), obs=obs, var=var)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true", help="overwrite an existing fixture")
    args = parser.parse_args()
    path = Path(__file__).with_name(f"scvi_payload_v{PAYLOAD_VERSION.replace('.', '_')}.h5ad")
    if path.exists() and not args.force:
        raise SystemExit(f"{path} exists; fixtures are frozen (use --force to rewrite it).")
    torch.set_num_threads(1)
    cv.settings.progress_bar = False
    adata = make_counts()
    cv.pp.setup_registry(adata, batch_key="batch", labels_key="cell_type")
    cv.tl.scvi_train(
        adata,
        n_hidden=8,
        n_latent=3,
        max_epochs=2,
        batch_size=32,
        seed=0,
        accelerator="cpu",
    )
    adata.write_h5ad(path, compression="gzip")
    print(f"wrote {path} ({path.stat().st_size / 1e3:.1f} kB), payload format {PAYLOAD_VERSION}")


if __name__ == "__main__":
    main()
