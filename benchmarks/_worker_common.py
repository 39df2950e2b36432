"""What both benchmark workers share (standard library only: each runs in its own venv).

One parser guarantees that the two tools are given the same settings by the driver.
"""

from __future__ import annotations

import argparse
import platform
from importlib.metadata import PackageNotFoundError, version


def version_of(name: str) -> str | None:
    """Installed version of a distribution, or ``None``."""
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def versions(tool: str, tool_version: str | None) -> dict[str, str | None]:
    """The versions a worker records: its tool's, then torch, lightning, anndata, numpy and
    Python (looked up from the installed distributions, not imported)."""
    return {
        tool: tool_version,
        **{name: version_of(name) for name in ("torch", "lightning", "anndata", "numpy")},
        "python": platform.python_version(),
    }


def worker_parser(description: str | None) -> argparse.ArgumentParser:
    """The command line every worker accepts (the driver passes the same values to both)."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--train", required=True)
    p.add_argument("--test", required=True)
    p.add_argument("--out", required=True, help="JSON file to write")
    p.add_argument("--epochs", type=int, required=True)
    p.add_argument("--kl-warmup", type=int, required=True)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--n-hidden", type=int, default=128)
    p.add_argument("--n-latent", type=int, default=10)
    p.add_argument("--n-layers", type=int, default=1)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    return p
