"""Model surgery: new batch rows are added, the reference's weights copied and kept frozen."""

from __future__ import annotations

import pytest
import torch

from cellvi.analysis.surgery import fixed_parts, frozen_except, transplant
from cellvi.models.scanvi import SCANVIModule
from cellvi.models.scvi import SCVIModule

SHAPE = {"n_hidden": 16, "n_latent": 4, "encode_covariates": True}


def _pair(n_old, n_new, **options):
    torch.manual_seed(0)
    old = SCVIModule(20, n_batch=n_old, **SHAPE, **options)
    new = SCVIModule(20, n_batch=n_new, **SHAPE, **options)
    return old, new


def _minibatch(batch: torch.Tensor) -> dict[str, torch.Tensor]:
    """Poisson counts of 20 genes for the cells of ``batch``, with the fields training reads."""
    n = len(batch)
    x = torch.poisson(torch.full((n, 20), 3.0))
    return {
        "x": x,
        "batch": batch,
        "labels": torch.zeros(n, dtype=torch.long),
        "cat_covs": torch.zeros(n, 0, dtype=torch.long),
        "cont_covs": torch.zeros(n, 0),
        "log_x_factorial": torch.lgamma(x + 1).sum(1),
    }


def _adam_steps(module, mb, steps: int = 3) -> None:
    """A few Adam steps on the parameters that require a gradient (those an optimiser built
    inside ``frozen_except`` would hold)."""
    optimizer = torch.optim.Adam([p for p in module.parameters() if p.requires_grad], lr=0.1)
    for _ in range(steps):
        optimizer.zero_grad()
        module(mb).loss.backward()
        optimizer.step()


def test_transplant_copies_and_extends_batch_rows():
    old, new = _pair(2, 3, dispersion="gene-batch")
    masks = transplant(old, new, n_old=2)
    batch_rows = {
        "z_encoder.body.injections.0.categorical.0.weight",
        "decoder.body.injections.0.categorical.0.weight",
        "log_theta",
    }
    assert set(masks) == batch_rows
    o, n = old.state_dict(), new.state_dict()
    for name, value in o.items():
        if name in batch_rows:
            assert torch.equal(n[name][:2], value)
            # new rows start as the average batch
            torch.testing.assert_close(n[name][2], value.mean(0))
            assert masks[name][2:].all() and not masks[name][:2].any()
        elif "library_log" not in name:
            assert torch.equal(n[name], value), name


def test_single_batch_reference_gets_zero_batch_terms():
    old, new = _pair(1, 3)
    masks = transplant(old, new, n_old=1)
    weight = new.decoder.body.injections[0].categorical[0].weight
    assert torch.equal(weight, torch.zeros_like(weight))  # the reference had no batch term
    assert "decoder.body.injections.0.categorical.0.weight" in masks


def test_frozen_training_moves_only_new_rows_and_restores_flags():
    old, new = _pair(2, 3)
    masks = transplant(old, new, n_old=2)
    before = {k: v.clone() for k, v in new.state_dict().items()}
    mb = _minibatch(torch.tensor([0, 1, 2, 2, 2, 0, 1, 2]))
    new.train()
    with frozen_except(new, masks):
        assert sum(p.requires_grad for p in new.parameters()) == len(masks)
        _adam_steps(new, mb)
    after = new.state_dict()
    for name, value in before.items():
        if name in masks:
            assert torch.equal(after[name][:2], value[:2]), name
            assert not torch.equal(after[name][2], value[2]), name  # the new batch learned
        else:  # BatchNorm statistics included: the norms used the reference's
            assert torch.equal(after[name], value), name
    assert all(p.requires_grad for p in new.parameters())
    # outside the context, training-mode BatchNorm updates its statistics again
    new(mb)
    moved = new.state_dict()["decoder.body.norms.0.running_mean"]
    assert not torch.equal(moved, before["decoder.body.norms.0.running_mean"])


def test_adaptive_norms_train_with_minibatch_statistics_and_the_rest_stays_frozen():
    old, new = _pair(2, 3)
    masks = transplant(old, new, n_old=2)
    before = {k: v.clone() for k, v in new.state_dict().items()}
    mb = _minibatch(torch.full((8,), 2))  # a one-batch query minibatch
    new.train()
    norm = "decoder.body.norms.0."
    with frozen_except(new, masks, adaptive_norms=SCVIModule.query_adaptive_norms):
        trained = {n for n, p in new.named_parameters() if p.requires_grad}
        assert trained == set(masks) | {norm + "weight", norm + "bias"}
        _adam_steps(new, mb)
    after = new.state_dict()
    for name, value in before.items():
        if name.startswith(norm):  # scale, shift and running statistics follow the query
            assert not torch.equal(after[name], value), name
        elif name in masks:
            assert torch.equal(after[name][:2], value[:2]), name
        else:  # the encoder's norm kept the reference's statistics
            assert torch.equal(after[name], value), name
    assert all(p.requires_grad for p in new.parameters())


def test_shape_change_other_than_batch_rows_is_refused():
    old = SCVIModule(20, n_batch=2, **SHAPE)
    new = SCVIModule(20, n_batch=3, **{**SHAPE, "n_hidden": 8})
    with pytest.raises(ValueError, match="only batch-indexed rows may grow"):
        transplant(old, new, n_old=2)


@pytest.mark.parametrize("adaptive", [SCANVIModule.query_adaptive_norms, ("decoder.",)])
def test_fine_tuning_trains_all_but_the_fixed_parts(adaptive):
    torch.manual_seed(0)
    module = SCANVIModule(20, unlabeled_code=2, n_labels=3, **SHAPE).train()
    mb = _minibatch(torch.zeros(8, dtype=torch.long))
    mb["labels"] = torch.full((8,), 2)  # unlabelled query cells
    before = {k: v.clone() for k, v in module.state_dict().items()}
    norm = "classifier.0.norms.0."
    fixed = SCANVIModule.query_fixed_when_fine_tuned
    assert fixed == ("classifier.",)
    with fixed_parts(module, fixed, adaptive_norms=adaptive):
        trained = {n for n, p in module.named_parameters() if p.requires_grad}
        adapts = "classifier." in adaptive
        assert {n for n in trained if n.startswith("classifier.")} == (
            {norm + "weight", norm + "bias"} if adapts else set()
        )
        _adam_steps(module, mb)
    after = module.state_dict()
    for name, value in before.items():
        if name.startswith(norm) and adapts:  # AdaBN: follows the query
            assert not torch.equal(after[name], value), name
        elif name.startswith("classifier."):
            assert torch.equal(after[name], value), name
    # the rest trained (encoder and decoder weights moved), and everything trains again
    assert not torch.equal(after["z_encoder.mean.weight"], before["z_encoder.mean.weight"])
    assert not torch.equal(
        after["decoder.body.linears.0.weight"], before["decoder.body.linears.0.weight"]
    )
    assert all(p.requires_grad for p in module.parameters())
    assert module.classifier[0].norms[0].training
