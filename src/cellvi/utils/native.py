"""Compile the C kernels shipped with cellvi on first use and load them with ctypes.

A kernel is compiled once per machine with the system C compiler (``$CC``, else ``cc``,
``gcc`` or ``clang``), OpenMP and the instructions of this CPU, and kept in a cache folder
(``$CELLVI_CACHE_DIR``, else ``$XDG_CACHE_HOME/cellvi`` or ``~/.cache/cellvi``; a temporary
folder when that is not writable). The cached library is named by a hash of the source, the
compiler, the flags and the CPU, so an edited kernel, another compiler or another machine
sharing the home folder gets its own build. Nothing is downloaded.

When no compiler works, :func:`load_kernel` returns ``None`` and the caller uses its torch
implementation (same results, slower on a CPU); the reason is logged once.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

logger = logging.getLogger("cellvi")

#: tried in order; OpenMP is required (the kernels split cells across torch's threads)
FLAG_SETS = (
    ("-O3", "-march=native", "-fopenmp", "-fno-math-errno", "-fno-trapping-math"),
    ("-O3", "-fopenmp", "-fno-math-errno", "-fno-trapping-math"),
)
COMPILE_TIMEOUT_S = 120


class KernelUnavailable(RuntimeError):
    """A C kernel could not be compiled or loaded; the message says why."""


def cache_dir() -> Path:
    """Where compiled kernels are kept (created when missing)."""
    env = os.environ.get("CELLVI_CACHE_DIR")
    if env:
        base = Path(env)
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        base = (Path(xdg) if xdg else Path.home() / ".cache") / "cellvi"
    folder = base / "kernels"
    try:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        if os.access(folder, os.W_OK):
            return folder
    except OSError:
        pass
    folder = (
        Path(tempfile.gettempdir())
        / f"cellvi-kernels-{os.getuid() if hasattr(os, 'getuid') else 'user'}"
    )
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    return folder


def find_compiler() -> str | None:
    """The C compiler to use: ``$CC`` when set (even if it does not exist), else the first of
    ``cc``, ``gcc``, ``clang`` on the path."""
    if os.environ.get("CC"):
        return shutil.which(os.environ["CC"])
    for name in ("cc", "gcc", "clang"):
        path = shutil.which(name)
        if path:
            return path
    return None


@functools.cache
def _cpu_signature() -> str:
    """What the compiled code may depend on in this CPU (its instruction-set flags)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return line.strip()
    except OSError:
        pass
    return f"{platform.machine()} {platform.processor()}"


@functools.cache
def _compiler_identity(compiler: str) -> str:
    try:
        done = subprocess.run(
            [compiler, "--version"], capture_output=True, text=True, timeout=30, check=False
        )
        return compiler + " " + done.stdout.strip().splitlines()[0] if done.stdout else compiler
    except (OSError, subprocess.SubprocessError, IndexError):
        return compiler


def compile_kernel(source: Path, compiler: str, flags: tuple[str, ...]) -> Path:
    """Compile ``source`` into a shared library in :func:`cache_dir` (reused when present)."""
    suffix = ".dll" if sys.platform == "win32" else ".so"
    key = hashlib.sha256()
    for part in (source.read_bytes(), _compiler_identity(compiler), " ".join(flags),
                 platform.machine(), _cpu_signature()):  # fmt: skip
        key.update(part if isinstance(part, bytes) else part.encode())
        key.update(b"\0")
    target = cache_dir() / f"{source.stem}-{key.hexdigest()[:20]}{suffix}"
    if target.exists():
        return target
    # build beside the target and rename: processes compiling at once never see half a file
    fd, tmp = tempfile.mkstemp(suffix=suffix, dir=target.parent)
    os.close(fd)
    cmd = [compiler, *flags, "-fPIC", "-shared", str(source), "-o", tmp, "-lm"]
    try:
        done = subprocess.run(
            cmd, capture_output=True, text=True, timeout=COMPILE_TIMEOUT_S, check=False
        )
        if done.returncode != 0:
            raise KernelUnavailable(
                f"`{' '.join(cmd)}` failed: {(done.stderr or done.stdout).strip()[:500]}"
            )
        os.replace(tmp, target)
    except (OSError, subprocess.SubprocessError) as err:
        raise KernelUnavailable(f"`{' '.join(cmd)}` could not run: {err}") from err
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


@functools.cache
def load_kernel(source: Path) -> ctypes.CDLL | None:
    """The compiled library of the C file ``source``, or ``None`` (reason logged) when it
    cannot be built here. Compiled at most once per machine, loaded at most once per process."""
    import torch  # noqa: F401  (its OpenMP runtime must be loaded first, so that we share it)

    compiler = find_compiler()
    if compiler is None:
        wanted = os.environ.get("CC") or "cc, gcc or clang"
        _unavailable(source, f"no C compiler found ({wanted})")
        return None
    errors = []
    for flags in FLAG_SETS:
        try:
            return ctypes.CDLL(str(compile_kernel(source, compiler, flags)))
        except (KernelUnavailable, OSError) as err:
            errors.append(str(err))
    _unavailable(source, errors[-1])
    return None


@functools.cache
def kernel_function(source: Path, name: str, argtypes: tuple, restype=None):
    """The C function ``name`` of the kernel ``source`` with its ctypes signature, or ``None``
    when the kernel cannot be built here (see :func:`load_kernel`)."""
    lib = load_kernel(source)
    if lib is None:
        return None
    fn = getattr(lib, name)
    fn.argtypes, fn.restype = list(argtypes), restype
    return fn


def pointer(t):
    """The address of a tensor's data for a kernel argument (``None`` for a missing or empty
    tensor: C gets NULL)."""
    return None if t is None or t.numel() == 0 else t.data_ptr()


def threads_for(n_entries: int, serial_below: int) -> int:
    """Threads a kernel gets: one below ``serial_below`` entries (waking a second thread costs
    more than it saves on small matrices), else every thread torch uses."""
    import torch

    return 1 if n_entries < serial_below else torch.get_num_threads()


@functools.cache
def _settings():
    from .._settings import settings

    return settings


def enabled_kernel_function(source: Path, name: str, argtypes: tuple, restype=None):
    """:func:`kernel_function`, or ``None`` while :attr:`cellvi.settings.native_kernels` is off:
    the one switch every kernel's caller goes through (called at every use, so kept cheap)."""
    if not _settings().native_kernels:
        return None
    return kernel_function(source, name, argtypes, restype)


def _unavailable(source: Path, reason: str) -> None:
    logger.info(
        "cellvi: the C kernel %s could not be built (%s); using the torch implementation, "
        "which gives the same results and is slower on a CPU.",
        source.name,
        reason,
    )
