"""Query mapping onto a totalVI reference on real CITE-seq data: label transfer across labs.

Data: ``cite_pbmc_2batch.h5mu`` (689 genes, all used: fewer than 1,000; 8 shared proteins).
Reference: a seeded 3,000-cell subset of the 10x ``pbmc10k_protein_v3`` batch; query: all
1,372 cells of the other lab's ``bremsc_inhouse`` batch (another protocol and antibody panel). Labels are
transferred by kNN (k=15) from the reference's labelled cells to the query's in the latent
space, and compared with a joint totalVI trained on both subsets together (same epochs), where
the same kNN transfer runs inside the joint latent. A third mapping drops CD4 and CD8a from
the query (unmeasured there), so that CD4 and CD8 T cells must be told apart from RNA. About
40 s on 2 quiet cores. Thresholds are about 85 % of the measured
values (noted beside them; CPU, seed 0).
"""

from __future__ import annotations

import time
import warnings

import numpy as np
import pytest
import torch
from sklearn.metrics import balanced_accuracy_score
from sklearn.neighbors import KNeighborsClassifier
from tests.conftest import SHARED_DATA

import cellvi as cv

CITE = SHARED_DATA / "cite_pbmc_2batch.h5mu"
REFERENCE, QUERY = "pbmc10k_protein_v3", "bremsc_inhouse"
N_REFERENCE, EPOCHS, QUERY_EPOCHS = 3000, 40, 100
DROPPED = ("CD4", "CD8a")

pytestmark = [
    pytest.mark.realdata,
    pytest.mark.skipif(
        not CITE.exists(), reason=f"real dataset {CITE} is absent (shared data folder not mounted)"
    ),
    pytest.mark.filterwarnings("ignore::FutureWarning"),
]


def _subsets():
    import mudata as mu

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        full = mu.read_h5mu(CITE)
    batch = full["rna"].obs["batch"].astype(str).to_numpy()
    rng = np.random.default_rng(0)
    ref = np.sort(rng.choice(np.flatnonzero(batch == REFERENCE), N_REFERENCE, replace=False))
    query = np.flatnonzero(batch == QUERY)  # all 1,372 cells

    def subset(idx):
        return mu.MuData({m: full.mod[m][idx].copy() for m in ("rna", "prot")})

    return subset(ref), subset(query), subset(np.r_[ref, query])


def _types(mdata) -> np.ndarray:
    return mdata["rna"].obs["cell_type"].astype(str).to_numpy()


def _transfer(z_ref, types_ref, z_query, types_query) -> tuple[float, float]:
    """kNN accuracy and balanced accuracy (mean recall per type) on the query's labelled
    cells, from the reference's labelled cells."""
    known_ref, known_query = types_ref != "unknown", types_query != "unknown"
    knn = KNeighborsClassifier(n_neighbors=15).fit(z_ref[known_ref], types_ref[known_ref])
    predicted, truth = knn.predict(z_query[known_query]), types_query[known_query]
    return float((predicted == truth).mean()), float(balanced_accuracy_score(truth, predicted))


def _knn_predict(ref, query) -> np.ndarray:
    known = _types(ref) != "unknown"
    knn = KNeighborsClassifier(n_neighbors=15).fit(ref.obsm["X_totalvi"][known], _types(ref)[known])
    return knn.predict(query.obsm["X_totalvi"])


