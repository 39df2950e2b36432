"""How cellvi builds its kernels: flag sets retried until a library loads (and the outcome
cached), libmvec declared only where glibc has it (and -fveclib=libmvec for clang), status(),
one warning on the first fallback, the NB likelihood left to torch where its kernel has no
vector math, the kernels recorded with a model, and the switch that turns them off."""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import sys

import pytest
from tests.conftest import skip_or_fail

import cellvi as cv
from cellvi.utils import native
from cellvi.utils.session import versions

TOY = """
#ifdef CELLVI_TEST_BREAK
extern int cellvi_no_such_symbol(void); /* links (a shared library may), does not load */
int answer(void) { return cellvi_no_such_symbol(); }
#else
int answer(void) { return 42; }
#endif
"""


@pytest.fixture
def isolated(monkeypatch, tmp_path):
    """A fresh cache folder and a process that has loaded nothing; gcc as the compiler."""
    if shutil.which("gcc") is None:
        skip_or_fail("gcc is not installed")
    monkeypatch.setenv("CELLVI_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("CC", "gcc")
    monkeypatch.delenv("CELLVI_MARCH", raising=False)
    monkeypatch.setattr(cv.settings, "_native_kernels", True)
    native.reset()
    yield tmp_path
    native.reset()


def _toy(tmp_path, name="toy.c", text=TOY):
    source = tmp_path / name
    source.write_text(text)
    return source


def test_a_library_that_cannot_load_is_rebuilt_with_the_next_flags(isolated, monkeypatch):
    source = _toy(isolated)
    monkeypatch.setattr(native, "FLAG_SETS", (("-O2", "-DCELLVI_TEST_BREAK"), ("-O2",)))
    lib = native.load_kernel(source)
    assert lib is not None and lib.answer() == 42
    notes = list((isolated / "cache" / "kernels").glob("toy-*.failed"))
    assert len(notes) == 1 and "load error" in notes[0].read_text()
    assert "cellvi_no_such_symbol" in notes[0].read_text()
    assert not notes[0].with_suffix(".so").exists()  # the note stands for the broken build


def test_a_shipped_kernel_whose_first_build_cannot_load_is_rebuilt_and_correct(
    isolated, monkeypatch
):
    """The NB kernel's first build imports a function this C library lacks (as the vector
    log1p is missing before glibc 2.35): it is rebuilt with the next flag set, and the library
    that loads gives the reference's numbers. (That next set has no vector math: cellvi would
    use the torch likelihood, so the check forces the kernel.)"""
    from tests.native.kernel_checks import check_nb

    from cellvi.distributions import _native_likelihood

    first, *rest = native.FLAG_SETS
    missing = "-Dlog1pf=cellvi_no_such_log1pf"  # links (a shared library may), cannot load
    monkeypatch.setattr(native, "FLAG_SETS", ((*first, missing), *rest))
    source = native.KERNELS["nb_likelihood"]
    assert native.load_kernel(source) is not None
    assert native._outcomes[source][2] == native.flag_sets(source)[1]
    notes = list((isolated / "cache" / "kernels").glob("_nb_kernel-*.failed"))
    assert len(notes) == 1 and "cellvi_no_such_log1pf" in notes[0].read_text()
    monkeypatch.setattr(_native_likelihood, "USE_SCALAR_BUILD", True)
    check_nb()


def test_cached_outcome_is_reused_without_rebuilding(isolated, monkeypatch):
    source = _toy(isolated)
    monkeypatch.setattr(native, "FLAG_SETS", (("-O2", "-DCELLVI_TEST_BREAK"), ("-O2",)))
    assert native.load_kernel(source).answer() == 42
    native.reset()
    opened = []
    real_open = native._open
    monkeypatch.setattr(native, "_open", lambda t: opened.append(t) or real_open(t))
    real_run = subprocess.run
    compiles = []

    def run(cmd, *args, **kwargs):
        if "-shared" in cmd:
            compiles.append(cmd)
        return real_run(cmd, *args, **kwargs)

    monkeypatch.setattr(subprocess, "run", run)
    assert native.load_kernel(source).answer() == 42
    assert compiles == []  # nothing compiled again
    assert len(opened) == 1  # the broken build is not even opened again


def test_every_flag_set_failing_gives_the_last_reason(isolated, monkeypatch, caplog):
    source = _toy(isolated)
    monkeypatch.setattr(native, "FLAG_SETS", (("-O2", "-DCELLVI_TEST_BREAK"),))
    monkeypatch.setattr(native, "KERNELS", {"toy": source})
    with caplog.at_level(logging.INFO, logger="cellvi"):
        assert native.status() == {"toy": native._outcomes[source][1]}
    assert native.status()["toy"].startswith("load error:")
    assert "undefined symbol" in native.status()["toy"]


def test_status_names_the_reason_of_each_kernel(isolated, monkeypatch):
    good, broken = _toy(isolated), _toy(isolated, "broken.c", "int f(void) { return }\n")
    monkeypatch.setattr(native, "KERNELS", {"good": good, "broken": broken})
    got = native.status()
    assert got["good"] == "loaded"
    assert got["broken"].startswith("compile error:") and "broken.c" in got["broken"]
    assert "\n" not in got["broken"]  # the first line only
    native.reset()
    monkeypatch.setenv("CC", str(isolated / "no-such-cc"))
    assert native.status()["good"].startswith("compiler missing:")
    monkeypatch.setattr(cv.settings, "_native_kernels", False)
    assert native.status()["good"].startswith("disabled:")


def test_shipped_kernels_all_load_here(isolated):
    assert native.status() == dict.fromkeys(native.KERNELS, "loaded")


def test_first_fallback_warns_once_with_reason_and_cost(isolated, monkeypatch, caplog):
    a = _toy(isolated, "a.c", "int f(void) { return }\n")
    b = _toy(isolated, "b.c", "int g(void) { return }\n")
    with caplog.at_level(logging.INFO, logger="cellvi"):
        assert native.load_kernel(a) is None
        assert native.load_kernel(b) is None
    levels = [(r.levelno, r.getMessage()) for r in caplog.records if "C kernel" in r.getMessage()]
    assert [level for level, _ in levels] == [logging.WARNING, logging.INFO]
    assert "a.c" in levels[0][1] and "compile error" in levels[0][1]
    assert "slower" in levels[0][1] and "status()" in levels[0][1]


def test_kernels_that_start_no_threads_are_built_without_openmp():
    for name, source in native.KERNELS.items():
        sets = native.flag_sets(source)
        if native.uses_openmp(source):
            assert "-fopenmp" in sets[0], name
        else:
            assert all("-fopenmp" not in flags for flags in sets), name
    assert not native.uses_openmp(native.KERNELS["gather"])
    assert native.uses_openmp(native.KERNELS["nb_likelihood"])


def test_cellvi_march_replaces_native(monkeypatch):
    monkeypatch.setenv("CELLVI_MARCH", "x86-64-v2")
    flags = {f for fs in native.flag_sets(native.KERNELS["nb_likelihood"]) for f in fs}
    assert "-march=x86-64-v2" in flags and "-march=native" not in flags


def test_cc_may_carry_arguments(monkeypatch):
    monkeypatch.setenv("CC", f"{sys.executable} -m ziglang cc")
    assert native.find_compiler() == [shutil.which(sys.executable), "-m", "ziglang", "cc"]
    monkeypatch.setenv("CC", "/no/such/compiler --flag")
    assert native.find_compiler() is None


# ---------------------------------------------------------------------- glibc's vector math
_C_TOKENS = re.compile(r'/\*.*?\*/|//[^\n]*|"(?:\\.|[^"\\\n])*"', re.DOTALL)


def _code_only(text: str) -> str:
    """C source without its comments (newlines kept, so line numbers stay)."""

    def blank(match: re.Match) -> str:
        token = match.group()
        return token if token.startswith('"') else re.sub(r"[^\n]", " ", token)

    return _C_TOKENS.sub(blank, text)


def unguarded_simd(text: str) -> list[str]:
    """The code lines that use ``__simd__`` outside an ``#if CELLVI_GLIBC_AT_LEAST(...)``
    block (the innermost enclosing condition must be such a test; an ``#else`` of one is not)."""
    found, stack = [], []  # one entry per open #if: is its active branch a glibc guard?
    for line in _code_only(text).splitlines():
        directive = line.strip().replace("# ", "#")
        if directive.startswith(("#if", "#ifdef", "#ifndef")):
            stack.append("CELLVI_GLIBC_AT_LEAST(" in directive)
        elif directive.startswith("#elif"):
            stack[-1] = "CELLVI_GLIBC_AT_LEAST(" in directive
        elif directive.startswith("#else"):
            stack[-1] = False
        elif directive.startswith("#endif"):
            stack.pop()
        elif "__simd__" in line and not (stack and stack[-1]):
            found.append(line.strip())
    return found


def test_no_simd_declaration_without_a_glibc_version_guard():
    uses = 0
    for source in native.KERNELS.values():
        text = source.read_text()
        assert unguarded_simd(text) == [], source.name
        uses += _code_only(text).count("__simd__")
    assert uses >= 2  # the 2.22 and 2.35 declarations exist: the check above saw them


def test_the_simd_guard_check_can_fail():
    guarded = "#if CELLVI_GLIBC_AT_LEAST(2, 35)\n#define S __attribute__((__simd__))\n#endif\n"
    assert unguarded_simd(guarded) == []
    assert unguarded_simd("/* __simd__ in a comment */\n// and __simd__ here\n") == []
    bare = 'extern double log1p(double) __attribute__((__simd__("notinbranch")));\n'
    assert unguarded_simd(bare) == [bare.strip()]
    assert unguarded_simd("#ifdef __GLIBC__\n" + bare + "#endif\n") == [bare.strip()]
    in_else = guarded.replace("#endif", "#else\n" + bare.strip() + "\n#endif")
    assert unguarded_simd(in_else) == [bare.strip()]
    after = guarded + bare  # after the guarded block closed
    assert unguarded_simd(after) == [bare.strip()]


def _vector_symbols(lib) -> set[str]:
    done = subprocess.run(["nm", "-D", "--undefined-only", str(lib)], capture_output=True,
                          text=True, check=True)  # fmt: skip
    return set(re.findall(r"_ZGV\w+", done.stdout))


#: the functions glibc 2.22 gave libmvec variants (exp, log, pow, sin, cos, sincos; float too)
_GLIBC_2_22 = re.compile(r"_ZGV\w+_(exp|log|pow|sin|cos|sincos)f?$")


def test_vector_math_follows_the_glibc_version(isolated):
    if shutil.which("nm") is None:
        skip_or_fail("nm (binutils) is not installed")
    source = native.KERNELS["nb_likelihood"]
    compiler = native.find_compiler()
    base = ("-O3", "-march=x86-64-v3", "-fopenmp", "-fno-math-errno", "-fno-trapping-math")
    if os.uname().machine != "x86_64":
        skip_or_fail("libmvec is x86-64 only")
    old = native.compile_kernel(source, compiler, (*base, "-DCELLVI_ASSUME_GLIBC=228"))
    symbols = _vector_symbols(old)
    assert symbols, "GCC no longer vectorises exp / log: the test shows nothing"
    assert all(_GLIBC_2_22.match(s) for s in symbols), symbols  # no log1p / log1pf (2.35)
    # log1pf goes through the vector logf: the dense pass is vectorised, no log1p is called
    assert any(s.endswith("_logf") for s in symbols), symbols
    done = subprocess.run(["nm", "-D", "--undefined-only", str(old)], capture_output=True,
                          text=True, check=True)  # fmt: skip
    assert "log1p" not in done.stdout, done.stdout
    assert not _vector_symbols(native.compile_kernel(
        source, compiler, (*base, "-DCELLVI_ASSUME_GLIBC=221")))  # fmt: skip
    assert not _vector_symbols(native.compile_kernel(source, compiler, (*base,
                                                     "-DCELLVI_NO_VECTOR_MATH")))  # fmt: skip
    import platform

    libc, version = platform.libc_ver()
    if libc == "glibc" and tuple(map(int, version.split("."))) >= (2, 35):
        here = _vector_symbols(native.compile_kernel(source, compiler, base))
        assert any("log1p" in s for s in here), here  # used where glibc has it


# ------------------------------------------------- clang's vector math, builds without any
def test_clang_gets_libmvec_in_the_sets_with_vector_math(monkeypatch):
    nb, hidden = native.KERNELS["nb_likelihood"], native.KERNELS["hidden_layer"]
    monkeypatch.setattr(native, "_libmvec_path", lambda: "/lib/libmvec.so.1")
    monkeypatch.setattr(native, "_is_clang", lambda compiler: compiler == ("clang",))
    sets = native.flag_sets(nb, ["clang"])
    veclib = (*native.CLANG_VECLIB, "/lib/libmvec.so.1")
    with_veclib = [i for i, f in enumerate(sets) if set(veclib) <= set(f)]
    without = [i for i, f in enumerate(sets) if native._NO_VECTOR_MATH in f]
    assert with_veclib and without and max(with_veclib) < max(without)
    for flags in sets:  # every set either has vector math through -fveclib, or none
        assert (native._NO_VECTOR_MATH in flags) != (set(veclib) <= set(flags)), flags
    # the first set of each kind, OpenMP and not, comes with vector math
    assert set(veclib) <= set(sets[0]) and "-fopenmp" in sets[0]
    # GCC, a kernel without math calls, or no libmvec: the sets as they are
    assert native.flag_sets(nb, ["gcc"]) == native.flag_sets(nb)
    assert native.flag_sets(hidden, ["clang"]) == native.flag_sets(hidden)
    assert not native.uses_vector_math(hidden) and native.uses_vector_math(nb)
    monkeypatch.setattr(native, "_libmvec_path", lambda: None)
    assert native.flag_sets(nb, ["clang"]) == native.flag_sets(nb)


def test_which_compiler_is_clang():
    if shutil.which("gcc") is None:
        skip_or_fail("gcc is not installed")
    assert not native._is_clang((shutil.which("gcc"),))
    assert not native._is_clang(("/no/such/compiler",))
    zig = (sys.executable, "-m", "ziglang", "cc")
    try:
        works = subprocess.run([*zig, "--version"], capture_output=True, timeout=120).returncode
    except (OSError, subprocess.SubprocessError):
        works = 1
    if works != 0:
        skip_or_fail("ziglang is not installed (pip install ziglang; it is in the test extra)")
    assert native._is_clang(zig)


def test_libmvec_is_found_on_x86_64_linux():
    import platform

    libc, _ = platform.libc_ver()
    if not (
        sys.platform.startswith("linux") and platform.machine() == "x86_64" and libc == "glibc"
    ):
        skip_or_fail("libmvec is part of glibc on x86-64 Linux")
    path = native._libmvec_path()
    assert path and os.path.isabs(path) and os.path.basename(path).startswith("libmvec.so"), path


def test_libraries_to_link_follow_the_source(isolated, monkeypatch):
    """A library named in a flag set (libmvec's path) is linked after the source, where a
    linker that drops unneeded libraries (--as-needed) still sees what the source needs."""
    source = _toy(isolated)
    seen = []

    def run(cmd, *args, **kwargs):
        if "-shared" in cmd:
            seen.append(cmd)
        return subprocess.CompletedProcess(cmd, 1, "", "error: not really compiled")

    monkeypatch.setattr(subprocess, "run", run)
    with pytest.raises(native.KernelUnavailable):
        native.compile_kernel(source, ["cc"], ("-O2", "/lib/libmvec.so.1", "-DX", "-lfoo"))
    (cmd,) = seen
    at = cmd.index(str(source))
    assert cmd.index("-O2") < at and cmd.index("-DX") < at
    assert at < cmd.index("/lib/libmvec.so.1") < cmd.index("-lfoo") < cmd.index("-lm")


_TORCH_INSTEAD = "loaded without vector math; " + native.SLOWER_WITHOUT_VECTOR_MATH["nb_likelihood"]


def _likelihoods_run():
    """The ZINB and the protein mixture likelihoods, with gradients: the name of the autograd
    function of each (the kernel's or torch's)."""
    import torch
    from tests.native.kernel_checks import nb_data

    from cellvi.distributions._likelihood import zinb_log_likelihood
    from cellvi.distributions._mixture_likelihood import nb_mixture_log_likelihood

    x, logits, log_lib, theta, rho = (t.float() for t in nb_data())
    logits.requires_grad_()
    nb = zinb_log_likelihood(x, logits, log_lib, theta, rho,
                             log_x_factorial=torch.lgamma(x + 1).sum(1))  # fmt: skip
    y = torch.poisson(torch.full((6, 5), 30.0))
    back = torch.randn(6, 5, requires_grad=True)
    mixture = nb_mixture_log_likelihood(y, back, back + 1, torch.ones(5), torch.zeros(6, 5))
    return nb.grad_fn.name(), mixture.grad_fn.name()


@pytest.mark.parametrize(
    ("cc", "flag_sets", "vector"),
    [
        ("gcc", "last", False),  # -DCELLVI_NO_VECTOR_MATH, the last resort
        ("gcc -DCELLVI_ASSUME_GLIBC=221", "all", False),  # glibc before libmvec
        ("gcc -DCELLVI_ASSUME_GLIBC=228", "all", True),  # RHEL 8: log1p through the vector log
    ],
)
def test_likelihoods_use_torch_where_their_kernel_has_no_vector_math(
    isolated, monkeypatch, caplog, cc, flag_sets, vector
):
    from tests.native.kernel_checks import check_mixture, check_nb

    from cellvi.distributions import _native_likelihood

    if os.uname().machine != "x86_64" and "GLIBC" in cc:
        skip_or_fail("libmvec is x86-64 only")
    monkeypatch.setenv("CC", cc)
    if flag_sets == "last":
        monkeypatch.setattr(native, "FLAG_SETS", native.FLAG_SETS[-1:])
    source = native.KERNELS["nb_likelihood"]
    with caplog.at_level(logging.INFO, logger="cellvi"):
        got = native.status()
    assert got == {**dict.fromkeys(native.KERNELS, "loaded"),
                   "nb_likelihood": "loaded" if vector else _TORCH_INSTEAD}  # fmt: skip
    assert native.vector_math(source) is vector
    assert native.vector_math(native.KERNELS["dropout"]) is None  # says nothing: no math calls
    assert ("built without vector math" in caplog.text) != vector
    versions()  # forget earlier uses
    nb, mixture = _likelihoods_run()
    recorded = versions()["cellvi_native_kernels"]
    if vector:
        assert nb.startswith("_NativeNegBinomialLogLik") and mixture.startswith("_NativeMixture")
        assert recorded.startswith("nb_likelihood ("), recorded
        check_nb()
    else:
        assert not nb.startswith("_Native") and not mixture.startswith("_Native"), (nb, mixture)
        assert recorded == "none (torch path)"  # the kernel loaded but did not run
        # the build itself is correct, only slower than torch: forced, it passes the checks
        monkeypatch.setattr(_native_likelihood, "USE_SCALAR_BUILD", True)
        assert _likelihoods_run()[0].startswith("_NativeNegBinomialLogLik")
        check_nb()
        check_mixture()


# ------------------------------------------------------------------ what trained the model
def test_versions_record_the_kernels_used_since_the_last_model(isolated):
    import torch

    from cellvi.nn.dropout import Dropout

    versions()  # forget earlier uses
    Dropout(0.2).train()(torch.randn(8, 8))
    recorded = versions()["cellvi_native_kernels"]
    assert recorded.startswith("dropout (") and "gcc" in recorded and "-O3" in recorded
    assert versions()["cellvi_native_kernels"] == "none (torch path)"


def test_environment_switch_turns_every_kernel_off(monkeypatch):
    from cellvi._settings import CellviSettings

    monkeypatch.setenv("CELLVI_NATIVE_KERNELS", "0")
    off = CellviSettings()  # what `import cellvi` creates, under this environment
    monkeypatch.setattr(native, "_settings", lambda: off)
    assert set(native.status().values()) == {"disabled: cellvi.settings.native_kernels is False"}
    assert native.enabled_kernel_function(native.KERNELS["dropout"], "cellvi_dropout", ()) is None
    monkeypatch.setenv("CELLVI_NATIVE_KERNELS", "1")
    assert CellviSettings().native_kernels
