"""``cv.pl.criticism`` with totalVI models: a second row of panels for the proteins."""

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from tests.conftest import synthetic_citeseq  # noqa: E402

import cellvi as cv  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")
FIT = {"n_hidden": 16, "n_latent": 4, "max_epochs": 5}


def test_totalvi_figure_has_an_rna_and_a_protein_row(tmp_path):
    mdata, _ = synthetic_citeseq(n_genes=30, n_proteins=6)
    cv.pp.setup_registry(mdata, batch_key="batch")
    cv.tl.totalvi_train(mdata, **FIT)
    fig = cv.pl.criticism(mdata, key="totalvi", n_samples=3, save=tmp_path / "t.png", show=False)
    assert (tmp_path / "t.png").stat().st_size > 0
    assert len(fig.axes) == 10
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[0] == "RNA: gene CV" and titles[5] == "protein: protein CV"
    assert titles[8].startswith("protein: calibration")
    result = mdata.uns["totalvi_criticism"]
    for row, modality in ((0, "rna"), (1, "protein")):
        line = fig.axes[5 * row + 3].get_lines()[0]
        np.testing.assert_array_equal(line.get_ydata(), result[modality]["calibration"]["observed"])
    offsets = fig.axes[5].collections[0].get_offsets()
    np.testing.assert_allclose(offsets[:, 1], result["protein"]["gene"]["predicted_gene_cv"])


def test_scvi_and_totalvi_share_the_rna_row(tmp_path):
    """An AnnData with proteins in .obsm holds an scVI and a totalVI model: the RNA row shows
    both, the protein row only totalVI, in the colour it has in the RNA row."""
    mdata, _ = synthetic_citeseq(n_genes=30, n_proteins=6)
    adata = mdata["rna"].copy()
    adata.obsm["adt"] = pd.DataFrame(
        mdata["prot"].X, index=adata.obs_names, columns=mdata["prot"].var_names
    )
    cv.pp.setup_registry(adata, batch_key="batch")
    cv.tl.scvi_train(adata, **FIT)
    cv.pp.setup_registry(adata, batch_key="batch", protein_obsm_key="adt")
    cv.tl.totalvi_train(adata, **FIT)
    fig = cv.pl.criticism(adata, key=["scvi", "totalvi"], n_samples=2, show=False)
    assert len(fig.axes) == 10
    rna_lines = fig.axes[3].get_lines()[:2]
    protein_lines = fig.axes[8].get_lines()[:-1]  # the diagonal is drawn last
    assert [ln.get_label().split()[0] for ln in rna_lines] == ["scvi", "totalvi"]
    assert len(protein_lines) == 1 and protein_lines[0].get_label().startswith("totalvi")
    assert protein_lines[0].get_color() == rna_lines[1].get_color()
    assert "summary" in adata.uns["scvi_criticism"]  # scVI keeps its flat layout
