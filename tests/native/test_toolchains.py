"""Every kernel built for real by each toolchain cellvi supports, then checked against an
independent reference (kernel_checks.py): system gcc (-march=native, and the baseline
x86-64 and x86-64-v3 levels; and -march=native with the vector math of glibc 2.28, where log1p
goes through the vector log), zig's clang (no OpenMP, linked against glibc 2.28's symbols, with
-fveclib=libmvec on x86-64), and a compile-only cross build for aarch64. A missing tool skips with the reason, except on CI
(``CI=true``), where it fails."""

from __future__ import annotations

import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from tests.conftest import skip_or_fail
from tests.native.kernel_checks import CHECKS
from tests.native.zig import ZIG, ZIG_GLIBC_228, zig_works

import cellvi as cv
from cellvi.utils import native
from cellvi.utils.session import versions

X86 = platform.machine() in ("x86_64", "AMD64")
#: clang gets glibc's vector math here (cellvi.utils.native.CLANG_VECLIB)
CLANG_VECLIB = X86 and sys.platform.startswith("linux") and native._libmvec_path() is not None


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            return next((set(line.split()[2:]) for line in f if line.startswith("flags")), set())
    except OSError:
        return set()


#: name -> (environment, the compiler's name in its --version, flags every build must have)
TOOLCHAINS = {
    "gcc-native": ({"CC": "gcc"}, "gcc", ["-march=native"]),
    "gcc-x86-64": ({"CC": "gcc", "CELLVI_MARCH": "x86-64"}, "gcc", ["-march=x86-64"]),
    "gcc-x86-64-v3": ({"CC": "gcc", "CELLVI_MARCH": "x86-64-v3"}, "gcc", ["-march=x86-64-v3"]),
    # what GCC declares against glibc 2.28 (RHEL 8): vector exp and log, no vector log1p
    "gcc-glibc2.28": ({"CC": "gcc -DCELLVI_ASSUME_GLIBC=228"}, "gcc", ["-march=native"]),
    "zig-clang-glibc2.28": (
        {"CC": " ".join(ZIG_GLIBC_228)},
        "clang",
        ["-fopenmp-simd"],
    ),
}
#: the toolchains whose NB kernel calls libmvec (the vector math of glibc 2.22 at least)
VECTOR_MATH = {"gcc-native", "gcc-x86-64", "gcc-x86-64-v3", "gcc-glibc2.28"} | (
    {"zig-clang-glibc2.28"} if CLANG_VECLIB else set()
)


def _unavailable_reason(name: str) -> str | None:
    if name.startswith("gcc") and shutil.which("gcc") is None:
        return "gcc is not installed"
    if name.startswith("gcc-glibc") and not X86:
        return f"libmvec is for x86-64 CPUs, this is {platform.machine()}"
    if name.startswith("gcc-x86-64") and not X86:
        return f"-march={name[4:]} is for x86-64 CPUs, this is {platform.machine()}"
    if name == "gcc-x86-64-v3" and not {"avx2", "fma", "bmi2", "movbe"} <= _cpu_flags():
        return "this CPU cannot run x86-64-v3 code (no AVX2 / FMA / BMI2)"
    if name.startswith("zig") and not zig_works():
        return "ziglang is not installed (pip install ziglang; it is in the test extra)"
    return None


@pytest.fixture(scope="module", params=list(TOOLCHAINS))
def toolchain(request, tmp_path_factory):
    """Every kernel loaded from this toolchain's build (in a fresh cache folder)."""
    name = request.param
    reason = _unavailable_reason(name)
    if reason:
        skip_or_fail(f"{name}: {reason}")
    env, compiler_name, flags = TOOLCHAINS[name]
    with pytest.MonkeyPatch.context() as mp:
        for key in ("CC", "CELLVI_MARCH"):
            mp.delenv(key, raising=False)
        for key, value in env.items():
            mp.setenv(key, value)
        mp.setenv("CELLVI_CACHE_DIR", str(tmp_path_factory.mktemp(name)))
        mp.setattr(cv.settings, "_native_kernels", True)
        native.reset()
        try:
            yield name, native.status(), compiler_name, flags
        finally:
            native.reset()


def _library(kernel: str) -> Path:
    """The library this process loaded for ``kernel`` (built under the current $CC)."""
    source = native.KERNELS[kernel]
    built_with = native._outcomes[source][2]
    return native._target(source, native.find_compiler(), built_with)


def _imports(lib: Path) -> list[str]:
    done = subprocess.run(["nm", "-D", "--undefined-only", str(lib)], capture_output=True,
                          text=True, check=True)  # fmt: skip
    return [line.split()[-1] for line in done.stdout.splitlines() if line.strip()]


