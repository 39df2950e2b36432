"""The NB kernel's log1p where the vector math library has ``log`` but no ``log1p`` (GCC
against glibc 2.22-2.34, clang with ``-fveclib=libmvec``): ``log1p(x) = log(u) + (x - d) / u``
with ``u = 1 + x`` and ``d = u - 1``, against float64 (float32 inputs) and long double (float64
inputs).

The kernel takes log1p of non-negative numbers only: ``r = mu / theta >= 0`` (0 where the
softmax underflowed, up to ~1e11 for theta near 0) and ``exp(-|a|)`` in ``(0, 1]``; NaN and
infinity only from broken inputs. The probe (log1p_probe.c) includes the kernel and runs its
log1p in an ``omp simd`` loop, built with the flags of each case; each case also shows from the
library's imports that the loop calls the vector ``log`` and no ``log1p``."""

from __future__ import annotations

import ctypes
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from tests.conftest import skip_or_fail
from tests.native.zig import ZIG_GLIBC_228, zig_works

from cellvi.utils import native

PROBE = Path(__file__).with_name("log1p_probe.c")
ZIG = ZIG_GLIBC_228
BASE = ("-O3", "-fno-math-errno", "-fno-trapping-math", "-fopenmp-simd")
#: the most a result may differ from the reference, in units in the last place of the result:
#: glibc's vector log is within 4 ulps (its stated goal), the correction adds under 1; measured
#: here (glibc 2.36): 3.8 (float32), 2.1 (float64); on average, MEAN_ULPS
MAX_ULPS = 5
MEAN_ULPS = 1.0

#: name -> (compiler, flags, whether log1p goes through the vector log)
CASES = {
    "gcc-glibc2.28": (["gcc"], (*BASE, "-march=native", "-DCELLVI_ASSUME_GLIBC=228"), True),
    "gcc-glibc2.28-x86-64": (["gcc"], (*BASE, "-march=x86-64", "-DCELLVI_ASSUME_GLIBC=228"), True),
    "zig-clang-veclib": (ZIG, (*BASE, "-march=native", *native.CLANG_VECLIB), True),
    "gcc-no-vector-math": (["gcc"], (*BASE, "-march=native", "-DCELLVI_NO_VECTOR_MATH"), False),
}


@pytest.fixture(scope="module", params=list(CASES))
def probe(request, tmp_path_factory):
    """The probe library of one case, with its undefined symbols."""
    name = request.param
    compiler, flags, via_log = CASES[name]
    if platform.machine() not in ("x86_64", "AMD64") or not sys.platform.startswith("linux"):
        skip_or_fail(f"{name}: libmvec is for x86-64 Linux, this is {platform.machine()}")
    if compiler == ["gcc"] and shutil.which("gcc") is None:
        skip_or_fail(f"{name}: gcc is not installed")
    if compiler is ZIG and not zig_works():
        skip_or_fail(f"{name}: ziglang is not installed (pip install ziglang)")
    if "-fveclib=libmvec" in flags:
        libmvec = native._libmvec_path()
        if libmvec is None:
            skip_or_fail(f"{name}: no libmvec.so.1 on this system")
        flags = (*flags, libmvec)
    if shutil.which("nm") is None:
        skip_or_fail("nm (binutils) is not installed")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CELLVI_CACHE_DIR", str(tmp_path_factory.mktemp(name)))  # a fresh build
        flags = (*flags, f"-I{native.KERNELS['nb_likelihood'].parent}")
        lib_path = native.compile_kernel(PROBE, compiler, flags)
    lib = ctypes.CDLL(str(lib_path))
    done = subprocess.run(["nm", "-D", "--undefined-only", str(lib_path)], capture_output=True,
                          text=True, check=True)  # fmt: skip
    imports = [line.split()[-1].split("@")[0] for line in done.stdout.splitlines() if line.strip()]
    return name, lib, imports, via_log


def _run(lib, fn_name, x: np.ndarray) -> np.ndarray:
    ctype = ctypes.c_float if x.dtype == np.float32 else ctypes.c_double
    fn = getattr(lib, fn_name)
    fn.argtypes = [ctypes.c_int64, ctypes.POINTER(ctype), ctypes.POINTER(ctype)]
    x = np.ascontiguousarray(x)
    y = np.empty_like(x)
    fn(len(x), x.ctypes.data_as(ctypes.POINTER(ctype)), y.ctypes.data_as(ctypes.POINTER(ctype)))
    return y


