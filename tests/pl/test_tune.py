import matplotlib

matplotlib.use("Agg")

import anndata as ad  # noqa: E402
import numpy as np  # noqa: E402
import optuna  # noqa: E402
import pytest  # noqa: E402

import cellvi as cv  # noqa: E402


class PruneTrialOne(optuna.pruners.BasePruner):
    def prune(self, study, trial) -> bool:
        return trial.number == 1


def test_tune_plot_draws_history_and_importances(adata, tmp_path):
    cv.pp.setup_registry(adata, layer="counts", batch_key="batch")
    cv.tl.tune(
        adata,
        n_trials=4,
        max_epochs=2,
        search_space={"n_latent": ("int", 2, 6), "lr": ("float_log", 1e-3, 2e-2)},
        train_kwargs={"n_hidden": 16},
        pruner=PruneTrialOne(),
    )
    adata.write_h5ad(tmp_path / "t.h5ad")
    back = ad.read_h5ad(tmp_path / "t.h5ad")  # plots from what h5ad gives back
    fig = cv.pl.tune(back, save=tmp_path / "t.png", show=False)
    assert (tmp_path / "t.png").stat().st_size > 0
    trials = adata.uns["scvi_tune"]["trials"]
    done, pruned, best = fig.axes[0].get_lines()
    np.testing.assert_allclose(done.get_ydata(), np.delete(trials["value"], 1))
    np.testing.assert_allclose(pruned.get_ydata(), trials["value"][[1]])
    np.testing.assert_allclose(best.get_ydata()[-1], adata.uns["scvi_tune"]["best_value"])
    bars = {
        label.get_text(): patch.get_width()
        for label, patch in zip(fig.axes[1].get_yticklabels(), fig.axes[1].patches, strict=True)
    }
    assert bars == pytest.approx(dict(adata.uns["scvi_tune"]["param_importances"]))


def test_tune_plot_without_results_names_the_fix(adata):
    with pytest.raises(KeyError, match="cv.tl.tune"):
        cv.pl.tune(adata)
