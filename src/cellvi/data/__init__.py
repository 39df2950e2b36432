"""Data handling: the registry of what a model reads from an AnnData, and count validation."""

from .registry import (
    REGISTRY_FORMAT_VERSION,
    REGISTRY_KEY,
    RegisteredData,
    build_registry,
    extract_registered_data,
    get_registry,
    registries_equal,
)
from .validation import validate_counts

__all__ = [
    "REGISTRY_FORMAT_VERSION",
    "REGISTRY_KEY",
    "RegisteredData",
    "build_registry",
    "extract_registered_data",
    "get_registry",
    "registries_equal",
    "validate_counts",
]
