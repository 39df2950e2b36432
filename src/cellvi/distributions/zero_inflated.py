"""Zero-inflated negative binomial distribution."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.distributions import Distribution, constraints

from ._functional import broadcast_params, nb_log_prob, prepare_value, sample_nb


class ZeroInflatedNegativeBinomial(Distribution):
    r"""Negative binomial with an extra point mass at zero (ZINB).

    With :math:`\pi = \mathrm{sigmoid}(\text{zi\_logits})` the probability of an extra
    ("dropout") zero,

    .. math::

        p(0) = \pi + (1 - \pi)\, \mathrm{NB}(0 \mid \mu, \theta), \qquad
        p(x) = (1 - \pi)\, \mathrm{NB}(x \mid \mu, \theta) \quad (x > 0).

    The mean is :math:`(1 - \pi)\mu` and the variance
    :math:`(1 - \pi)\mu\,(1 + \mu/\theta + \pi\mu)`.

    Parameters
    ----------
    mu
        Mean of the negative binomial component, ``>= 0``.
    theta
        Inverse dispersion of the negative binomial component, ``> 0``.
    zi_logits
        Logits of the zero-inflation probability (any real number; ``+inf`` means all zeros).
    validate_args
        Whether to check parameters and values; ``None`` uses torch's global default.

    Notes
    -----
    :meth:`log_prob` works in log space (``log sigmoid`` and ``logaddexp``), so it is stable
    for very large ``|zi_logits|``. All parameters are broadcast together.

    Examples
    --------
    >>> import torch
    >>> d = ZeroInflatedNegativeBinomial(torch.tensor(5.0), torch.tensor(2.0), torch.tensor(0.0))
    >>> float(d.zi_probs)
    0.5
    """

    arg_constraints = {
        "mu": constraints.nonnegative,
        "theta": constraints.positive,
        "zi_logits": constraints.real,
    }
    support = constraints.nonnegative_integer
    has_rsample = False

    def __init__(self, mu, theta, zi_logits, validate_args: bool | None = None) -> None:
        self.mu, self.theta, self.zi_logits = broadcast_params(
            type(self).__name__, mu=mu, theta=theta, zi_logits=zi_logits
        )
        super().__init__(self.mu.shape, validate_args=validate_args)

    def expand(self, batch_shape, _instance=None) -> ZeroInflatedNegativeBinomial:
        new = self._get_checked_instance(ZeroInflatedNegativeBinomial, _instance)
        batch_shape = torch.Size(batch_shape)
        new.mu = self.mu.expand(batch_shape)
        new.theta = self.theta.expand(batch_shape)
        new.zi_logits = self.zi_logits.expand(batch_shape)
        super(ZeroInflatedNegativeBinomial, new).__init__(batch_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    @property
    def zi_probs(self) -> Tensor:
        """Probability of an extra zero, ``sigmoid(zi_logits)``."""
        return torch.sigmoid(self.zi_logits)

    @property
    def mean(self) -> Tensor:
        return torch.sigmoid(-self.zi_logits) * self.mu

    @property
    def variance(self) -> Tensor:
        pi = self.zi_probs
        return (1.0 - pi) * self.mu * (1.0 + self.mu / self.theta + pi * self.mu)

    def sample(self, sample_shape: tuple[int, ...] | torch.Size = ()) -> Tensor:
        """Draw counts (as floats) of shape ``sample_shape + batch_shape``."""
        shape = self._extended_shape(sample_shape)
        with torch.no_grad():
            counts = sample_nb(self.mu, self.theta, shape)
            extra_zero = torch.bernoulli(self.zi_probs.expand(shape)).bool()
            return counts.masked_fill(extra_zero, 0.0)

    def log_prob(self, value) -> Tensor:
        """Normalised log pmf of ``value`` (broadcast against the batch shape)."""
        value = prepare_value(self, value, self.mu)
        log_nb = nb_log_prob(value, self.mu, self.theta)
        log_not_zi = -F.softplus(self.zi_logits)  # log(1 - pi)
        log_zi = -F.softplus(-self.zi_logits)  # log(pi)
        at_zero = torch.logaddexp(log_zi, log_not_zi + log_nb)
        return torch.where(value == 0, at_zero, log_not_zi + log_nb)
