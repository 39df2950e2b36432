"""The totalVI module's pieces: protein mixture likelihood, decoder, masking, prior, adversary."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cellvi.distributions import NegativeBinomialMixture
from cellvi.distributions._mixture_likelihood import nb_mixture_log_prob
from cellvi.models._protein_prior import MAX_INITIAL_STD, empirical_background_prior
from cellvi.models.scvi import count_log_likelihood
from cellvi.models.totalvi import TOTALVIModule
from cellvi.train.adversarial import fool_loss


def test_mixture_log_prob_matches_distribution():
    g = torch.Generator().manual_seed(0)
    shape = (50, 7)
    y = torch.poisson(torch.full(shape, 20.0), generator=g)
    log_back = torch.randn(shape, generator=g) + 1.5
    log_fore = log_back + torch.rand(shape, generator=g) * 3
    theta = torch.rand(7, generator=g) * 10 + 0.5
    logits = torch.randn(shape, generator=g) * 3
    ours = nb_mixture_log_prob(y, log_back, log_fore, theta, logits)
    ref = NegativeBinomialMixture(log_back.exp(), log_fore.exp(), theta, logits).log_prob(y)
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)


def _module_and_batch(n_cells=16, n_genes=12, n_proteins=5, seed=0):
    torch.manual_seed(seed)
    module = TOTALVIModule(n_genes, n_proteins, n_batch=2, n_hidden=16, n_latent=4)
    g = torch.Generator().manual_seed(seed)
    x = torch.poisson(torch.full((n_cells, n_genes), 3.0), generator=g)
    mb = {
        "x": x,
        "y": torch.poisson(torch.full((n_cells, n_proteins), 30.0), generator=g),
        "batch": torch.arange(n_cells) % 2,
        "labels": torch.zeros(n_cells, dtype=torch.long),
        "cat_covs": torch.zeros(n_cells, 0, dtype=torch.long),
        "cont_covs": torch.zeros(n_cells, 0),
        "log_x_factorial": torch.lgamma(x + 1).sum(1),
    }
    return module, mb


def test_foreground_always_above_background():
    module, mb = _module_and_batch()
    z = torch.randn(16, 4) * 20  # far outside the prior too
    gen = module.generative(z, torch.zeros(16), mb["batch"], mb["labels"], mb["cat_covs"],
                            mb["cont_covs"])  # fmt: skip
    assert (gen["log_fore"] > gen["log_back"]).all()


def test_masked_entries_contribute_nothing():
    module, mb = _module_and_batch()
    module.eval()
    full = module(mb)
    module.protein_batch_mask[1] = 0.0  # no protein measured in batch 1
    in_b1 = mb["batch"] == 1
    torch.manual_seed(0)
    masked = module(mb)
    assert torch.equal(masked.reconstruction_protein[in_b1], torch.zeros(8))
    assert torch.equal(masked.kl_library[in_b1], torch.zeros(8))
    assert (masked.reconstruction_protein[~in_b1] > 0).all()
    assert (full.reconstruction_protein[in_b1] > 0).all()


def test_elbo_terms_add_up_and_kl_weight_scales_all_but_the_rna_likelihood():
    module, mb = _module_and_batch()
    module.eval()
    losses = {}
    for w in (1.0, 0.25, 0.0):
        torch.manual_seed(3)
        losses[w] = module(mb, kl_weight=w)
    t1 = losses[1.0]
    torch.testing.assert_close(t1.reconstruction, t1.reconstruction_rna + t1.reconstruction_protein)
    full = (t1.reconstruction + t1.kl_z + t1.kl_library).mean()
    torch.testing.assert_close(t1.loss, full)  # at weight 1: the full negative ELBO
    torch.testing.assert_close(losses[0.0].loss, t1.reconstruction_rna.mean())
    warm = (t1.reconstruction_protein + t1.kl_z + t1.kl_library).mean()
    torch.testing.assert_close(losses[0.25].loss, t1.reconstruction_rna.mean() + 0.25 * warm)


def test_empirical_prior_finds_the_lower_component():
    rng = np.random.default_rng(0)
    n = 2000
    batch = np.repeat([0, 1], n // 2)
    fore = rng.random(n) < 0.4
    back_mean = np.where(batch == 0, 10.0, 30.0)
    mean = np.where(fore, back_mean * 20, back_mean)
    counts = rng.negative_binomial(20, 20 / (20 + mean))[:, None].astype(np.float32)
    counts = np.hstack([counts, np.zeros_like(counts)])
    mask = np.array([[1, 0], [1, 0]], dtype=np.uint8)
    means, stds = empirical_background_prior(counts, batch, mask, default_mean=3.0, default_std=1.0)
    np.testing.assert_allclose(means[:, 0], np.log1p([10.0, 30.0]), atol=0.15)
    assert (stds[:, 0] < 0.5).all()
    np.testing.assert_array_equal(means[:, 1], [3.0, 3.0])  # unmeasured: the default


def test_empirical_prior_scale_leaves_out_the_count_noise():
    # background means spread little across cells (log-scale sd 0.1), but Poisson-gamma noise
    # spreads the log counts far wider: the fitted width is the counts', the start is capped
    rng = np.random.default_rng(1)
    n = 3000
    batch = np.zeros(n, dtype=int)
    fore = rng.random(n) < 0.3
    back_mean = np.exp(rng.normal(np.log(8.0), 0.1, n))
    mean = np.where(fore, back_mean * 30, back_mean)
    counts = rng.negative_binomial(5, 5 / (5 + mean))[:, None].astype(np.float32)
    mask = np.ones((1, 1), dtype=np.uint8)
    kw = dict(default_mean=3.0, default_std=1.0)
    _, fitted = empirical_background_prior(counts, batch, mask, max_std=np.inf, **kw)
    means, capped = empirical_background_prior(counts, batch, mask, **kw)
    log_counts_sd = np.log1p(counts[~fore, 0]).std()
    assert fitted[0, 0] > 0.4 and abs(fitted[0, 0] - log_counts_sd) < 0.1
    assert capped[0, 0] == pytest.approx(MAX_INITIAL_STD)
    np.testing.assert_allclose(means[0, 0], np.log1p(8.0), atol=0.3)
    _, tight = empirical_background_prior(counts, batch, mask, max_std=0.2, **kw)
    assert tight[0, 0] == pytest.approx(0.2)


def test_fool_loss_is_minimal_for_a_uniform_guess():
    batch = torch.tensor([0, 1, 2])
    uniform = fool_loss(torch.zeros(3, 3), batch)
    torch.testing.assert_close(uniform, torch.full((3,), math.log(3.0)))
    confident = torch.eye(3) * 10  # sure of the true batch: high loss for the encoder
    assert (fool_loss(confident, batch) > uniform).all()


def test_encoder_input_sparse_path_matches_dense():
    from cellvi.models.totalvi import _encoder_input

    _, mb = _module_and_batch()
    x, y = mb["x"], mb["y"]
    rows, cols = torch.nonzero(x, as_tuple=True)
    dense_in, dense_tot = _encoder_input(x, y, None, x.shape[1])
    sparse_in, sparse_tot = _encoder_input(None, y, (rows, cols, x[rows, cols]), x.shape[1])
    torch.testing.assert_close(sparse_in, dense_in)
    torch.testing.assert_close(sparse_tot, x.sum(1))
    # RNA scaled by 1 + its per-cell mean before log1p, proteins as they are
    expected = torch.log1p(x / (1 + x.mean(1, keepdim=True)))
    torch.testing.assert_close(dense_in[:, : x.shape[1]], expected)
    torch.testing.assert_close(dense_in[:, x.shape[1] :], torch.log1p(y))


def test_sampling_distributions_score_what_the_loss_scores():
    """``count_distribution`` / ``protein_distribution`` (used for posterior predictive draws)
    give the log-likelihood of the training loss, for RNA and for proteins."""
    module, mb = _module_and_batch()
    module.eval()
    inf = module.inference(
        mb["x"], mb["batch"], mb["cat_covs"], mb["cont_covs"], y=mb["y"], deterministic=True
    )
    gen = module.generative(inf["z"], inf["log_library"], mb["batch"], mb["labels"],
                            mb["cat_covs"], mb["cont_covs"], deterministic=True)  # fmt: skip
    mixture = module.protein_distribution(gen)
    ref = nb_mixture_log_prob(
        mb["y"], gen["log_back"], gen["log_fore"], gen["protein_theta"], gen["background_logits"]
    )
    torch.testing.assert_close(mixture.log_prob(mb["y"]), ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(mixture.mu1, gen["log_back"].exp())  # component 1: background
    torch.testing.assert_close(1 - mixture.mixture_probs, module.foreground_probability(gen))
    rna = module.count_distribution(gen).log_prob(mb["x"]).sum(-1)
    torch.testing.assert_close(
        rna, count_log_likelihood("nb", mb["x"], gen, mb), rtol=1e-5, atol=1e-4
    )
