"""Small real datasets bundled with cellvi."""

from ._citeseq import pbmc_citeseq
from ._pbmc import pbmc_10x

__all__ = ["pbmc_10x", "pbmc_citeseq"]
