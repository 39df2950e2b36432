"""Count distributions for single-cell data.

All classes are :class:`torch.distributions.Distribution` subclasses over the non-negative
integers, parameterised by their mean ``mu`` (and, for the negative binomials, the inverse
dispersion ``theta``). Parameters broadcast against each other; :meth:`log_prob` returns the
full, normalised log pmf and is numerically stable in float32 and float64 on any device.

- :class:`Poisson` -- ``Poisson(mu)``.
- :class:`NegativeBinomial` -- ``NegativeBinomial(mu, theta)``, variance ``mu + mu**2 / theta``.
- :class:`ZeroInflatedNegativeBinomial` -- ``ZeroInflatedNegativeBinomial(mu, theta, zi_logits)``.
- :class:`NegativeBinomialMixture` -- ``NegativeBinomialMixture(mu1, mu2, theta1,
  mixture_logits, theta2=None)``, a two-component mixture (e.g. a protein's background and
  foreground).
"""

from .nb_mixture import NegativeBinomialMixture
from .negative_binomial import NegativeBinomial
from .poisson import Poisson
from .zero_inflated import ZeroInflatedNegativeBinomial

__all__ = [
    "NegativeBinomial",
    "NegativeBinomialMixture",
    "Poisson",
    "ZeroInflatedNegativeBinomial",
]
