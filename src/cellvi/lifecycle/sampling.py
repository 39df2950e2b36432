"""Decoding a trained model into its count distributions, minibatch by minibatch.

Shared by ``cv.tl.posterior_predictive``, ``cv.tl.likelihood_parameters`` and the posterior
predictive checks (``cv.tl.criticism``), so that all of them treat the library size and
``transform_batch`` the same way as ``cv.tl.scvi_normalize``:

- ``library_size="latent"`` keeps each cell's own library (its observed total, the registered
  size factor or, for a learned library, the model's posterior); a number decodes every cell at
  that many counts.
- ``transform_batch`` decodes every cell as if it came from that batch.

For a model that also generates protein counts the RNA part is decoded exactly as above, and the
proteins come from the background/foreground negative binomial mixture of the same latent.
``library_size`` only rescales the RNA: the protein background is a latent of its own (sampled from
its posterior with ``z``, or its posterior mean when deterministic), never tied to the RNA library,
so the protein distribution does not depend on ``library_size``. ``transform_batch`` applies to
both modalities.

Nothing here draws a figure or touches an AnnData.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch

from .runtime import run_inference

#: Upper bound on ``n_samples x cells x genes`` entries drawn at once, to bound memory.
MAX_DRAWN_ENTRIES = 2**24


def check_library_size(library_size: float | str) -> None:
    """``"latent"`` or a positive, finite number of counts per cell."""
    if isinstance(library_size, str):
        if library_size != "latent":
            raise ValueError(f"library_size must be a number or 'latent', got {library_size!r}.")
    elif not (np.isfinite(library_size) and library_size > 0):
        raise ValueError(
            f"library_size must be a positive number (counts per cell, e.g. 1e4) or 'latent', "
            f"got {library_size!r}."
        )


def check_n_samples(n_samples: int) -> int:
    """``n_samples`` as a positive int."""
    if int(n_samples) != n_samples or int(n_samples) < 1:
        raise ValueError(f"n_samples must be a positive integer, got {n_samples!r}.")
    return int(n_samples)


def cells_per_pass(n_samples: int, n_genes: int, batch_size: int) -> int:
    """Cells per minibatch so that ``n_samples`` draws of it stay under the memory bound."""
    return max(8, min(int(batch_size), MAX_DRAWN_ENTRIES // max(n_samples * n_genes, 1)))


@contextmanager
def seeded(seed: int | None, device: torch.device) -> Iterator[None]:
    """Run with torch's generators seeded (``None``: leave them as they are), then restore."""
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(int(seed))
        yield


def has_proteins(module) -> bool:
    """Whether ``module`` also generates protein counts."""
    return hasattr(module, "protein_distribution")


def decode(
    module,
    mb: dict[str, torch.Tensor],
    *,
    deterministic: bool,
    batch_code: int | None = None,
    library_size: float | str = "latent",
) -> tuple[dict[str, torch.Tensor], torch.distributions.Distribution]:
    """One pass ``x -> z -> p(x | z, l)``: the generative outputs and the RNA count distribution.

    ``deterministic`` decodes the posterior mean of the latent (and of a learned library or
    a protein background); otherwise one posterior sample of each. For a model of proteins,
    ``module.protein_distribution(gen)`` is the protein distribution of the same pass.
    """
    inf = run_inference(module, mb, deterministic=deterministic)
    log_lib = inf["log_library"]
    if library_size != "latent":
        log_lib = torch.full_like(log_lib, math.log(float(library_size)))
    batch = mb["batch"] if batch_code is None else torch.full_like(mb["batch"], batch_code)
    gen = module.generative(
        inf["z"], log_lib, batch, mb["labels"], mb["cat_covs"], mb["cont_covs"],
        deterministic=deterministic,
    )  # fmt: skip
    gen = {k: v.float() for k, v in gen.items()}
    return gen, module.count_distribution(gen)


def draw_modalities(
    module,
    mb: dict[str, torch.Tensor],
    n_samples: int,
    *,
    batch_code: int | None = None,
    library_size: float | str = "latent",
) -> dict[str, torch.Tensor]:
    """Posterior predictive counts, ``"rna"`` ``(n_samples, cells, genes)`` and, for a model of
    proteins, ``"protein"`` ``(n_samples, cells, proteins)``: each draw decodes a fresh latent (and
    protein background) and draws both modalities from it."""
    draws: dict[str, list[torch.Tensor]] = {"rna": []}
    if has_proteins(module):
        draws["protein"] = []
    for _ in range(n_samples):
        gen, dist = decode(
            module, mb, deterministic=False, batch_code=batch_code, library_size=library_size
        )
        draws["rna"].append(dist.sample())
        if "protein" in draws:
            draws["protein"].append(module.protein_distribution(gen).sample())
    return {name: torch.stack(values) for name, values in draws.items()}
