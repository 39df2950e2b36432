"""Bayesian differential expression from paired posterior samples of normalised expression.

The inputs are ``log`` expression proportions (natural log, ``(n_samples, n_genes)``) drawn
from the posterior of two groups of cells. Samples of the two groups are paired row by row
(both arrive in random order), so each row gives one draw of the log2 fold change.

Two hypotheses are tested per gene:

``"vanilla"``
    ``m1 > m2``: the posterior probability that expression in group 1 exceeds group 2.
``"change"``
    ``|LFC| > delta``: the posterior probability of an effect larger than ``delta`` (log2).

The false discovery rate is controlled in the Bayesian way: among the genes called
differentially expressed, the expected fraction of nulls is the mean of their posterior null
probabilities, and the largest set (by decreasing probability) whose mean stays within the
target is called.
"""

from __future__ import annotations

import numpy as np
import torch

MODES = ("vanilla", "change")
#: Probabilities are kept this far from 0 and 1 so that Bayes factors stay finite.
PROBA_EPS = 1e-8
_LOG2 = float(np.log(2.0))


def de_statistics(
    log_scale1: torch.Tensor,
    log_scale2: torch.Tensor,
    *,
    mode: str,
    delta: float,
    pseudocount: float = 0.0,
) -> dict[str, np.ndarray]:
    """Per-gene DE statistics from paired posterior samples.

    Parameters
    ----------
    log_scale1, log_scale2
        Natural log of normalised expression, ``(n_samples, n_genes)`` each, paired by row.
    mode
        ``"vanilla"`` or ``"change"``.
    delta
        Effect size threshold on ``|LFC|`` (log2) for ``"change"``.
    pseudocount
        Added to the normalised expression before the log fold change, which shrinks the
        fold changes of genes expressed far below it towards 0.

    Returns
    -------
    Arrays of length ``n_genes``: ``proba_de`` (posterior probability of the tested
    hypothesis: ``|LFC| > delta`` for change; for vanilla the probability of the more likely
    ordering, ``max(P(m1 > m2), P(m1 < m2))``), ``proba_not_de``, ``bayes_factor`` (log odds
    of ``|LFC| > delta`` for change, of ``m1 > m2`` for vanilla), ``score`` (probability of
    up-regulation minus that of down-regulation, ``P(LFC > delta) - P(LFC < -delta)``,
    with ``delta = 0`` for vanilla: in [-1, 1], up-regulated genes first),
    ``lfc_mean``, ``lfc_median``, ``lfc_std``, ``lfc_min``, ``lfc_max`` (log2 fold change),
    ``scale1``, ``scale2`` (posterior mean of the normalised expression).
    """
    if mode not in MODES:
        raise ValueError(f"mode={mode!r} is not valid; choose one of {list(MODES)}.")
    if log_scale1.shape != log_scale2.shape:
        raise ValueError(
            f"paired samples differ in shape: {log_scale1.shape} vs {log_scale2.shape}"
        )
    if pseudocount > 0:
        lfc = torch.log2(log_scale1.exp() + pseudocount) - torch.log2(
            log_scale2.exp() + pseudocount
        )
    else:
        lfc = (log_scale1 - log_scale2) / _LOG2
    threshold = float(delta) if mode == "change" else 0.0
    up = (lfc > threshold).float().mean(0)
    down = (lfc < -threshold).float().mean(0)
    if mode == "change":
        proba_de = (lfc.abs() > threshold).float().mean(0)
    else:
        # the more likely direction: a gene is "DE" when its ordering is clear either way
        proba_de = torch.maximum(up, 1.0 - up)
    stats = {
        "proba_de": proba_de,
        "bayes_factor": _log_odds(proba_de if mode == "change" else up),
        "score": up - down,
        "lfc_mean": lfc.mean(0),
        "lfc_median": lfc.median(0).values,
        "lfc_std": lfc.std(0),
        "lfc_min": lfc.min(0).values,
        "lfc_max": lfc.max(0).values,
        "scale1": log_scale1.exp().mean(0),
        "scale2": log_scale2.exp().mean(0),
    }
    out = {k: v.double().cpu().numpy() for k, v in stats.items()}
    out["proba_not_de"] = 1.0 - out["proba_de"]
    return out


def _log_odds(p: torch.Tensor) -> torch.Tensor:
    p = p.double().clamp(PROBA_EPS, 1.0 - PROBA_EPS)
    return torch.log(p) - torch.log1p(-p)


def expected_fdr(proba_de: np.ndarray) -> np.ndarray:
    """Posterior expected FDR of calling each gene and every gene ranked above it.

    Genes are ranked by decreasing ``proba_de``; the value of a gene is the mean null
    probability ``1 - proba_de`` over the genes up to and including it. It never decreases
    down the ranking, so it works like a q-value: ``expected_fdr <= target`` is the call.
    """
    proba_de = np.asarray(proba_de, dtype=np.float64)
    order = np.argsort(-proba_de, kind="stable")
    ranked = proba_de[order]
    running = np.cumsum(1.0 - ranked) / np.arange(1, proba_de.size + 1)
    # tied genes are called together: each takes the value at the end of its tie
    ends = np.r_[np.flatnonzero(np.diff(ranked)), proba_de.size - 1]
    tied = running[ends][np.searchsorted(ends, np.arange(proba_de.size))]
    out = np.empty_like(tied)
    out[order] = tied
    return out


def is_de_fdr(proba_de: np.ndarray, fdr_target: float) -> np.ndarray:
    """The largest set of top-ranked genes whose posterior expected FDR is within target."""
    if not 0.0 < fdr_target < 1.0:
        raise ValueError(f"fdr_target must be in (0, 1), got {fdr_target}.")
    return expected_fdr(proba_de) <= fdr_target
