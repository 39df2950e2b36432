"""The installed version of cellvi (the source tree's own when it was not pip-installed)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("cellvi")
except PackageNotFoundError:  # running from a source tree
    __version__ = "0.1.0"
