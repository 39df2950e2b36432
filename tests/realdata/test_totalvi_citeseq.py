"""totalVI on real CITE-seq data: foreground probabilities follow known marker biology.

Data: ``cite_pbmc_2batch.h5mu`` (8,033 PBMCs, 689 genes, 8 proteins, 2 batches, curated cell
types). A seeded 2,000-cell subset is trained for 25 epochs. Known markers must be called
foreground far more often in the cell types that carry them: CD19 on B cells, CD14 on CD14+
monocytes, CD3 on T cells (against the other labelled types). On 2 busy CPU cores the module
takes a few minutes, almost all of it training.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from tests.conftest import SHARED_DATA

import cellvi as cv

CITE = SHARED_DATA / "cite_pbmc_2batch.h5mu"

pytestmark = [
    pytest.mark.realdata,
    pytest.mark.skipif(not CITE.exists(), reason=f"real data not found at {CITE}"),
    pytest.mark.filterwarnings("ignore::FutureWarning"),
]


@pytest.fixture(scope="module")
def citeseq():
    import mudata as mu

    torch.set_num_threads(2)
    cv.settings.progress_bar = False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        full = mu.read_h5mu(CITE)
        idx = np.sort(np.random.default_rng(0).choice(full.n_obs, 2000, replace=False))
        mdata = mu.MuData({m: full.mod[m][idx].copy() for m in ("rna", "prot")})
    cv.pp.setup_registry(mdata, batch_key="batch")
    cv.tl.totalvi_train(mdata, max_epochs=25, seed=0)
    cv.tl.totalvi_denoise(mdata)
    return mdata


def _fore(mdata, protein: str) -> np.ndarray:
    j = list(mdata["prot"].var_names).index(protein)
    return mdata["prot"].layers["totalvi_foreground_prob"][:, j]


@pytest.mark.parametrize(
    ("protein", "positive"),
    [
        ("CD19", ["B cells"]),
        ("CD14", ["CD14+ monocytes"]),
        ("CD3", ["CD4+ T cells", "CD8+ T cells"]),
    ],
)
def test_marker_foreground_follows_cell_type(citeseq, protein, positive):
    types = citeseq["rna"].obs["cell_type"].astype(str).to_numpy()
    labelled = types != "unknown"
    is_pos = np.isin(types, positive)
    prob = _fore(citeseq, protein)
    # a model that does not separate background from foreground scores about 0
    assert prob[is_pos].mean() - prob[labelled & ~is_pos].mean() > 0.3


def test_heldout_elbo_is_finite_and_split(citeseq):
    metrics = citeseq.uns["totalvi"]["metrics"]
    assert np.isfinite(metrics["elbo_validation"])
    assert metrics["reconstruction_error_protein_validation"] > 0
    assert (
        metrics["reconstruction_error_rna_validation"]
        > metrics["reconstruction_error_protein_validation"]
    )
