"""Compile the C kernels shipped with cellvi on first use and load them with ctypes.

A kernel is compiled once per machine with the system C compiler (``$CC``, which may carry
arguments such as ``python -m ziglang cc``; else ``cc``, ``gcc`` or ``clang``) and kept in a
cache folder (``$CELLVI_CACHE_DIR``, else ``$XDG_CACHE_HOME/cellvi`` or ``~/.cache/cellvi``; a
temporary folder when that is not writable). The cached library is named by a hash of the
source, the compiler, the flags, the C library and the CPU, so an edited kernel, another
compiler or another machine sharing the home folder gets its own build. Nothing is downloaded.

The flag sets of :data:`FLAG_SETS` are tried in order until a library compiles *and* loads:
first with glibc's vector math (libmvec), OpenMP and the instructions of this CPU
(``-march=native``, or ``$CELLVI_MARCH``), then without vector math, without OpenMP (the
kernels then run on one thread, still vectorised), and last without ``-march``. Each outcome
(a library, or why it failed) is cached under the same key, so a later process goes straight
to the flag set that works. Kernels that start no threads are built without OpenMP. GCC
reaches libmvec through declarations in the kernel; clang through ``-fveclib=libmvec`` and
libmvec linked (:data:`CLANG_VECLIB`), added on x86-64 Linux to the sets with vector math.

A kernel built without vector math may be slower than its torch implementation (the NB and
protein mixture likelihoods are, :data:`SLOWER_WITHOUT_VECTOR_MATH`): its caller then uses
torch, and :func:`status` says so.

When no flag set works, :func:`load_kernel` returns ``None`` and the caller uses its torch
implementation (same results within float32 rounding, slower on a CPU). The first such
fallback in a process logs a WARNING with the reason; :func:`status` reports every kernel.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import logging
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

logger = logging.getLogger("cellvi")

_PACKAGE = Path(__file__).resolve().parents[1]
#: every kernel cellvi ships, by the name :func:`status` reports
KERNELS = {
    "nb_likelihood": _PACKAGE / "distributions" / "_nb_kernel.c",
    "hidden_layer": _PACKAGE / "nn" / "_hidden_kernel.c",
    "dropout": _PACKAGE / "nn" / "_dropout_kernel.c",
    "gather": _PACKAGE / "data" / "_gather_kernel.c",
    "scanvi_pairs": _PACKAGE / "models" / "_scanvi_pairs_kernel.c",
}

_MATH = ("-O3", "-fno-math-errno", "-fno-trapping-math")
_NATIVE = "-march=native"  # replaced by -march=$CELLVI_MARCH when that is set
_NO_VECTOR_MATH = "-DCELLVI_NO_VECTOR_MATH"  # the kernels then declare no libmvec functions
#: tried in order until a library compiles and loads; -fopenmp-simd keeps the ``omp simd``
#: loops vectorised without the OpenMP runtime (the parallel regions then run serially)
FLAG_SETS = (
    (*_MATH, _NATIVE, "-fopenmp"),
    (*_MATH, _NATIVE, "-fopenmp", _NO_VECTOR_MATH),
    (*_MATH, _NATIVE, "-fopenmp-simd"),
    (*_MATH, _NATIVE, "-fopenmp-simd", _NO_VECTOR_MATH),
    (*_MATH, "-fopenmp-simd", _NO_VECTOR_MATH),
)
#: what clang needs for glibc's vector math (x86-64 Linux; the path of libmvec.so.1 follows:
#: zig's clang has no libmvec of its own to link against); the kernel learns of it from the -D
CLANG_VECLIB = ("-fveclib=libmvec", "-DCELLVI_VECLIB_LIBMVEC")
COMPILE_TIMEOUT_S = 120
#: kernels slower than their torch implementation when built without vector math (measured:
#: docs/performance.md), and what runs instead; see :func:`vector_math`
SLOWER_WITHOUT_VECTOR_MATH = {
    "nb_likelihood": "the torch likelihoods (NB, protein mixture) are used (faster)"
}
#: what a fallback costs, for the warning (benchmarks/bench_scvi_speed.py, docs/performance.md)
SLOWDOWN = "CPU training is about 1.5x slower without the kernels"


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


def find_compiler() -> list[str] | None:
    """The C compiler command: ``$CC`` when set (split like a shell would; ``None`` when its
    program does not exist), else the first of ``cc``, ``gcc``, ``clang`` on the path."""
    if os.environ.get("CC"):
        words = shlex.split(os.environ["CC"])
        program = shutil.which(words[0]) if words else None
        return [program, *words[1:]] if program else None
    for name in ("cc", "gcc", "clang"):
        path = shutil.which(name)
        if path:
            return [path]
    return None


def uses_openmp(source: Path) -> bool:
    """Whether a kernel starts threads (has an ``omp parallel`` region); the others are built
    without OpenMP."""
    return b"omp parallel" in source.read_bytes()


def uses_vector_math(source: Path) -> bool:
    """Whether a kernel calls vectorisable math functions (it says which build it is, through
    a ``cellvi_vector_math`` function); only those get :data:`CLANG_VECLIB`."""
    return b"cellvi_vector_math" in source.read_bytes()


def flag_sets(source: Path, compiler=None) -> list[tuple[str, ...]]:
    """The flag sets tried for ``source``, in order (see :data:`FLAG_SETS`). With
    ``compiler`` (a command) clang on x86-64 Linux gets :data:`CLANG_VECLIB` and libmvec in
    the sets with vector math, where this system has libmvec."""
    march = os.environ.get("CELLVI_MARCH")
    threads = uses_openmp(source)
    veclib = None
    if compiler is not None and uses_vector_math(source) and _is_clang(tuple(compiler)):
        libmvec = _libmvec_path()
        veclib = (*CLANG_VECLIB, libmvec) if libmvec else None
    out = []
    for flags in FLAG_SETS:
        flags = tuple(f"-march={march}" if f == _NATIVE and march else f for f in flags)
        if not threads:
            flags = tuple("-fopenmp-simd" if f == "-fopenmp" else f for f in flags)
        if veclib and _NO_VECTOR_MATH not in flags:
            flags = (*flags, *veclib)
        if flags not in out:
            out.append(flags)
    return out


@functools.cache
def _libmvec_path() -> str | None:
    """The path of glibc's libmvec.so.1 on x86-64 Linux (as the dynamic loader finds it), or
    ``None`` (another system, a glibc before 2.22, musl)."""
    if not sys.platform.startswith("linux") or platform.machine() not in ("x86_64", "AMD64"):
        return None
    try:
        ctypes.CDLL("libmvec.so.1")
        with open("/proc/self/maps") as f:
            for line in f:
                path = line.split(maxsplit=5)[-1].strip()
                if os.path.basename(path).startswith("libmvec.so") and os.path.isfile(path):
                    return path
    except OSError:
        pass
    return None


def _is_clang(compiler: tuple[str, ...]) -> bool:
    """Whether the compiler command is clang (Apple's, LLVM's, zig's) by its ``--version``."""
    return "clang" in _version_line(compiler).lower()


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
def _version_line(compiler: tuple[str, ...]) -> str:
    """The first line of ``compiler --version`` ("" when it does not run)."""
    try:
        done = subprocess.run(
            [*compiler, "--version"], capture_output=True, text=True, timeout=60, check=False
        )
        return done.stdout.strip().splitlines()[0] if done.stdout.strip() else ""
    except (OSError, subprocess.SubprocessError):
        return ""


def _compiler_identity(compiler: tuple[str, ...]) -> str:
    line = _version_line(compiler)
    return " ".join(compiler) + (" " + line if line else "")


def _first_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    errors = [line for line in lines if "error" in line.lower()]
    return (errors or lines or ["(no message)"])[0][:300]


def _target(source: Path, compiler, flags: tuple[str, ...]) -> Path:
    suffix = ".dll" if sys.platform == "win32" else ".so"
    key = hashlib.sha256()
    for part in (source.read_bytes(), _compiler_identity(tuple(compiler)), " ".join(flags),
                 platform.machine(), " ".join(platform.libc_ver()), _cpu_signature()):  # fmt: skip
        key.update(part if isinstance(part, bytes) else part.encode())
        key.update(b"\0")
    return cache_dir() / f"{source.stem}-{key.hexdigest()[:20]}{suffix}"


def _failure_note(target: Path) -> Path:
    return target.with_suffix(".failed")


def compile_kernel(source: Path, compiler, flags: tuple[str, ...]) -> Path:
    """Compile ``source`` into a shared library in :func:`cache_dir` (reused when present).

    ``compiler`` is a command (a list of words, or one path). Raises :class:`KernelUnavailable`
    with a message that starts ``compile error:``; a compile error is remembered (a file beside
    the library), so the same build is not tried again."""
    compiler = [compiler] if isinstance(compiler, str | os.PathLike) else list(compiler)
    target = _target(source, compiler, flags)
    if target.exists():
        return target
    note = _failure_note(target)
    if note.exists():
        raise KernelUnavailable(note.read_text())
    # build beside the target and rename: processes compiling at once never see half a file
    fd, tmp = tempfile.mkstemp(suffix=target.suffix, dir=target.parent)
    os.close(fd)
    # libraries to link (a path such as libmvec's, -l...) follow the source, as a linker that
    # drops libraries nothing before them needs (--as-needed) requires
    link = [f for f in flags if f.startswith("-l") or os.path.isabs(f)]
    options = [f for f in flags if f not in link]
    cmd = [*map(str, compiler), *options, "-fPIC", "-shared", str(source), "-o", tmp, *link,
           "-lm"]  # fmt: skip
    try:
        done = subprocess.run(
            cmd, capture_output=True, text=True, timeout=COMPILE_TIMEOUT_S, check=False
        )
        if done.returncode != 0:
            message = f"compile error: {_first_line(done.stderr or done.stdout)}"
            _write_note(note, f"{message} (`{' '.join(cmd)}`)")
            raise KernelUnavailable(f"{message} (`{' '.join(cmd)}`)")
        os.replace(tmp, target)
    except (OSError, subprocess.SubprocessError) as err:  # not remembered: may be transient
        raise KernelUnavailable(f"compiler could not run: {err} (`{' '.join(cmd)}`)") from err
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def _write_note(note: Path, text: str) -> None:
    try:
        note.write_text(text)
    except OSError:
        pass


def _open(target: Path) -> ctypes.CDLL:
    """Load a built library; a failure is remembered beside it (``load error: ...``)."""
    try:
        return ctypes.CDLL(str(target))
    except OSError as err:
        message = f"load error: {_first_line(str(err))}"
        _write_note(_failure_note(target), message)
        with contextlib.suppress(OSError):  # the note stands for it from now on
            target.unlink()
        raise KernelUnavailable(message) from err


#: per kernel source: ("loaded", compiler, flags, vector math: bool | None) or ("failed", reason)
_outcomes: dict[Path, tuple] = {}
_used: set[Path] = set()
_warned = False


@functools.cache
def load_kernel(source: Path) -> ctypes.CDLL | None:
    """The compiled library of the C file ``source``, or ``None`` (reason logged) when it
    cannot be built here. Compiled at most once per machine, loaded at most once per process."""
    import torch  # noqa: F401  (its OpenMP runtime must be loaded first, so that we share it)

    compiler = find_compiler()
    if compiler is None:
        wanted = os.environ.get("CC") or "cc, gcc or clang"
        _unavailable(source, f"compiler missing: no C compiler found ({wanted})")
        return None
    reason = "no flag set to try"
    for flags in flag_sets(source, compiler):
        try:
            lib = _open(compile_kernel(source, compiler, flags))
        except KernelUnavailable as err:
            reason = str(err)
            continue
        says = getattr(lib, "cellvi_vector_math", None)
        if says is not None:
            says.argtypes, says.restype = [], ctypes.c_int
        vector = None if says is None else bool(says())
        _outcomes[source] = ("loaded", _compiler_identity(tuple(compiler)), flags, vector)
        if vector is False and _name(source) in SLOWER_WITHOUT_VECTOR_MATH:
            logger.info(
                "cellvi: the C kernel %s was built without vector math (%s): %s. "
                "docs/installation.md has a troubleshooting table.",
                source.name,
                " ".join(flags),
                SLOWER_WITHOUT_VECTOR_MATH[_name(source)],
            )
        return lib
    _unavailable(source, reason)
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


def vector_math(source: Path) -> bool | None:
    """Whether the build of ``source`` loaded in this process calls vector math functions
    (what its ``cellvi_vector_math()`` says); ``None`` when it is not loaded or does not say."""
    outcome = _outcomes.get(source)
    return outcome[3] if outcome is not None and outcome[0] == "loaded" else None


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


def enabled_kernel_function(
    source: Path, name: str, argtypes: tuple, restype=None, *, scalar_ok: bool = True
):
    """:func:`kernel_function`, or ``None`` while :attr:`cellvi.settings.native_kernels` is off:
    the one switch every kernel's caller goes through (called at every use, so kept cheap).
    With ``scalar_ok=False`` also ``None`` where the kernel was built without vector math
    (:func:`vector_math`; the torch implementation is faster there). A kernel returned here
    counts as used (see :func:`take_used`)."""
    if not _settings().native_kernels:
        return None
    fn = kernel_function(source, name, argtypes, restype)
    if fn is None or (not scalar_ok and vector_math(source) is False):
        return None
    _used.add(source)
    return fn


def _unavailable(source: Path, reason: str) -> None:
    global _warned
    _outcomes[source] = ("failed", reason)
    first, _warned = not _warned, True
    (logger.warning if first else logger.info)(
        "cellvi: the C kernel %s is not used (%s); the torch implementation runs instead, "
        "with the same results within float32 rounding. %s. "
        "cellvi.utils.native.status() lists every kernel; docs/installation.md has a "
        "troubleshooting table.",
        source.name,
        reason,
        SLOWDOWN,
    )


def _name(source: Path) -> str:
    return next((k for k, v in KERNELS.items() if v == source), source.name)


def status() -> dict[str, str]:
    """For every kernel cellvi ships (:data:`KERNELS`): ``"loaded"``, or why it is not used
    (``"disabled: ..."``, ``"compiler missing: ..."``, ``"compile error: <first line>"``,
    ``"load error: ..."``), or, for a kernel of :data:`SLOWER_WITHOUT_VECTOR_MATH` built
    without vector math, ``"loaded without vector math; <what runs instead>"``. Builds the
    kernels not built yet in this process."""
    out = {}
    for name, source in KERNELS.items():
        if not _settings().native_kernels:
            out[name] = "disabled: cellvi.settings.native_kernels is False"
        elif load_kernel(source) is not None:
            out[name] = "loaded"
            if name in SLOWER_WITHOUT_VECTOR_MATH and vector_math(source) is False:
                out[name] = f"loaded without vector math; {SLOWER_WITHOUT_VECTOR_MATH[name]}"
        else:
            out[name] = _outcomes.get(source, ("failed", "unknown"))[1]
    return out


def build_info() -> dict[str, str]:
    """For every kernel loaded in this process: the compiler and the flags that built it."""
    return {
        _name(source): f"{outcome[1]}; {' '.join(outcome[2])}"
        for source, outcome in sorted(_outcomes.items())
        if outcome[0] == "loaded"
    }


def take_used() -> str:
    """The kernels used since the last call (the ones that trained the model being recorded),
    with what built them, as one line; ``"none (torch path)"`` when none. Resets the record."""
    used = sorted(_used)
    _used.clear()
    info = build_info()
    groups: dict[str, list[str]] = {}
    for source in used:
        name = _name(source)
        groups.setdefault(info.get(name, "unknown build"), []).append(name)
    if not groups:
        return "none (torch path)"
    return "; ".join(f"{', '.join(names)} ({build})" for build, names in groups.items())


def reset() -> None:
    """Forget what this process loaded, so that the next use builds (or reuses from the cache)
    the kernels again, e.g. after changing ``$CC`` or :data:`FLAG_SETS`; for tests."""
    global _warned
    kernel_function.cache_clear()
    load_kernel.cache_clear()
    _outcomes.clear()
    _used.clear()
    _warned = False
