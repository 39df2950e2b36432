import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from tests.families.scanvi_data import FAST, annotated  # noqa: E402

import cellvi as cv  # noqa: E402
from cellvi.families import CapabilityError  # noqa: E402


@pytest.fixture(scope="module")
def trained():
    adata = annotated(n_cells=300)
    cv.tl.scanvi_train(adata, scvi_key=None, max_epochs=15, **FAST)
    return adata


def test_given_labels_on_the_labelled_cells(trained, tmp_path):
    fig = cv.pl.confusion(trained, save=tmp_path / "c.png", show=False)
    assert (tmp_path / "c.png").stat().st_size > 0
    scores = fig.cellvi_scores
    labelled = (trained.obs["label"] != "Unknown").to_numpy()
    assert scores.n_cells == labelled.sum()
    given = trained.obs["label"].astype(str).to_numpy()[labelled]
    predicted = trained.obs["scanvi_prediction"].astype(str).to_numpy()[labelled]
    assert scores.accuracy == pytest.approx(np.mean(given == predicted))
    assert scores.confusion.sum() == labelled.sum()
    assert scores.predicted_classes == [f"type{t}" for t in range(5)]
    assert "accuracy" in fig.axes[0].get_title()


def test_truth_scores_the_cells_without_a_given_label(trained):
    scores = cv.pl.confusion(trained, truth="cell_type", show=False).cellvi_scores
    unlabelled = (trained.obs["label"] == "Unknown").to_numpy()
    assert scores.n_cells == unlabelled.sum()
    truth = trained.obs["cell_type"].astype(str).to_numpy()[unlabelled]
    predicted = trained.obs["scanvi_prediction"].astype(str).to_numpy()[unlabelled]
    assert scores.accuracy == pytest.approx(np.mean(truth == predicted))


def test_missing_inputs_name_the_fix(trained):
    without = trained.copy()
    del without.obs["label"]
    with pytest.raises(ValueError, match="truth='<column>'"):
        cv.pl.confusion(without, show=False)
    del without.obs["scanvi_prediction"]
    with pytest.raises(KeyError, match="cv.tl.scanvi_train"):
        cv.pl.confusion(without, truth="cell_type", show=False)
    scvi_only = annotated(n_cells=120)
    scvi_only.obs["label"] = pd.Categorical(scvi_only.obs["label"])
    cv.tl.scvi_train(scvi_only, max_epochs=1, **FAST)
    with pytest.raises(CapabilityError, match="predict_labels"):
        cv.pl.confusion(scvi_only, key="scvi", show=False)
