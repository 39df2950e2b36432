import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import cellvi as cv  # noqa: E402


def test_criticism_figure_compares_two_models_headless(adata, tmp_path):
    cv.pp.setup_registry(adata, layer="counts", batch_key="batch", labels_key="cell_type")
    for likelihood in ("zinb", "poisson"):
        cv.tl.scvi_train(
            adata,
            key_added=f"m_{likelihood}",
            gene_likelihood=likelihood,
            max_epochs=3,
            n_hidden=16,
        )
    fig = cv.pl.criticism(
        adata, key=["m_zinb", "m_poisson"], n_samples=3, save=tmp_path / "c.png", show=False
    )
    assert (tmp_path / "c.png").stat().st_size > 0
    assert len(fig.axes) == 5
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[3].startswith("calibration") and "fold change" in titles[4]
    # one curve per model (plus the diagonal), drawn from the stored metrics
    curves = fig.axes[3].get_lines()[:2]
    for line, key in zip(curves, ("m_zinb", "m_poisson"), strict=True):
        np.testing.assert_array_equal(
            line.get_ydata(), adata.uns[f"{key}_criticism"]["calibration"]["observed"]
        )
    # groups default to the registered labels
    assert adata.uns["m_zinb_criticism"]["params"]["groupby"] == "cell_type"
    gene_cv = fig.axes[0].collections[1].get_offsets()
    np.testing.assert_allclose(
        gene_cv[:, 1], adata.uns["m_poisson_criticism"]["gene"]["predicted_gene_cv"]
    )


def test_criticism_without_model_names_the_fix(adata):
    with pytest.raises(KeyError, match="scvi_train"):
        cv.pl.criticism(adata, show=False)
