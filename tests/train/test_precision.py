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


def test_backward_runs_outside_autocast(adata, monkeypatch):
    """Under bf16-mixed the forward pass is autocast, the backward pass is not (on a CPU it runs
    in the training thread, where autocast would re-cast every gradient product)."""
    import torch

    from cellvi.models.scvi import SCVIModule

    seen = {"forward": [], "backward": []}
    original = SCVIModule.forward

    def forward(self, mb, kl_weight=1.0):
        terms = original(self, mb, kl_weight)
        if terms.loss.requires_grad:  # a training step (not the latent computed afterwards)
            seen["forward"].append(torch.is_autocast_enabled("cpu"))
            terms.loss.register_hook(
                lambda g: seen["backward"].append(torch.is_autocast_enabled("cpu"))
            )
        return terms

    monkeypatch.setattr(SCVIModule, "forward", forward)
    cv.pp.setup_registry(adata, layer="counts", batch_key="batch")
    cv.tl.scvi_train(adata, copy=True, max_epochs=1, n_hidden=16, precision="bf16-mixed")
    assert seen["forward"] and all(seen["forward"])
    assert seen["backward"] and not any(seen["backward"])
