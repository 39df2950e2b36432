"""zig's clang (the ``ziglang`` wheel of the test extra), as the native tests call it."""

from __future__ import annotations

import platform
import subprocess
import sys

ZIG = [sys.executable, "-m", "ziglang", "cc"]
# linked against glibc 2.28's symbol set (RHEL 8)
ZIG_GLIBC_228 = [*ZIG, "-target", f"{platform.machine()}-linux-gnu.2.28"]


def zig_works() -> bool:
    """Whether ``python -m ziglang cc`` runs here."""
    try:
        done = subprocess.run([*ZIG, "--version"], capture_output=True, timeout=120, check=False)
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0
