"""Poisson distribution parameterised by its mean ``mu``."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.distributions import Distribution, constraints

from ._functional import broadcast_params, poisson_log_prob, prepare_value, sample_poisson


class Poisson(Distribution):
    r"""Poisson distribution with mean ``mu``.

    The probability mass function is :math:`p(x) = \mu^x e^{-\mu} / x!`, with mean and
    variance :math:`\mu`. It has the same interface as the other count distributions of
    :mod:`cellvi.distributions` (the parameter is called ``mu``, not ``rate``).

    Parameters
    ----------
    mu
        Mean (rate) of the distribution, ``>= 0`` (``mu = 0`` is a point mass at zero).
    validate_args
        Whether to check parameters and values; ``None`` uses torch's global default.

    Notes
    -----
    :meth:`log_prob` is the full, normalised log pmf computed in saddle-point form
    (Stirling correction plus deviance), so it stays accurate in float32 for large counts,
    where ``x log mu - mu - lgamma(x + 1)`` loses several digits to cancellation.

    Examples
    --------
    >>> import torch
    >>> Poisson(torch.tensor([0.5, 4.0])).log_prob(torch.tensor([0, 4])).shape
    torch.Size([2])
    """

    arg_constraints = {"mu": constraints.nonnegative}
    support = constraints.nonnegative_integer
    has_rsample = False

    def __init__(self, mu, validate_args: bool | None = None) -> None:
        (self.mu,) = broadcast_params(type(self).__name__, mu=mu)
        super().__init__(self.mu.shape, validate_args=validate_args)

    def expand(self, batch_shape, _instance=None) -> Poisson:
        new = self._get_checked_instance(Poisson, _instance)
        batch_shape = torch.Size(batch_shape)
        new.mu = self.mu.expand(batch_shape)
        super(Poisson, new).__init__(batch_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    @property
    def mean(self) -> Tensor:
        return self.mu

    @property
    def variance(self) -> Tensor:
        return self.mu

    def sample(self, sample_shape: tuple[int, ...] | torch.Size = ()) -> Tensor:
        """Draw counts (as floats) of shape ``sample_shape + batch_shape``."""
        return sample_poisson(self.mu, self._extended_shape(sample_shape))

    def log_prob(self, value) -> Tensor:
        """Normalised log pmf of ``value`` (broadcast against the batch shape)."""
        value = prepare_value(self, value, self.mu)
        return poisson_log_prob(value, self.mu)