def _inputs(dtype) -> np.ndarray:
    """Every range the kernel can pass (x >= 0), densest where 1 + x rounds: x from the
    smallest subnormal to the largest finite number, a dense grid near 2^-24 .. 1, uniform
    [0, 2] (where exp(-|a|) lies), the powers of two and their neighbours."""
    info = np.finfo(dtype)
    rng = np.random.default_rng(0)
    exps = np.arange(info.minexp - info.nmant, info.maxexp, dtype=np.float64)
    powers = np.ldexp(1.0, exps.astype(int)).astype(dtype)
    parts = [
        np.array(
            [0.0, info.smallest_subnormal, info.tiny, info.eps / 2, info.eps, 1.0, 2.0, info.max],
            dtype=dtype,
        ),  # fmt: skip
        powers,
        np.nextafter(powers, dtype(np.inf)),
        np.nextafter(powers, dtype(0)),
        np.exp(rng.uniform(np.log(info.tiny), np.log(info.max), 200_000)).astype(dtype),
        np.exp(rng.uniform(np.log(info.eps / 8), np.log(2.0), 200_000)).astype(dtype),
        rng.uniform(0.0, 2.0, 100_000).astype(dtype),
    ]
    x = np.concatenate(parts)
    return x[np.isfinite(x) & (x >= 0)]


def _ulps(got: np.ndarray, want: np.ndarray, dtype) -> np.ndarray:
    """|got - want| in units in the last place of ``want`` rounded to ``dtype``."""
    spacing = np.spacing(np.abs(want.astype(dtype))).astype(np.longdouble)
    return np.abs(got.astype(np.longdouble) - want) / spacing


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_log1p_matches_the_reference_over_the_kernels_range(probe, dtype):
    name, lib, _, _ = probe
    x = _inputs(dtype)
    got = _run(lib, "probe_log1pf" if dtype == np.float32 else "probe_log1p", x)
    # float32 against float64, float64 against long double (extended precision on x86-64)
    want = np.log1p(x.astype(np.float64 if dtype == np.float32 else np.longdouble))
    ulps = _ulps(got, want, dtype)
    worst = int(np.argmax(ulps))
    assert ulps[worst] <= MAX_ULPS, (
        f"{name}, {np.dtype(dtype).name}: log1p({x[worst]!r}) = {got[worst]!r}, want "
        f"{want[worst]!r} ({float(ulps[worst]):.2f} ulps)"
    )
    assert float(ulps.mean()) <= MEAN_ULPS, f"{name}: {float(ulps.mean()):.3f} ulps on average"
    tiny = x < np.finfo(dtype).eps / 2  # 1 + x == 1: log1p(x) = x, exactly
    assert np.array_equal(got[tiny], x[tiny]), name


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_log1p_special_values(probe, dtype):
    name, lib, _, _ = probe
    x = np.array([0.0, -0.0, np.inf, np.nan, np.finfo(dtype).max], dtype=dtype)
    got = _run(lib, "probe_log1pf" if dtype == np.float32 else "probe_log1p", x)
    assert got[0] == 0.0 and not np.signbit(got[0]), name
    assert got[1] == 0.0, name  # (the kernel never passes -0)
    assert got[2] == np.inf, name
    assert np.isnan(got[3]), name
    assert np.isclose(got[4], np.log(np.float64(x[4])), rtol=4 * np.finfo(dtype).eps), name


def test_the_probe_loop_calls_the_vector_log_and_no_log1p(probe):
    """Where log1p goes through log, the loop is vectorised: it imports libmvec's logf / log
    (``_ZGV<isa>N<lanes>v_log[f]``) and no log1p of any kind; the build without vector math
    calls the scalar log1pf / log1p."""
    name, _, imports, via_log = probe
    vector = [s for s in imports if s.startswith("_ZGV")]
    if via_log:
        assert not [s for s in imports if "log1p" in s], (name, imports)
        assert any(re.fullmatch(r"_ZGV\w+_logf", s) for s in vector), (name, imports)
        assert any(re.fullmatch(r"_ZGV\w+_log", s) for s in vector), (name, imports)
    else:
        assert vector == [] and {"log1pf", "log1p"} <= set(imports), (name, imports)
