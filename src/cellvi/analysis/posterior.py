"""Posterior draws from a trained scVI module: latent, normalised expression, importance weights.

Everything here works on minibatches as produced by :meth:`cellvi.data.loader.TensorData.gather`
and on the module alone; random draws use torch's global generator (callers seed it).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ..lifecycle.minified import stored_inference
from ..models.scvi import SCVIModule, log_normal


def encode(module: SCVIModule, mb: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Parameters of ``q(z | x)`` (``qz_m``, ``qz_v``) and, for a learned library size,
    ``q(l | x)`` (``ql_m``, ``ql_v``); otherwise the observed ``log_library``.

    On minified data (the minibatch carries a stored posterior) the stored one is returned.
    """
    if "qz_m" in mb:
        inf = stored_inference(module, mb, deterministic=True)
        return {k: v for k, v in inf.items() if k != "z"}
    proteins = {"y": mb["y"]} if "y" in mb else {}  # a model of proteins encodes RNA and proteins
    inf = module.inference(
        mb["x"],
        mb["batch"],
        mb["cat_covs"],
        mb["cont_covs"],
        mb.get("size_factor"),
        deterministic=True,
        **proteins,
    )
    keep = ("qz_m", "qz_v", "ql_m", "ql_v") if "ql_m" in inf else ("qz_m", "qz_v", "log_library")
    return {k: inf[k] for k in keep}


def to_latent(module: SCVIModule, u: torch.Tensor) -> torch.Tensor:
    """The decoder's input for a Gaussian draw ``u`` (softmax of it for a logistic normal)."""
    return F.softmax(u, dim=-1) if module.latent_distribution == "ln" else u


def draw_gaussian(m: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """One draw from ``N(m, v)`` per row."""
    return m + v.sqrt() * torch.randn_like(m)


def log_scale(
    module: SCVIModule,
    z: torch.Tensor,
    covariates: dict[str, torch.Tensor],
    batch_codes: Sequence[int] | None = None,
) -> torch.Tensor:
    """Natural log of the normalised expression (proportions summing to 1 over genes).

    ``batch_codes``: decode every row as if from each of these batches and average the
    proportions (``None``: each row's own batch), as ``cv.tl.scvi_normalize`` does with
    ``transform_batch``. For a module that generates proteins the log denoised proteins follow
    the genes (columns).
    """
    log_lib = torch.zeros(z.shape[0], device=z.device)  # proportions do not depend on it
    rest = (covariates["labels"], covariates["cat_covs"], covariates["cont_covs"])
    if batch_codes is None:
        return _log_features(module, module.generative(z, log_lib, covariates["batch"], *rest))
    parts = []
    for code in batch_codes:
        batch = torch.full_like(covariates["batch"], int(code))
        parts.append(_log_features(module, module.generative(z, log_lib, batch, *rest)))
    return torch.logsumexp(torch.stack(parts), dim=0) - math.log(len(parts))


def _log_features(module, gen: dict) -> torch.Tensor:
    """The module's ``log_features`` (every compared feature, e.g. genes then denoised
    proteins) when it has them, else its genes' log proportions."""
    features = getattr(module, "log_features", None)
    return (module.log_scale(gen) if features is None else features(gen)).float()


def log_importance_weights(
    module: SCVIModule, mb: dict[str, torch.Tensor], n_samples: int
) -> torch.Tensor:
    """``log p(x, z, l) - log q(z, l | x)`` for ``n_samples`` draws from the encoder,
    ``(n_samples, n_cells)``. Their log-mean-exp over draws estimates ``log p(x)``.

    The density ratio is taken on the Gaussian variable the encoder draws, before a softmax
    for a logistic-normal latent: the Jacobian of the transform cancels in the ratio. With an
    observed library size, ``l`` is data, not a latent, and has no terms here.

    For an RNA + protein model (the minibatch has protein counts ``y``) the target is
    ``log p(x, y)`` and the proposal is the model's own variational family: ``q(z | x, y)`` and,
    for each protein, the log background mean ``b ~ q(b | z) = N(back_mean, back_std^2)`` from the
    decoder, with prior ``N(prior_mean, prior_std^2)`` per protein and batch.
    ``log p(y | z, b)`` and the background terms count only the proteins measured in the cell's
    batch, as in the ELBO, so one draw is an unbiased estimate of the ELBO that
    ``cv.tl.evaluate`` reports.
    """
    post = encode(module, mb)
    covs = (mb["batch"], mb["labels"], mb["cat_covs"], mb["cont_covs"])
    out = []
    for _ in range(int(n_samples)):
        u = draw_gaussian(post["qz_m"], post["qz_v"])
        log_w = log_normal(u, torch.zeros_like(u), torch.ones_like(u)).sum(-1)
        log_w = log_w - log_normal(u, post["qz_m"], post["qz_v"]).sum(-1)
        if "ql_m" in post:
            log_lib = draw_gaussian(post["ql_m"], post["ql_v"])
            prior_m = module.library_log_means[mb["batch"]]
            prior_v = module.library_log_vars[mb["batch"]]
            log_w = log_w + log_normal(log_lib, prior_m, prior_v)
            log_w = log_w - log_normal(log_lib, post["ql_m"], post["ql_v"])
        else:
            log_lib = post["log_library"]
        # a generative pass that draws latents of its own (e.g. a protein background) scores
        # them in the module's log_joint, with their prior and proposal
        gen = module.generative(to_latent(module, u), log_lib, *covs)
        out.append(log_w + module.log_joint(mb, gen))
    return torch.stack(out)
