"""The scVI variational autoencoder as a pure torch module (it never sees an AnnData).

``inference`` maps counts to ``q(z | x)`` (and ``q(l | x)`` for a learned library size),
``generative`` maps a latent to the parameters of the count distribution, ``loss`` returns the
per-cell terms of the negative ELBO.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..distributions import NegativeBinomial, Poisson, ZeroInflatedNegativeBinomial
from ..distributions._likelihood import (
    nb_log_likelihood,
    poisson_log_likelihood,
    zinb_log_likelihood,
)
from ..nn import CountDecoder, GaussianEncoder

DISPERSIONS = ("gene", "gene-batch", "gene-label", "gene-cell")
GENE_LIKELIHOODS = ("zinb", "nb", "poisson")
LATENT_DISTRIBUTIONS = ("normal", "ln")
NORM_PLACEMENTS = ("both", "encoder", "decoder", "none")


@dataclass
class LossTerms:
    """Per-cell terms of the negative ELBO and the scalar training loss."""

    loss: torch.Tensor
    reconstruction: torch.Tensor
    kl_z: torch.Tensor
    kl_library: torch.Tensor


def _check_shape(dropout_rate: float, **positive_ints: int) -> None:
    """Network sizes must be positive integers and the dropout rate in [0, 1)."""
    for name, value in positive_ints.items():
        if int(value) != value or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    if not 0.0 <= dropout_rate < 1.0:
        raise ValueError(f"dropout_rate must be in [0, 1), got {dropout_rate!r}.")


def _check_option(name: str, value: str, valid: Sequence[str]) -> None:
    if value not in valid:
        raise ValueError(f"{name}={value!r} is not valid; choose one of {list(valid)}.")


class SCVIModule(nn.Module):
    """scVI: a VAE for counts with batch correction.

    Parameters
    ----------
    n_input
        Number of genes.
    n_batch, n_labels
        Number of batches and of labels (1 when not registered).
    n_cats_per_cov, n_cont
        Category counts of the extra categorical covariates; number of continuous covariates.
    n_hidden, n_latent, n_layers, dropout_rate
        Network shape (``dropout_rate`` applies to the encoders).
    dispersion
        ``"gene"``, ``"gene-batch"``, ``"gene-label"`` or ``"gene-cell"``.
    gene_likelihood
        ``"zinb"``, ``"nb"`` or ``"poisson"``.
    latent_distribution
        ``"normal"`` or ``"ln"`` (logistic normal: softmax of a Gaussian sample).
    use_observed_lib_size
        Use the observed total counts (or registered size factors) as library size; otherwise
        learn it with a per-batch log-normal prior.
    encode_covariates
        Give the encoders the batch and covariates too.
    deeply_inject_covariates
        Inject covariates in every hidden layer, not only the first.
    batch_representation, batch_embedding_dim
        Batch as one-hot (``"one-hot"``) or as a learned embedding of that dimension.
    use_batch_norm, use_layer_norm
        Where to normalise: ``"both"``, ``"encoder"``, ``"decoder"`` or ``"none"``.
    """

    #: Submodules whose batch norms adapt to a query in frozen query mapping (minibatch
    #: statistics, trained scale and shift; see :func:`cellvi.analysis.surgery.frozen_except`).
    query_adaptive_norms: tuple[str, ...] = ("decoder.",)
    #: Submodules that stay fixed when a query fine-tunes every other weight
    #: (``cv.tl.map_query(freeze=False)``; see :func:`cellvi.analysis.surgery.fixed_parts`).
    query_fixed_when_fine_tuned: tuple[str, ...] = ()

    def __init__(
        self,
        n_input: int,
        *,
        n_batch: int = 1,
        n_labels: int = 1,
        n_cats_per_cov: Sequence[int] = (),
        n_cont: int = 0,
        n_hidden: int = 128,
        n_latent: int = 10,
        n_layers: int = 1,
        dropout_rate: float = 0.1,
        dispersion: str = "gene",
        gene_likelihood: str = "zinb",
        latent_distribution: str = "normal",
        use_observed_lib_size: bool = True,
        encode_covariates: bool = False,
        deeply_inject_covariates: bool = True,
        batch_representation: str = "one-hot",
        batch_embedding_dim: int = 5,
        use_batch_norm: str = "both",
        use_layer_norm: str = "none",
    ) -> None:
        super().__init__()
        _check_shape(
            dropout_rate,
            n_input=n_input,
            n_hidden=n_hidden,
            n_latent=n_latent,
            n_layers=n_layers,
            batch_embedding_dim=batch_embedding_dim,
        )
        _check_option("dispersion", dispersion, DISPERSIONS)
        _check_option("gene_likelihood", gene_likelihood, GENE_LIKELIHOODS)
        _check_option("latent_distribution", latent_distribution, LATENT_DISTRIBUTIONS)
        _check_option("batch_representation", batch_representation, ("one-hot", "embedding"))
        _check_option("use_batch_norm", use_batch_norm, NORM_PLACEMENTS)
        _check_option("use_layer_norm", use_layer_norm, NORM_PLACEMENTS)
        self.n_input, self.n_batch, self.n_labels = n_input, n_batch, n_labels
        self.n_latent = n_latent
        self.dispersion = dispersion
        self.gene_likelihood = gene_likelihood
        self.latent_distribution = latent_distribution
        self.use_observed_lib_size = use_observed_lib_size
        self.encode_covariates = encode_covariates
        self.batch_representation = batch_representation

        if batch_representation == "embedding":
            self.batch_embedding = nn.Embedding(n_batch, batch_embedding_dim)
            cats, cont = list(n_cats_per_cov), n_cont + batch_embedding_dim
        else:
            self.batch_embedding = None
            cats, cont = [n_batch, *n_cats_per_cov], n_cont
        enc_cats, enc_cont = (cats, cont) if encode_covariates else ([], 0)
        enc_norm = {
            "use_batch_norm": use_batch_norm in ("both", "encoder"),
            "use_layer_norm": use_layer_norm in ("both", "encoder"),
        }
        dec_norm = {
            "use_batch_norm": use_batch_norm in ("both", "decoder"),
            "use_layer_norm": use_layer_norm in ("both", "decoder"),
        }
        shape = {"n_hidden": n_hidden, "inject_all_layers": deeply_inject_covariates}
        self.z_encoder = GaussianEncoder(
            n_input,
            n_latent,
            n_layers=n_layers,
            n_cats=enc_cats,
            n_cont=enc_cont,
            dropout_rate=dropout_rate,
            **shape,
            **enc_norm,
        )
        self.l_encoder = None
        if not use_observed_lib_size:
            self.l_encoder = GaussianEncoder(
                n_input,
                1,
                n_layers=1,
                n_cats=enc_cats,
                n_cont=enc_cont,
                dropout_rate=dropout_rate,
                **shape,
                **enc_norm,
            )
        self.decoder = CountDecoder(
            n_latent,
            n_input,
            n_layers=n_layers,
            n_cats=cats,
            n_cont=cont,
            dropout_rate=0.0,
            zero_inflation=gene_likelihood == "zinb",
            cell_dispersion=dispersion == "gene-cell",
            **shape,
            **dec_norm,
        )
        rows = {"gene": None, "gene-batch": n_batch, "gene-label": n_labels}.get(dispersion)
        shape_r = (n_input,) if rows is None else (rows, n_input)
        self.log_theta = nn.Parameter(torch.randn(shape_r)) if dispersion != "gene-cell" else None
        self.register_buffer("library_log_means", torch.zeros(n_batch))
        self.register_buffer("library_log_vars", torch.ones(n_batch))

    # -- covariates ---------------------------------------------------------------------------
    def _covariates(self, batch, cat_covs, cont_covs):
        cats = [cat_covs[:, i] for i in range(cat_covs.shape[1])] if cat_covs.numel() else []
        cont = cont_covs if cont_covs.numel() else None
        if self.batch_embedding is not None:
            emb = self.batch_embedding(batch)
            return cats, emb if cont is None else torch.cat([emb, cont], dim=-1)
        return [batch, *cats], cont

    # -- inference ----------------------------------------------------------------------------
    def inference(
        self,
        x: torch.Tensor | None,
        batch: torch.Tensor,
        cat_covs: torch.Tensor,
        cont_covs: torch.Tensor,
        size_factor: torch.Tensor | None = None,
        *,
        deterministic: bool = False,
        nz: tuple | None = None,
    ) -> dict[str, torch.Tensor]:
        """``q(z | x)`` parameters, a latent sample (or the mean) and the log library size.

        ``nz``, the non-zero counts as ``(rows, cols, values)`` (optionally with the per-cell
        ``totals`` fourth) when known, lets ``log1p`` and the library size touch only those
        entries; ``x`` may then be ``None``.
        """
        x_in, total = _log1p_and_totals(x, nz, batch.shape[0], self.n_input)
        cats, cont = self._covariates(batch, cat_covs, cont_covs)
        enc_cats, enc_cont = (cats, cont) if self.encode_covariates else ([], None)
        qz_m, qz_v = (t.float() for t in self.z_encoder(x_in, enc_cats, enc_cont))
        z = qz_m if deterministic else qz_m + qz_v.sqrt() * torch.randn_like(qz_m)
        if self.latent_distribution == "ln":
            z = F.softmax(z, dim=-1)
        out = {"qz_m": qz_m, "qz_v": qz_v, "z": z}
        if self.l_encoder is None:
            # zero-count cells get library 1 (log 0): finite, and they only ever see zeros
            library = total.clamp(min=1.0) if size_factor is None else size_factor
            out["log_library"] = torch.log(library)
        else:
            ql_m, ql_v = (t.float() for t in self.l_encoder(x_in, enc_cats, enc_cont))
            ql_m, ql_v = ql_m.squeeze(-1), ql_v.squeeze(-1)
            log_l = ql_m if deterministic else ql_m + ql_v.sqrt() * torch.randn_like(ql_m)
            out.update(ql_m=ql_m, ql_v=ql_v, log_library=log_l)
        return out

    # -- generative ---------------------------------------------------------------------------
    def generative(
        self,
        z: torch.Tensor,
        log_library: torch.Tensor,
        batch: torch.Tensor,
        labels: torch.Tensor,
        cat_covs: torch.Tensor,
        cont_covs: torch.Tensor,
        *,
        deterministic: bool = False,
    ) -> dict[str, torch.Tensor]:
        """Parameters of ``p(x | z, l)``: ``scale_logits`` (``mu = softmax(scale_logits) *
        exp(log_library)``), ``log_library``, ``theta`` and, for ZINB, ``zi_logits``.
        ``deterministic`` has nothing to change here: this pass draws no latent of its own."""
        cats, cont = self._covariates(batch, cat_covs, cont_covs)
        out = self.decoder(z, log_library, cats, cont)
        if self.dispersion == "gene-cell":
            out["theta"] = torch.exp(out.pop("log_theta"))
        elif self.dispersion == "gene":
            out["theta"] = torch.exp(self.log_theta)
        else:
            index = batch if self.dispersion == "gene-batch" else labels
            out["theta"] = torch.exp(self.log_theta)[index]
        return out

    def log_likelihood(self, x: torch.Tensor, gen: dict, mb: dict) -> torch.Tensor:
        """Full normalised ``log p(x | z, l)`` per cell."""
        return count_log_likelihood(self.gene_likelihood, x, gen, mb)

    def log_joint(self, mb: dict, gen: dict) -> torch.Tensor:
        """Importance-sampling target given the latent draw decoded in ``gen``: here the count
        log-likelihood (the generative pass draws no latent of its own)."""
        return self.log_likelihood(mb["x"], gen, mb)

    @staticmethod
    def log_scale(gen: dict) -> torch.Tensor:
        """Log of the expression proportions (each cell's sum to 1 over genes)."""
        return torch.log_softmax(gen["scale_logits"], dim=-1)

    def count_distribution(self, gen: dict) -> torch.distributions.Distribution:
        """``p(x | z, l)`` as a distribution object, for sampling and criticism."""
        return count_distribution(self.gene_likelihood, gen)

    # -- loss ---------------------------------------------------------------------------------
    def forward(self, mb: dict[str, torch.Tensor], kl_weight: float = 1.0) -> LossTerms:
        """Negative ELBO of a minibatch, with the KL of ``z`` scaled by ``kl_weight``."""
        nz = _nonzeros(mb)
        inf = self.inference(
            mb.get("x"),
            mb["batch"],
            mb["cat_covs"],
            mb["cont_covs"],
            mb.get("size_factor"),
            nz=nz,
        )
        gen = self.generative(
            inf["z"],
            inf["log_library"],
            mb["batch"],
            mb["labels"],
            mb["cat_covs"],
            mb["cont_covs"],
        )
        reconstruction = -self.log_likelihood(mb.get("x"), gen, mb)
        kl_z = _kl_standard_normal(inf["qz_m"], inf["qz_v"])
        kl_library = torch.zeros_like(kl_z)
        if self.l_encoder is not None:
            prior_m = self.library_log_means[mb["batch"]]
            prior_v = self.library_log_vars[mb["batch"]]
            kl_library = _kl_normal(inf["ql_m"], inf["ql_v"], prior_m, prior_v)
        loss = (reconstruction + kl_weight * kl_z + kl_library).mean()
        return LossTerms(loss, reconstruction, kl_z, kl_library)


def count_distribution(gene_likelihood: str, gen: dict) -> torch.distributions.Distribution:
    """The RNA count distribution (Poisson, NB or ZINB) of the decoder output ``gen``
    (``scale_logits``, ``log_library``, ``theta``, ``zi_logits``)."""
    mu = torch.exp(SCVIModule.log_scale(gen) + gen["log_library"].unsqueeze(-1))
    if gene_likelihood == "poisson":
        return Poisson(mu)
    theta = gen["theta"].expand_as(mu)
    if gene_likelihood == "nb":
        return NegativeBinomial(mu, theta)
    return ZeroInflatedNegativeBinomial(mu, theta, gen["zi_logits"])


def count_log_likelihood(gene_likelihood: str, x, gen: dict, mb: dict) -> torch.Tensor:
    """Full normalised log-likelihood per cell of the counts of a minibatch ``mb`` under the
    decoder output ``gen`` (``scale_logits``, ``log_library``, ``theta``, ``zi_logits``)."""
    extra = {
        "log_x_factorial": mb["log_x_factorial"],
        "nz_rows": mb.get("nz_rows"),
        "nz_cols": mb.get("nz_cols"),
        "nz_values": mb.get("nz_values"),
    }
    # under mixed precision the decoder's outputs may be bfloat16: the likelihood is float32
    gen = {k: v.float() for k, v in gen.items()}
    logits, log_lib = gen["scale_logits"], gen["log_library"]
    if gene_likelihood == "zinb":
        return zinb_log_likelihood(x, logits, log_lib, gen["theta"], gen["zi_logits"], **extra)
    if gene_likelihood == "nb":
        return nb_log_likelihood(x, logits, log_lib, gen["theta"], **extra)
    return poisson_log_likelihood(x, logits, log_lib, **extra)


def _nonzeros(mb: dict) -> tuple | None:
    """``(rows, cols, values, totals)`` of a sparse minibatch's non-zero counts (``totals``, the
    per-cell sums, ``None`` when the loader did not give them), or ``None`` for dense data."""
    if "nz_rows" not in mb:
        return None
    return mb["nz_rows"], mb["nz_cols"], mb["nz_values"], mb.get("nz_totals")


def _nonzero_totals(nz, n_cells: int) -> torch.Tensor:
    """Per-cell total counts from ``nz`` (given by the loader, or summed here)."""
    rows, _, values = nz[:3]
    if len(nz) > 3 and nz[3] is not None:
        return nz[3]
    return torch.zeros(n_cells, dtype=values.dtype, device=values.device).index_add_(
        0, rows, values
    )


def _log1p_and_totals(x, nz, n_cells: int, n_genes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``log1p(x)`` and the per-cell totals, from the non-zero entries alone when known.

    Under autocast the encoder input is built directly in the autocast dtype, which saves the
    cast of a full ``cells x genes`` matrix.
    """
    if nz is None:
        return torch.log1p(x), x.sum(-1)
    rows, cols, values = nz[:3]
    device = values.device
    dtype = values.dtype
    if torch.is_autocast_enabled(device.type):
        dtype = torch.get_autocast_dtype(device.type)
    flat = rows * n_genes + cols
    x_in = torch.zeros(n_cells * n_genes, dtype=dtype, device=device)
    x_in.index_copy_(0, flat, torch.log1p(values).to(dtype))
    return x_in.view(n_cells, n_genes), _nonzero_totals(nz, n_cells)


def log_normal(x: torch.Tensor, m: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``log N(x; m, v)``, elementwise."""
    return -0.5 * (math.log(2 * math.pi) + torch.log(v) + (x - m).square() / v)


def _kl_standard_normal(m: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return 0.5 * (v + m.square() - 1.0 - torch.log(v)).sum(-1)


def _kl_normal(m, v, prior_m, prior_v) -> torch.Tensor:
    return 0.5 * (torch.log(prior_v / v) + (v + (m - prior_m).square()) / prior_v - 1.0)
