"""Write the stored totalVI payload fixture ``totalvi_payload_v<version>.h5mu`` next to this script.

Frozen as the scVI fixtures are (see ``make_payload_fixture.py``): later versions of cellvi test
that they still read a totalVI model written by this one. ``totalvi_payload_v1_1_0.h5mu`` was
written by commit 62b21fa, the last one before the model-family contract (issue 18), from a
checkout of that commit::

    git worktree add /tmp/oldmain 62b21fa
    PYTHONPATH=/tmp/oldmain/src python tests/tl/data/make_totalvi_payload_fixture.py

Seeded: 60 cells x 20 genes and 6 proteins in two batches (RNA as in the scVI fixture, protein
counts a background plus a type-specific foreground), a 2-epoch totalVI with ``n_hidden=8``,
``n_latent=3`` on the CPU.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import anndata as ad
import mudata as mu
import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).parent))
from make_payload_fixture import make_counts  # noqa: E402

import cellvi as cv  # noqa: E402
from cellvi.lifecycle.payload import PAYLOAD_VERSION  # noqa: E402

N_PROTEINS = 6


def make_mudata(seed: int = 0) -> mu.MuData:
    rna = make_counts(seed)
    rng = np.random.default_rng(seed + 1)
    types = rna.obs["cell_type"].cat.codes.to_numpy()
    foreground = rng.gamma(2.0, 20.0, size=(2, N_PROTEINS))
    background = rng.negative_binomial(5, 5 / (5 + 10.0), size=(rna.n_obs, N_PROTEINS))
    signal = rng.poisson(foreground[types])
    prot = ad.AnnData(
        (background + signal).astype(np.float32),
        obs=pd.DataFrame(index=rna.obs_names),
        var=pd.DataFrame(index=[f"prot{j}" for j in range(N_PROTEINS)]),
    )
    mdata = mu.MuData({"rna": rna, "prot": prot})
    mdata.obs["batch"] = rna.obs["batch"].to_numpy()
    return mdata


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true", help="overwrite an existing fixture")
    args = parser.parse_args()
    version = PAYLOAD_VERSION.replace(".", "_")
    path = Path(__file__).with_name(f"totalvi_payload_v{version}.h5mu")
    if path.exists() and not args.force:
        raise SystemExit(f"{path} exists; fixtures are frozen (use --force to rewrite it).")
    torch.set_num_threads(1)
    cv.settings.progress_bar = False
    mdata = make_mudata()
    cv.pp.setup_registry(mdata, batch_key="batch")
    cv.tl.totalvi_train(
        mdata, n_hidden=8, n_latent=3, max_epochs=2, batch_size=32, seed=0, accelerator="cpu",
        precision="32-true",
    )  # fmt: skip
    cv.tl.totalvi_denoise(mdata)
    mdata.write_h5mu(path, compression="gzip")
    print(f"wrote {path} ({path.stat().st_size / 1e3:.1f} kB), payload format {PAYLOAD_VERSION}")


if __name__ == "__main__":
    main()
