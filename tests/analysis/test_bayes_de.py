"""Bayesian DE statistics on hand-made posterior samples with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cellvi.analysis.bayes_de import de_statistics, expected_fdr, is_de_fdr


def _samples(lfc_per_gene, n=1000, noise=0.0, seed=0):
    """Paired log-scale samples whose log2 fold change is ``lfc_per_gene`` (+ noise)."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(n, len(lfc_per_gene), generator=g) - 5.0
    shift = torch.tensor(lfc_per_gene) * math.log(2.0)
    return base + shift + noise * torch.randn(base.shape, generator=g), base


def test_constant_shift_gives_exact_lfc_and_probabilities():
    log1, log2 = _samples([2.0, -1.0, 0.1, 0.0])
    out = de_statistics(log1, log2, mode="change", delta=0.25)
    np.testing.assert_allclose(out["lfc_mean"], [2.0, -1.0, 0.1, 0.0], atol=1e-5)
    np.testing.assert_allclose(out["lfc_median"], out["lfc_mean"], atol=1e-5)
    np.testing.assert_allclose(out["lfc_std"], 0.0, atol=1e-5)
    np.testing.assert_array_equal(out["proba_de"], [1.0, 1.0, 0.0, 0.0])
    np.testing.assert_array_equal(out["proba_not_de"], 1.0 - out["proba_de"])
    # score: P(LFC > delta) - P(LFC < -delta), so up (1) > null (0) > down (-1)
    np.testing.assert_array_equal(out["score"], [1.0, -1.0, 0.0, 0.0])
    assert out["bayes_factor"][0] > 10 and out["bayes_factor"][3] < -10


def test_noisy_lfc_probability_matches_normal_tail():
    # LFC ~ N(0.5, 0.5^2) in log2 units: P(|LFC| > 0.25) = P(Z > -0.5) + P(Z < -1.5)
    log1, log2 = _samples([0.5], n=200_000, noise=0.5 * math.log(2.0))
    out = de_statistics(log1, log2, mode="change", delta=0.25)
    from scipy.stats import norm

    expected = norm.sf(-0.5) + norm.cdf(-1.5)
    assert out["proba_de"][0] == pytest.approx(expected, abs=0.005)
    assert out["lfc_std"][0] == pytest.approx(0.5, rel=0.01)
    vanilla = de_statistics(log1, log2, mode="vanilla", delta=0.25)
    assert vanilla["proba_de"][0] == pytest.approx(norm.sf(-1.0), abs=0.005)
    assert vanilla["bayes_factor"][0] == pytest.approx(
        math.log(norm.sf(-1.0) / norm.cdf(-1.0)), abs=0.05
    )


def test_pseudocount_shrinks_fold_changes_of_rare_genes():
    log1 = torch.log(torch.tensor([[1e-7, 1e-2]])).repeat(10, 1)
    log2 = torch.log(torch.tensor([[1e-8, 1e-3]])).repeat(10, 1)
    plain = de_statistics(log1, log2, mode="change", delta=0.25)
    shrunk = de_statistics(log1, log2, mode="change", delta=0.25, pseudocount=1e-5)
    np.testing.assert_allclose(plain["lfc_mean"], [math.log2(10)] * 2, rtol=1e-5)
    assert abs(shrunk["lfc_mean"][0]) < 0.02  # far below the pseudocount: no effect
    assert shrunk["lfc_mean"][1] == pytest.approx(math.log2(1e-2 + 1e-5) - math.log2(1e-3 + 1e-5))


def test_expected_fdr_by_hand_with_ties():
    proba = np.array([0.99, 0.5, 0.9, 0.9, 0.2])
    # ranking: 0.99, 0.9, 0.9 (tie), 0.5, 0.2; null probabilities 0.01, 0.1, 0.1, 0.5, 0.8
    expected = np.array([0.01, (0.21 + 0.5) / 4, 0.21 / 3, 0.21 / 3, (0.71 + 0.8) / 5])
    np.testing.assert_allclose(expected_fdr(proba), expected)
    np.testing.assert_array_equal(is_de_fdr(proba, 0.05), [True, False, False, False, False])
    # both tied genes are called together or not at all
    np.testing.assert_array_equal(is_de_fdr(proba, 0.08), [True, False, True, True, False])


def test_bad_arguments():
    x = torch.zeros(3, 2)
    with pytest.raises(ValueError, match="mode"):
        de_statistics(x, x, mode="t-test", delta=0.25)
    with pytest.raises(ValueError, match="shape"):
        de_statistics(x, torch.zeros(4, 2), mode="change", delta=0.25)
    with pytest.raises(ValueError, match="fdr_target"):
        is_de_fdr(np.ones(3), 1.5)
