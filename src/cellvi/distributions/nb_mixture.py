"""Mixture of two negative binomial distributions (e.g. a protein's background and foreground)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.distributions import Distribution, constraints

from ._functional import broadcast_params, nb_log_prob, prepare_value, sample_nb


class NegativeBinomialMixture(Distribution):
    r"""Two-component negative binomial mixture.

    With :math:`w = \mathrm{sigmoid}(\text{mixture\_logits})` the weight of component 1,

    .. math::

        p(x) = w\, \mathrm{NB}(x \mid \mu_1, \theta_1)
        + (1 - w)\, \mathrm{NB}(x \mid \mu_2, \theta_2).

    The mean is :math:`w\mu_1 + (1 - w)\mu_2` and, by the law of total variance, the variance
    is :math:`w v_1 + (1 - w) v_2 + w (1 - w) (\mu_1 - \mu_2)^2` with
    :math:`v_i = \mu_i + \mu_i^2 / \theta_i`.

    Parameters
    ----------
    mu1
        Mean of component 1, ``>= 0``.
    mu2
        Mean of component 2, ``>= 0``.
    theta1
        Inverse dispersion of component 1, ``> 0``.
    mixture_logits
        Logits of the weight of component 1 (any real number).
    theta2
        Inverse dispersion of component 2, ``> 0``; defaults to ``theta1``.
    validate_args
        Whether to check parameters and values; ``None`` uses torch's global default.

    Notes
    -----
    :meth:`log_prob` is a ``logaddexp`` of the two components' log pmfs plus their log
    weights, so it is stable for large ``|mixture_logits|`` and well separated components.
    All parameters are broadcast together.

    Examples
    --------
    >>> import torch
    >>> d = NegativeBinomialMixture(torch.tensor(2.0), torch.tensor(50.0), torch.tensor(5.0),
    ...                             mixture_logits=torch.tensor(0.0))
    >>> float(d.mean)
    26.0
    """

    arg_constraints = {
        "mu1": constraints.nonnegative,
        "mu2": constraints.nonnegative,
        "theta1": constraints.positive,
        "mixture_logits": constraints.real,
        "theta2": constraints.positive,
    }
    support = constraints.nonnegative_integer
    has_rsample = False

    def __init__(
        self, mu1, mu2, theta1, mixture_logits, theta2=None, validate_args: bool | None = None
    ) -> None:
        self.mu1, self.mu2, self.theta1, self.mixture_logits, self.theta2 = broadcast_params(
            type(self).__name__,
            mu1=mu1,
            mu2=mu2,
            theta1=theta1,
            mixture_logits=mixture_logits,
            theta2=theta1 if theta2 is None else theta2,
        )
        super().__init__(self.mu1.shape, validate_args=validate_args)

    def expand(self, batch_shape, _instance=None) -> NegativeBinomialMixture:
        new = self._get_checked_instance(NegativeBinomialMixture, _instance)
        batch_shape = torch.Size(batch_shape)
        for name in self.arg_constraints:
            setattr(new, name, getattr(self, name).expand(batch_shape))
        super(NegativeBinomialMixture, new).__init__(batch_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    @property
    def mixture_probs(self) -> Tensor:
        """Weight of component 1, ``sigmoid(mixture_logits)``."""
        return torch.sigmoid(self.mixture_logits)

    @property
    def mean(self) -> Tensor:
        w = self.mixture_probs
        return w * self.mu1 + (1.0 - w) * self.mu2

    @property
    def variance(self) -> Tensor:
        w = self.mixture_probs
        var1 = self.mu1 + self.mu1.square() / self.theta1
        var2 = self.mu2 + self.mu2.square() / self.theta2
        between = w * (1.0 - w) * (self.mu1 - self.mu2).square()
        return w * var1 + (1.0 - w) * var2 + between

    def sample(self, sample_shape: tuple[int, ...] | torch.Size = ()) -> Tensor:
        """Draw counts (as floats) of shape ``sample_shape + batch_shape``."""
        shape = self._extended_shape(sample_shape)
        with torch.no_grad():
            first = torch.bernoulli(self.mixture_probs.expand(shape)).bool()
            mu = torch.where(first, self.mu1, self.mu2)
            theta = torch.where(first, self.theta1, self.theta2)
            return sample_nb(mu, theta, shape)

    def log_prob(self, value) -> Tensor:
        """Normalised log pmf of ``value`` (broadcast against the batch shape)."""
        value = prepare_value(self, value, self.mu1)
        log_w1 = -F.softplus(-self.mixture_logits)  # log(w)
        log_w2 = -F.softplus(self.mixture_logits)  # log(1 - w)
        lp1 = nb_log_prob(value, self.mu1, self.theta1)
        lp2 = nb_log_prob(value, self.mu2, self.theta2)
        return torch.logaddexp(log_w1 + lp1, log_w2 + lp2)
