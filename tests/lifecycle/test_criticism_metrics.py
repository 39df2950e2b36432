"""The plot-free posterior predictive statistics, fed with draws whose distribution is known."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from cellvi.lifecycle.criticism import LEVELS, PredictiveStatistics, observed_statistics
from cellvi.lifecycle.criticism_scores import de_scores, spearman, summarize, top_gene_f1

N_CELLS, N_GENES, N_SAMPLES = 400, 30, 10
THETA = 2.0


def _means(seed=0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    groups = rng.integers(0, 3, N_CELLS)
    programme = rng.gamma(1.0, 1.0, (3, N_GENES)) + 0.1
    depth = rng.lognormal(np.log(300), 0.3, N_CELLS)
    mu = programme[groups] / programme[groups].sum(1, keepdims=True) * depth[:, None]
    return mu, groups


def _nb(mu: np.ndarray, shape, generator) -> torch.Tensor:
    mu = torch.as_tensor(mu).expand(shape)
    rate = torch._standard_gamma(torch.full(shape, THETA, dtype=torch.float64), generator) / THETA
    return torch.poisson(rate * mu, generator)


def _check(observed_counts, draws, groups):
    """Statistics of ``draws`` fed in two minibatches, as cv.tl.criticism does."""
    stats = PredictiveStatistics(N_CELLS, N_GENES, N_SAMPLES, groups, 3)
    x = torch.as_tensor(observed_counts)
    for rows in (torch.arange(0, 150), torch.arange(150, N_CELLS)):
        stats.update(x[rows], draws[:, rows], rows)
    observed = observed_statistics(sp.csr_matrix(observed_counts), groups, 3)
    return summarize(observed, stats.finish(), groups=np.array(["a", "b", "c"]), n_top=5)


@pytest.fixture
def setting():
    mu, groups = _means()
    gen = torch.Generator().manual_seed(1)
    torch.manual_seed(2)  # the random tie-breaking of the ranks
    observed = _nb(mu, (N_CELLS, N_GENES), gen).numpy()
    return mu, groups, observed, gen


def test_draws_from_the_true_distribution_are_calibrated(setting):
    mu, groups, observed, gen = setting
    result = _check(observed, _nb(mu, (N_SAMPLES, N_CELLS, N_GENES), gen), groups)
    s = result["summary"]
    assert s["calibration_error"] < 0.01
    np.testing.assert_allclose(result["calibration"]["observed"], LEVELS, atol=0.02)
    assert s["gene_zero_fraction_mae"] < 0.02 and s["gene_zero_fraction_pearson"] > 0.95
    assert s["gene_cv_pearson"] > 0.9 and s["gene_cv_mae"] < 0.08
    assert s["lfc_pearson"] > 0.95 and s["lfc_f1"] >= 0.8
    np.testing.assert_allclose(result["calibration"]["pit_histogram"], 1.0, atol=0.15)


def test_too_narrow_predictions_are_flagged(setting):
    """Poisson draws with the right means, against overdispersed observations."""
    mu, groups, observed, gen = setting
    draws = torch.poisson(torch.as_tensor(mu).expand(N_SAMPLES, N_CELLS, N_GENES), gen)
    s = _check(observed, draws, groups)["summary"]
    assert s["calibration_error"] > 0.1 and s["calibration_bias"] < -0.1
    # the means are right, so fold changes still agree; the variability does not
    assert s["lfc_pearson"] > 0.9
    assert s["gene_cv_mae"] > 0.3 and s["gene_zero_fraction_mae"] > 0.04


def test_observed_statistics_on_a_small_known_matrix():
    x = np.array([[0, 2, 4], [0, 0, 4], [2, 2, 4], [2, 0, 4]], dtype=float)
    groups = np.array([0, 0, 1, 1])
    for matrix in (x, sp.csr_matrix(x)):
        stats = observed_statistics(matrix, groups, 2)
        np.testing.assert_allclose(stats["gene_zero_fraction"], [0.5, 0.5, 0.0])
        np.testing.assert_allclose(stats["gene_cv"], [1.0, 1.0, 0.0])
        np.testing.assert_allclose(stats["cell_cv"][1], np.sqrt(2.0))  # (0, 0, 4): sd / mean
        # gene 0 is 0 in group 0; in group 1, 2/8 (cell 2) and 2/6 (cell 3) of 1e4 counts
        lfc = np.log2(0 + 1) - np.log2((1e4 / 4 + 1e4 / 3) / 2 + 1)
        np.testing.assert_allclose(stats["lfc"][0, 0], lfc)
        np.testing.assert_array_equal(stats["group_sizes"], [2, 2])


def test_scores():
    a = np.array([3.0, 2.0, 1.0, 0.0])
    assert top_gene_f1(a, a, 2) == 1.0
    assert top_gene_f1(a, -a, 2) == 0.0
    assert spearman(a, a**3) == pytest.approx(1.0)
    lfc = np.stack([a, -a])
    scores = de_scores(lfc, lfc + 0.5, np.array([1, 5]), n_top=2)
    assert np.isnan(scores["mae"][0])  # a one-cell group has no fold change
    assert scores["mae"][1] == pytest.approx(0.5) and scores["pearson"][1] == pytest.approx(1.0)
