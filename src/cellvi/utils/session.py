"""Versions and a session-info report recorded with every trained model."""

from __future__ import annotations

import contextlib
import importlib.metadata
import io
import platform
import warnings


def package_version(name: str) -> str:
    """Installed version of a distribution, or ``"unknown"``."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def versions() -> dict[str, str]:
    """Versions of the packages that determine a model's numerics, and the compiled kernels
    used since the previous call (``cellvi_native_kernels``, see
    :func:`cellvi.utils.native.take_used`)."""
    names = ["cellvi", "torch", "lightning", "anndata", "scanpy", "numpy", "scipy"]
    out = {name: package_version(name) for name in names}
    if out["cellvi"] == "unknown":  # a source tree that was not pip-installed
        from .._version import __version__

        out["cellvi"] = __version__
    out["python"] = platform.python_version()
    # the compiled kernels change the float32 rounding (and dropout's masks): record the ones
    # used since the last model was recorded, i.e. the ones that trained this one
    from .native import take_used

    out["cellvi_native_kernels"] = take_used()
    return out


def session_report() -> str:
    """A plain-text session-info report (``session_info``), empty if it cannot be produced."""
    try:
        import session_info
    except ImportError:
        return ""
    buffer = io.StringIO()
    with (
        contextlib.redirect_stdout(buffer),
        contextlib.suppress(Exception),
        warnings.catch_warnings(),
    ):
        warnings.simplefilter("ignore")
        session_info.show(html=False, dependencies=True, write_req_file=False)
    return buffer.getvalue()
