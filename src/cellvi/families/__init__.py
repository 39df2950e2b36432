"""Model families: the one contract every model implements, and the registry of them.

>>> import cellvi as cv
>>> fam = cv.families.get_family("totalvi")
>>> fam.has_proteins, sorted(fam.search_space())

A new family is one module that builds a :class:`ModelFamily` and registers it with
:func:`register_family` (see ``docs/families.md``).
"""

from .contract import (
    Capability,
    CapabilityError,
    FamilyModule,
    Hyperparameter,
    ModelFamily,
    TrainingData,
)
from .registry import (
    families,
    family_names,
    family_of,
    get_family,
    register_family,
    register_trainer,
    trainer,
    unregister_family,
)

# the built-in families register themselves on import
from . import scvi, totalvi  # noqa: E402, F401  isort: skip

__all__ = [
    "Capability",
    "CapabilityError",
    "FamilyModule",
    "Hyperparameter",
    "ModelFamily",
    "TrainingData",
    "families",
    "family_names",
    "family_of",
    "get_family",
    "register_family",
    "register_trainer",
    "trainer",
    "unregister_family",
]