@pytest.fixture(scope="module")
def mapped():
    import mudata as mu

    torch.set_num_threads(2)
    cv.settings.progress_bar = False
    start = time.perf_counter()
    ref, query, joint = _subsets()
    cv.pp.setup_registry(ref, batch_key="batch")
    cv.tl.totalvi_train(ref, max_epochs=EPOCHS, seed=0)
    trained = time.perf_counter()
    untrained = cv.tl.map_query(
        query, reference=ref, key="totalvi", max_epochs=1, lr=1e-12, seed=0, copy=True
    )
    query = cv.tl.map_query(
        query, reference=ref, key="totalvi", max_epochs=QUERY_EPOCHS, seed=0, copy=True
    )
    # the query without the two proteins that split CD4 from CD8 T cells: now unmeasured
    kept = [p for p in query["prot"].var_names if p not in DROPPED]
    partial = mu.MuData({"rna": query["rna"].copy(), "prot": query["prot"][:, kept].copy()})
    partial = cv.tl.map_query(
        partial, reference=ref, key="totalvi", max_epochs=QUERY_EPOCHS, seed=0, copy=True
    )
    done = time.perf_counter()
    cv.pp.setup_registry(joint, batch_key="batch")
    cv.tl.totalvi_train(joint, max_epochs=EPOCHS, seed=0)
    print(
        f"\n[map_query totalVI] reference {ref.n_obs:,} cells trained in {trained - start:.0f}s;"
        f" query {query.n_obs:,} cells mapped in {done - trained:.0f}s; joint model trained "
        f"in {time.perf_counter() - done:.0f}s"
    )
    return ref, query, untrained, joint, partial


def test_query_cells_get_their_reference_labels(mapped):
    ref, query, untrained, joint, _ = mapped
    accuracy = _transfer(ref.obsm["X_totalvi"], _types(ref), query.obsm["X_totalvi"], _types(query))
    before = _transfer(
        ref.obsm["X_totalvi"], _types(ref), untrained.obsm["X_totalvi"], _types(query)
    )
    z, types, n = joint.obsm["X_totalvi"], _types(joint), ref.n_obs
    together = _transfer(z[:n], types[:n], z[n:], types[n:])
    print(
        f"[map_query totalVI] kNN label transfer {REFERENCE} -> {QUERY} (accuracy, balanced): "
        f"mapped {accuracy}, new rows untrained {before}, joint model {together}"
    )
    # measured (accuracy, balanced): mapped (0.995, 0.880), new rows untrained (0.994, 0.878),
    # joint model (0.996, 0.881). The 8 proteins alone nearly define these coarse types, so
    # the task is easy for all three; the floors guard against a broken mapping.
    assert accuracy[0] > 0.85 and accuracy[1] > 0.75
    assert accuracy[0] > together[0] - 0.05
    assert list(query.uns["totalvi"]["query_mapping"]["new_batches"]) == [QUERY]


def test_training_the_new_rows_fits_the_query(mapped):
    _, query, untrained, _, _ = mapped
    after = cv.tl.totalvi_evaluate(query)["elbo"]
    before = cv.tl.totalvi_evaluate(untrained)["elbo"]
    print(f"[map_query totalVI] query ELBO per cell: {before:.1f} untrained, {after:.1f} mapped")
    # measured: -405.2 with the new rows at their start, -375.3 after mapping
    assert after > before + 15


def test_query_missing_proteins_still_separates_t_cells(mapped):
    ref, query, _, _, partial = mapped
    mask = np.asarray(partial.uns["totalvi"]["registry"]["protein"]["protein_batch_mask"])
    names = list(partial["prot"].var_names)
    assert [names[j] for j in np.flatnonzero(mask[1] == 0)] == list(DROPPED)
    accuracy = _transfer(
        ref.obsm["X_totalvi"], _types(ref), partial.obsm["X_totalvi"], _types(partial)
    )
    types, predicted = _types(partial), _knn_predict(ref, partial)
    t_cells = np.isin(types, ["CD4+ T cells", "CD8+ T cells"])
    t_accuracy = float((predicted[t_cells] == types[t_cells]).mean())
    print(
        f"[map_query totalVI] query without {DROPPED} (unmeasured): accuracy, balanced "
        f"{accuracy}; CD4 vs CD8 T cells {t_accuracy:.3f}"
    )
    # measured: accuracy 0.910, balanced 0.809; CD4 vs CD8 T cells 0.874 (from RNA alone)
    assert accuracy[0] > 0.8 and t_accuracy > 0.75
