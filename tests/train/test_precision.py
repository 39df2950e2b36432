"""precision="auto": bfloat16 matrix products only where the CPU has them; quality unchanged."""

import numpy as np
import pytest

import cellvi as cv
from cellvi.train import trainer


@pytest.mark.parametrize(
    ("native_bf16", "accelerator", "cuda", "expected"),
    [
        (True, "auto", False, "bf16-mixed"),
        (False, "auto", False, "32-true"),
        (True, "cpu", False, "bf16-mixed"),
        (True, "auto", True, "32-true"),  # GPUs stay in float32
        (True, "gpu", False, "32-true"),
    ],
)
def test_auto_precision(monkeypatch, native_bf16, accelerator, cuda, expected):
    monkeypatch.setattr(trainer, "cpu_has_native_bf16", lambda: native_bf16)
    monkeypatch.setattr(trainer.torch.cuda, "is_available", lambda: cuda)
    assert trainer.resolve_precision("auto", accelerator) == expected
    assert trainer.resolve_precision("32-true", accelerator) == "32-true"


def test_bf16_training_matches_float32_quality(adata):
    cv.pp.setup_registry(adata, layer="counts", batch_key="batch")
    results = {}
    for precision in ("32-true", "bf16-mixed"):
        out = cv.tl.scvi_train(adata, copy=True, max_epochs=20, n_hidden=32, precision=precision)
        assert out.uns["scvi"]["params"]["precision"] == precision
        assert np.isfinite(out.obsm["X_scvi"]).all()
        results[precision] = cv.tl.scvi_evaluate(out)["elbo"]
    # stored weights are float32 either way, and the fit is as good (within 0.5 %)
    assert results["bf16-mixed"] == pytest.approx(results["32-true"], rel=5e-3)


def test_unknown_precision_lists_the_valid_ones(adata):
    cv.pp.setup_registry(adata, layer="counts")
    with pytest.raises(ValueError, match="bf16-mixed"):
        cv.tl.scvi_train(adata, precision="half")
    assert "scvi" not in adata.uns
