"""Training: the Lightning training plan, trainer set-up and callbacks."""

from .plan import NonFiniteLossError, TrainingPlan
from .trainer import default_kl_warmup, default_max_epochs, fit

__all__ = ["NonFiniteLossError", "TrainingPlan", "default_kl_warmup", "default_max_epochs", "fit"]
