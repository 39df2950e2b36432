"""The scANVI engine: label codes, the ELBO of labelled and unlabelled cells, log p(z1)."""

from __future__ import annotations

import math

import pytest
import torch

from cellvi.models.scanvi import SCANVIModule


def _minibatch(n: int = 24, genes: int = 30, n_labels: int = 4, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    x = torch.poisson(torch.rand(n, genes, generator=g) * 5)
    return {
        "x": x,
        "batch": torch.randint(0, 2, (n,), generator=g),
        "labels": torch.randint(0, n_labels, (n,), generator=g),
        "cat_covs": torch.zeros(n, 0, dtype=torch.long),
        "cont_covs": torch.zeros(n, 0),
        "log_x_factorial": torch.lgamma(x + 1).sum(1),
    }


def test_label_codes_map_to_classes_without_the_unlabelled_one():
    module = SCANVIModule(30, 2, n_batch=2, n_labels=4, n_hidden=16)
    assert module.n_classes == 3
    assert module.class_of_code.tolist() == [0, 1, -1, 2]
    fully = SCANVIModule(30, -1, n_labels=3, n_hidden=16)
    assert fully.class_of_code.tolist() == [0, 1, 2]


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match="gene-label"):
        SCANVIModule(30, 0, n_labels=3, dispersion="gene-label")
    with pytest.raises(ValueError, match="at least 2 classes"):
        SCANVIModule(30, 0, n_labels=2)
    with pytest.raises(ValueError, match="label_prior"):
        SCANVIModule(30, 0, n_labels=3, label_prior="nope")


def test_unlabelled_elbo_is_the_q_weighted_labelled_one_plus_the_label_kl():
    """With q(y | z1) pinned to one class, an unlabelled cell's latent term equals that of the
    same cell labelled with that class, up to log p(y) = KL(delta || uniform)."""
    torch.manual_seed(0)
    module = SCANVIModule(30, 2, n_batch=2, n_labels=4, n_hidden=16, linear_classifier=True).eval()
    with torch.no_grad():
        module.classifier.weight.zero_()
        module.classifier.bias.copy_(torch.tensor([0.0, 40.0, 0.0]))  # class 1 almost surely
    z1, v = torch.randn(8, 10), torch.full((8, 10), 0.5)
    torch.manual_seed(1)
    unlabelled = module.latent_kl(z1, z1, v, torch.full((8,), -1))
    torch.manual_seed(1)
    labelled = module.latent_kl(z1, z1, v, torch.full((8,), 1))
    # labelled pays -log p(y) = log 3; unlabelled pays KL(q || uniform) = log 3 - H(q) ~ log 3
    torch.testing.assert_close(unlabelled, labelled, atol=1e-4, rtol=0)


def test_mixed_minibatch_scores_each_cell_as_alone():
    """Labelled cells are scored on their own class only, unlabelled ones on every class:
    each cell's latent term is what it is in an all-labelled or all-unlabelled minibatch
    (evaluation mode, same draws), and a labelled cell costs one (cell, class) pair."""
    torch.manual_seed(0)
    module = SCANVIModule(30, 3, n_batch=2, n_labels=5, n_hidden=16).eval()
    z1, v = torch.randn(9, 10), torch.rand(9, 10) + 0.1
    mixed = torch.tensor([-1, 2, -1, 0, 1, -1, 3, -1, 0])
    values = {}
    for name, classes in (("mixed", mixed), ("unlabelled", torch.full((9,), -1)),
                          ("labelled", mixed.clamp(min=0))):  # fmt: skip
        torch.manual_seed(1)
        values[name] = module.latent_kl(z1, z1, v, classes)
    expected = torch.where(mixed < 0, values["unlabelled"], values["labelled"])
    torch.testing.assert_close(values["mixed"], expected)
    unlabelled, labelled, cells, ys = module._class_pairs(mixed)
    assert cells.numel() == 4 * 4 + 5 and labelled.tolist() == [1, 3, 4, 6, 8]
    assert ys[16:].tolist() == [2, 0, 1, 3, 0] and cells[16:].tolist() == labelled.tolist()


@pytest.mark.parametrize("classes", [[-1] * 6, [0, 1, 2, 3, 0, 1], [-1, 0, -1, 1, 2, 3]])
def test_latent_term_trains_whatever_the_label_mix(classes):
    torch.manual_seed(0)
    module = SCANVIModule(30, 4, n_labels=5, n_hidden=16).train()
    z1 = torch.randn(6, 10, requires_grad=True)
    kl = module.latent_kl(z1, z1, torch.full((6, 10), 0.5), torch.tensor(classes))
    assert kl.shape == (6,) and torch.isfinite(kl).all()
    kl.sum().backward()
    assert torch.isfinite(z1.grad).all() and z1.grad.abs().sum() > 0
    assert module.z1_decoder.mean.weight.grad.abs().sum() > 0


