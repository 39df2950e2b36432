"""Negative binomial distribution parameterised by its mean and inverse dispersion."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.distributions import Distribution, constraints

from ._functional import broadcast_params, nb_log_prob, prepare_value, sample_nb


class NegativeBinomial(Distribution):
    r"""Negative binomial distribution with mean ``mu`` and inverse dispersion ``theta``.

    The probability mass function is

    .. math::

        p(x) = \frac{\Gamma(x + \theta)}{\Gamma(\theta)\, x!}
        \left(\frac{\theta}{\theta + \mu}\right)^{\theta}
        \left(\frac{\mu}{\theta + \mu}\right)^{x},

    i.e. a Gamma-Poisson mixture with mean :math:`\mu` and variance
    :math:`\mu + \mu^2 / \theta`. It equals ``scipy.stats.nbinom(n=theta,
    p=theta / (theta + mu))`` and tends to a Poisson distribution as ``theta`` grows.

    Parameters
    ----------
    mu
        Mean of the distribution, ``>= 0`` (``mu = 0`` is a point mass at zero).
    theta
        Inverse dispersion (the "number of successes"), ``> 0``.
    validate_args
        Whether to check parameters and values; ``None`` uses torch's global default.

    Notes
    -----
    Parameters are broadcast together, so ``mu`` of shape ``(5, 3)`` and ``theta`` of shape
    ``(3,)`` (gene-wise dispersion) give a batch shape of ``(5, 3)``. :meth:`log_prob` is the
    full, normalised log pmf and is accurate in float32 even for very large ``theta``
    (Poisson limit), very small ``mu`` and large counts.

    Examples
    --------
    >>> import torch
    >>> d = NegativeBinomial(mu=torch.tensor([1.0, 10.0]), theta=torch.tensor(2.0))
    >>> d.log_prob(torch.tensor([0, 3])).shape
    torch.Size([2])
    """

    arg_constraints = {"mu": constraints.nonnegative, "theta": constraints.positive}
    support = constraints.nonnegative_integer
    has_rsample = False

    def __init__(self, mu, theta, validate_args: bool | None = None) -> None:
        self.mu, self.theta = broadcast_params(type(self).__name__, mu=mu, theta=theta)
        super().__init__(self.mu.shape, validate_args=validate_args)

    def expand(self, batch_shape, _instance=None) -> NegativeBinomial:
        new = self._get_checked_instance(NegativeBinomial, _instance)
        batch_shape = torch.Size(batch_shape)
        new.mu = self.mu.expand(batch_shape)
        new.theta = self.theta.expand(batch_shape)
        super(NegativeBinomial, new).__init__(batch_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    @property
    def mean(self) -> Tensor:
        return self.mu

    @property
    def variance(self) -> Tensor:
        return self.mu + self.mu.square() / self.theta

    def sample(self, sample_shape: tuple[int, ...] | torch.Size = ()) -> Tensor:
        """Draw counts (as floats) of shape ``sample_shape + batch_shape``."""
        return sample_nb(self.mu, self.theta, self._extended_shape(sample_shape))

    def log_prob(self, value) -> Tensor:
        """Normalised log pmf of ``value`` (broadcast against the batch shape)."""
        value = prepare_value(self, value, self.mu)
        return nb_log_prob(value, self.mu, self.theta)
