import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import cellvi as cv  # noqa: E402


def test_training_history_draws_the_stored_curves(adata, tmp_path):
    cv.pp.setup_registry(adata, layer="counts", batch_key="batch")
    cv.tl.scvi_train(adata, max_epochs=4, n_hidden=16, check_val_every_n_epoch=2)
    fig = cv.pl.training_history(adata, save=tmp_path / "h.png", show=False)
    assert (tmp_path / "h.png").stat().st_size > 0
    elbo_ax = fig.axes[0]
    train_line, val_line = elbo_ax.get_lines()
    np.testing.assert_allclose(train_line.get_ydata(), adata.uns["scvi"]["history"]["elbo_train"])
    assert len(val_line.get_xdata()) == 2  # validation at epochs 2 and 4


def test_training_history_without_model_names_the_fix(adata):
    with pytest.raises(KeyError, match="scvi_train"):
        cv.pl.training_history(adata)