def test_forward_and_log_joint_are_finite_and_differentiable():
    torch.manual_seed(0)
    module = SCANVIModule(30, 2, n_batch=2, n_labels=4, n_hidden=16)
    mb = _minibatch()
    terms = module(mb)
    assert terms.kl_z.shape == (24,) and torch.isfinite(terms.loss)
    terms.loss.backward()
    assert module.classifier[1].weight.grad.abs().sum() > 0
    module.eval()
    proba = module.predict_proba(mb)
    torch.testing.assert_close(proba.sum(-1), torch.ones(24))
    with torch.no_grad():
        inf = module.inference(mb["x"], mb["batch"], mb["cat_covs"], mb["cont_covs"])
        gen = module.generative(inf["z"], inf["log_library"], mb["batch"], mb["labels"],
                                mb["cat_covs"], mb["cont_covs"])  # fmt: skip
        assert torch.isfinite(module.log_joint(mb, gen)).all()


def test_log_prior_z1_is_a_normalised_density():
    """exp(log p(z1)) integrates to about 1 over z1 (importance check with a wide Gaussian)."""
    torch.manual_seed(0)
    module = SCANVIModule(5, -1, n_labels=2, n_hidden=8, n_latent=2).eval()
    scale = 3.0
    z = torch.randn(20000, 2) * scale
    log_proposal = (-0.5 * (z / scale).square() - math.log(2 * math.pi * scale**2) / 2).sum(-1)
    with torch.no_grad():
        estimate = torch.exp(module.log_prior_z1(z) - log_proposal).mean()
    assert float(estimate) == pytest.approx(1.0, abs=0.1)


def _clusters(n: int = 300, n_classes: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    classes = torch.randint(0, n_classes, (n,), generator=g)
    centres = 3.0 * torch.randn(n_classes, 10, generator=g)
    return centres[classes] + torch.randn(n, 10, generator=g), classes


def test_prefit_classifier_fits_fixed_latents_and_leaves_the_rest():
    torch.manual_seed(0)
    module = SCANVIModule(30, 3, n_labels=4, n_hidden=16)
    z1, classes = _clusters()
    before = {k: v.clone() for k, v in module.state_dict().items()}
    kept = z1.clone()
    module.eval()
    accuracy = lambda: float((module.class_logits(z1).argmax(1) == classes).float().mean())  # noqa: E731
    start = accuracy()
    steps = module.prefit_classifier(z1, classes, steps=150, batch_size=64, lr=1e-2,
                                     generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert steps == 150
    assert accuracy() > 0.97 > start
    assert not module.training and not module.classifier.training  # the modes it had
    torch.testing.assert_close(z1, kept)
    after = module.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("classifier.") for k in changed), changed
    assert all(p.grad is None for p in module.parameters())


def test_prefit_classifier_is_seeded_and_refuses_bad_input():
    z1, classes = _clusters(n=100)

    def fitted(seed: int) -> dict:
        torch.manual_seed(0)
        module = SCANVIModule(30, 3, n_labels=4, n_hidden=16)
        module.prefit_classifier(z1, classes, steps=20, batch_size=32,
                                 generator=torch.Generator().manual_seed(seed))  # fmt: skip
        return module.classifier.state_dict()

    one, same, other = fitted(0), fitted(0), fitted(1)
    assert all(torch.equal(one[k], same[k]) for k in one)
    assert not all(torch.equal(one[k], other[k]) for k in one)  # the draws follow the generator
    module = SCANVIModule(30, 3, n_labels=4, n_hidden=16)
    assert module.prefit_classifier(z1[:1], classes[:1], steps=10) == 0  # batch norm needs two
    assert module.prefit_classifier(z1, classes, steps=0) == 0
    with pytest.raises(ValueError, match="classes must lie in 0..2"):
        module.prefit_classifier(z1, classes + 1, steps=1)
    with pytest.raises(ValueError, match=r"classes \(n_cells,\)"):
        module.prefit_classifier(z1, classes[:10], steps=1)


def test_the_classifier_runs_in_float32_under_autocast():
    """Training runs under bfloat16 autocast; the classifier stays out of it: its logits are
    those of float32 arithmetic, bit for bit, in a hidden-layer and a linear classifier."""
    torch.manual_seed(0)
    z1 = torch.randn(64, 10)
    for linear in (False, True):
        module = SCANVIModule(30, 2, n_batch=2, n_labels=6, n_hidden=64, linear_classifier=linear)
        module.eval()
        with torch.no_grad():
            expected = module.class_logits(z1)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                got = module.class_logits(z1)
                # the control: the same classifier left in autocast is not float32 arithmetic
                in_autocast = module.classifier(z1)
        assert got.dtype == torch.float32
        assert in_autocast.dtype == torch.bfloat16
        torch.testing.assert_close(got, expected, atol=0, rtol=0)
