"""Torch building blocks: fully connected layers, encoders and decoders (no AnnData here)."""

from .decoder import CountDecoder
from .encoder import GaussianEncoder
from .layers import MLP, CovariateInjection

__all__ = ["MLP", "CountDecoder", "CovariateInjection", "GaussianEncoder"]