def test_every_kernel_loads_from_this_toolchain(toolchain):
    name, status, compiler_name, flags = toolchain
    assert status == dict.fromkeys(native.KERNELS, "loaded"), f"{name}: {status}"
    if shutil.which("nm") is None:
        skip_or_fail("nm (binutils) is not installed")
    zig, glibc_versions = name.startswith("zig"), set()
    for kernel, build in native.build_info().items():
        identity, built_with = build.rsplit("; ", 1)
        assert compiler_name in identity, f"{name}: {kernel} built by {identity}"
        words = built_with.split()
        assert set(flags) <= set(words), f"{name}: {kernel} built with {built_with}"
        veclib = zig and CLANG_VECLIB and native.uses_vector_math(native.KERNELS[kernel])
        assert ("-fveclib=libmvec" in words) == veclib, f"{name}: {kernel} built with {built_with}"
        threads = native.uses_openmp(native.KERNELS[kernel]) and not zig
        assert ("-fopenmp" in words) == threads, f"{name}: {kernel} built with {built_with}"
        imports = _imports(_library(kernel))
        # a threaded kernel really starts threads (OpenMP runtime), the others do not link it
        assert any(s.startswith("GOMP_parallel") for s in imports) == threads, (kernel, imports)
        if kernel == "nb_likelihood":  # vector exp / log (log1p through log where needed)
            vector = {s.split("@")[0] for s in imports if s.startswith("_ZGV")}
            assert bool(vector) == (name in VECTOR_MATH), (name, sorted(imports))
            assert native.vector_math(native.KERNELS[kernel]) == (name in VECTOR_MATH), name
            if name in VECTOR_MATH:
                assert any(s.endswith(("_logf", "_log1pf")) for s in vector), sorted(vector)
        if zig:  # linked against glibc 2.28's symbols: loads on RHEL 8 and later
            versions = {tuple(map(int, v.split("."))) for v in
                        re.findall(r"@GLIBC_(\d+(?:\.\d+)+)", " ".join(imports))}  # fmt: skip
            assert max(versions, default=(0,)) <= (2, 28), (kernel, sorted(versions))
            glibc_versions |= versions
    assert glibc_versions or not zig  # (the NB kernel imports exp, log, malloc: some are seen)


@pytest.mark.parametrize("kernel", list(CHECKS))
def test_kernel_matches_the_reference(toolchain, kernel):
    name, status, *_ = toolchain
    assert status[kernel] == "loaded", f"{name}: {status[kernel]}"
    for check in CHECKS[kernel]:
        check()


def test_aarch64_cross_compiles(tmp_path):
    """Compile-only: every kernel builds for aarch64 Linux with the portable flag sets (the
    fallback sets without -march=native; OpenMP is not in zig's clang)."""
    if not zig_works():
        skip_or_fail("ziglang is not installed (pip install ziglang; it is in the test extra)")
    for kernel, source in native.KERNELS.items():
        for flags in native.flag_sets(source):
            if "-march=native" in flags or "-fopenmp" in flags:
                continue
            out = tmp_path / f"{kernel}.so"
            cmd = [*ZIG, "-target", "aarch64-linux-gnu.2.28", *flags, "-fPIC", "-shared",
                   str(source), "-o", str(out), "-lm"]  # fmt: skip
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
            assert done.returncode == 0, f"{kernel} {flags}: {done.stderr[:2000]}"
            header = out.read_bytes()[:20]
            assert header[:4] == b"\x7fELF" and int.from_bytes(header[18:20], "little") == 183


def test_zig_clang_build_trains_scvi_like_the_torch_path(monkeypatch, tmp_path):
    """The acceptance check of the portable build: with $CC at zig's clang (no OpenMP) every
    kernel loads, and 5 epochs of scVI on the bundled PBMC cells reach the torch path's ELBO
    within 2 % (the two runs draw different dropout masks, so they are not the same run).
    Where clang gets no vector math (not x86-64 Linux) the NB likelihood runs in torch."""
    import numpy as np

    if not zig_works():
        skip_or_fail("ziglang is not installed (pip install ziglang; it is in the test extra)")
    adata = cv.datasets.pbmc_10x()
    rng = np.random.default_rng(0)
    adata = adata[np.sort(rng.choice(adata.n_obs, 1500, replace=False))].copy()
    cv.pp.setup_registry(adata, batch_key="batch")
    env, *_ = TOOLCHAINS["zig-clang-glibc2.28"]
    monkeypatch.setenv("CC", env["CC"])
    monkeypatch.delenv("CELLVI_MARCH", raising=False)
    monkeypatch.setenv("CELLVI_CACHE_DIR", str(tmp_path / "zig"))
    elbo = {}
    native.reset()
    try:
        for path in ("zig-clang", "torch"):
            monkeypatch.setattr(cv.settings, "_native_kernels", path != "torch")
            if path != "torch":
                want = dict.fromkeys(native.KERNELS, "loaded")
                if not CLANG_VECLIB:
                    want["nb_likelihood"] = (
                        "loaded without vector math; "
                        + (native.SLOWER_WITHOUT_VECTOR_MATH["nb_likelihood"])
                    )
                assert native.status() == want
            # forget the previous run's evaluation: what trained a model is recorded as the
            # kernels used since the last record (cv.tl.train does not reset it at its start)
            versions()
            run = cv.tl.scvi_train(adata, max_epochs=5, seed=0, train_size=1.0,
                                   accelerator="cpu", precision="32-true", copy=True)  # fmt: skip
            used = run.uns["scvi"]["versions"]["cellvi_native_kernels"]
            if path == "torch":
                assert used == "none (torch path)"
            else:
                assert "clang" in used and "-fopenmp-simd" in used, used
                names = set(re.findall(r"\w+", used))
                assert "hidden_layer" in names and ("nb_likelihood" in names) == CLANG_VECLIB, used
                assert ("-fveclib=libmvec" in used) == CLANG_VECLIB, used
            elbo[path] = cv.tl.scvi_evaluate(run)["elbo"]
            print(f"{path}: ELBO {elbo[path]:.3f}")
    finally:
        native.reset()
    assert elbo["torch"] < -100  # a real ELBO (per cell, 2,000 genes), not a degenerate one
    assert abs(elbo["zig-clang"] - elbo["torch"]) <= 0.02 * abs(elbo["torch"]), elbo
