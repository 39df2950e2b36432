"""Model families: the one contract every model implements, and the registry of them.

>>> import cellvi as cv
>>> fam = cv.families.get_family("totalvi")
>>> fam.has_proteins, sorted(fam.search_space())

A new family is one module that builds a :class:`ModelFamily` and registers it with
:func:`register_family` (see ``docs/families.md`` and ``tutorials/custom_model.py``). The helpers
a family of RNA counts needs are here too: :func:`hyperparameters` and :func:`module_options`
(read a module's keyword-only options), :func:`data_shape` (the sizes a registry fixes),
:func:`rna_training_data`, :func:`init_library_prior` and :func:`init_query_library_prior`.
"""

from ..data.loader import Companion
from ._options import LR, data_shape, hyperparameters, module_options
from ._rna import init_library_prior, init_query_library_prior, rna_training_data
from .contract import (
    OUTPUT_ATTRIBUTES,
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
    register_shared_trainer,
    register_trainer,
    trainer,
    unregister_family,
)

# the built-in families register themselves on import
from . import scanvi, scvi, totalvi  # noqa: E402, F401  isort: skip

__all__ = [
    "LR",
    "OUTPUT_ATTRIBUTES",
    "Capability",
    "CapabilityError",
    "Companion",
    "FamilyModule",
    "Hyperparameter",
    "ModelFamily",
    "TrainingData",
    "data_shape",
    "families",
    "family_names",
    "family_of",
    "get_family",
    "hyperparameters",
    "init_library_prior",
    "init_query_library_prior",
    "module_options",
    "register_family",
    "register_shared_trainer",
    "register_trainer",
    "rna_training_data",
    "trainer",
    "unregister_family",
]
