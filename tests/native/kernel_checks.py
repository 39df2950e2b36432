"""Each compiled kernel against an independent reference: plain float64 torch formulas with
autograd (not cellvi's own torch implementation), scipy, and the random masks replayed from
the generators' definitions. One function per kernel; each runs with whatever build of the
kernels is loaded (see test_toolchains.py, which loads each compiler's build in turn)."""

from __future__ import annotations

import contextlib

import numpy as np
import scipy.sparse as sp
import scipy.stats
import torch

from cellvi.data import loader
from cellvi.distributions import _native_likelihood as native
from cellvi.distributions._likelihood import nb_log_likelihood, zinb_log_likelihood
from cellvi.distributions._mixture_likelihood import nb_mixture_log_likelihood
from cellvi.models import _scanvi_pairs
from cellvi.models.scanvi import SCANVIModule
from cellvi.nn import dropout as dropout_module
from cellvi.nn import fused_hidden
from cellvi.nn.dropout import Dropout

THETA_EPS = 1e-8  # what the likelihood adds to theta, in both implementations


def close(got, want, name, rtol=2e-5, scale=None):
    """float32 against float64, entry by entry, each relative to the largest reference entry
    of its row (a cell), so that one cell with huge counts does not loosen the check of the
    others; or relative to ``scale`` (for a sum: the sum of its terms' absolute values, which
    float32 rounding grows with)."""
    got, want = got.double(), want.double()
    assert got.shape == want.shape, f"{name}: shape {tuple(got.shape)}, want {tuple(want.shape)}"
    if scale is None:
        scale = want.abs() if want.dim() < 2 else want.abs().amax(-1, keepdim=True)
    allowed = rtol * scale.clamp_min(1.0).expand_as(want)
    err = (got - want).abs()
    bad = ~(err <= allowed)  # NaN counts as bad
    if bad.any():
        worst = int(torch.where(bad, err / allowed, 0.0).nan_to_num(float("inf")).argmax())
        at = tuple(int(k) for k in torch.unravel_index(torch.tensor(worst), want.shape))
        raise AssertionError(
            f"{name}: {int(bad.sum())} of {want.numel()} entries differ; worst at {at}: "
            f"{got[at].item():.9g}, want {want[at].item():.9g} (allowed {allowed[at].item():.3g})"
        )


@contextlib.contextmanager
def kernel_calls(module):
    """Record every call of the C functions that ``module`` takes from
    :func:`cellvi.utils.native.enabled_kernel_function`, as ``(name, args)``; the last
    argument of every threaded kernel is its thread count."""
    calls, real = [], module.enabled_kernel_function

    def spy(source, name, argtypes, restype=None, **kwargs):
        fn = real(source, name, argtypes, restype, **kwargs)
        if fn is None:
            return None

        def call(*args):
            calls.append((name, args))
            return fn(*args)

        return call

    module.enabled_kernel_function = spy
    try:
        yield calls
    finally:
        module.enabled_kernel_function = real


def with_threads(n: int, fn):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        assert torch.get_num_threads() == n
        return fn()
    finally:
        torch.set_num_threads(before)


# ---------------------------------------------------------------------------------- NB / ZINB
def nb_data(n=9, p=300, per_entry=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, p, generator=g, dtype=torch.float64) * 2
    logits[1, :5] = -200.0  # softmax underflows to 0 there (float32)
    log_lib = torch.rand(n, generator=g, dtype=torch.float64) * 4 + 4
    theta = torch.exp(torch.randn((n, p) if per_entry else (p,), generator=g, dtype=torch.float64))
    theta.view(-1)[:4] = torch.tensor([1e-4, 1e-3, 1e4, 50.0], dtype=torch.float64)  # near 0
    rho = torch.randn(n, p, generator=g, dtype=torch.float64) * 3
    mu = torch.softmax(logits, -1) * torch.exp(log_lib).unsqueeze(-1)
    x = torch.poisson(mu, generator=g)
    x[0] = 0.0  # an all-zero cell
    x[1, :5] = 0.0
    x[2, 7], x[3, 0], x[3, 1], x[4, 2] = 5000.0, 3.0, 2.0, 1e5  # large counts, extreme theta
    return x, logits, log_lib, theta, rho


def nb_reference(x, logits, log_lib, theta, rho):
    """Per-cell (ZI)NB log-likelihood in float64 from its textbook formula."""
    lib = torch.exp(log_lib if log_lib.dim() == 2 else log_lib.unsqueeze(-1))
    mu = torch.softmax(logits, -1) * lib
    th = (theta + THETA_EPS).expand_as(mu)
    log_th_mu = torch.log(th + mu)
    log_nb = (torch.lgamma(x + th) - torch.lgamma(th) - torch.lgamma(x + 1)
              + th * (torch.log(th) - log_th_mu) + x * (torch.log(mu) - log_th_mu))  # fmt: skip
    log_nb = torch.where(x > 0, log_nb, th * (torch.log(th) - log_th_mu))  # mu = 0: no NaN
    if rho is not None:  # pi = sigmoid(rho) of an extra zero
        zero = torch.logaddexp(-torch.nn.functional.softplus(-rho),
                               -torch.nn.functional.softplus(rho) + log_nb)  # fmt: skip
        log_nb = torch.where(x > 0, log_nb - torch.nn.functional.softplus(rho), zero)
    return log_nb.sum(-1)


def nb_sum_scales(x, logits, log_lib, theta, rho, weights):
    """The scales of the gradients that are sums (see :func:`close`): d log library sums over
    the genes of a cell, d theta of a per-gene theta over the cells."""
    n, p = x.shape
    lib = log_lib.detach().unsqueeze(-1).expand(n, p).clone().requires_grad_()
    th = theta.detach().expand(n, p).clone().requires_grad_()
    ref = nb_reference(x, logits.detach(), lib, th, None if rho is None else rho.detach())
    d_lib, d_th = torch.autograd.grad((ref * weights).sum(), [lib, th])
    return [None, d_lib.abs().sum(1), d_th.abs().sum(0) if theta.dim() == 1 else None, None]


def _kernel_nb(x, leaves, zero_inflated, sparse):
    lx, ll, th = leaves[:3]
    lxf = torch.lgamma(x + 1).sum(1)
    if sparse:
        rows, cols = torch.nonzero(x, as_tuple=True)
        kw = {"nz_rows": rows, "nz_cols": cols, "nz_values": x[rows, cols]}
        x = None
    else:
        kw = {}
    if zero_inflated:
        return zinb_log_likelihood(x, lx, ll, th, leaves[3], log_x_factorial=lxf, **kw)
    return nb_log_likelihood(x, lx, ll, th, log_x_factorial=lxf, **kw)


_NB_D_LOGITS = (
    13  # the kernel's d_logits argument: NULL (None) selects the loop without derivatives
)


def check_nb():
    assert native.available(), "the NB kernel is not loaded"
    for zero_inflated in (True, False):
        for per_entry in (False, True):
            x, logits, log_lib, theta, rho = nb_data(per_entry=per_entry)
            rho = rho if zero_inflated else None
            ref_leaves = [t.clone().requires_grad_() for t in (logits, log_lib, theta, rho)
                          if t is not None]  # fmt: skip
            ref = nb_reference(x, *ref_leaves[:3], ref_leaves[3] if zero_inflated else None)
            weights = torch.linspace(0.5, 2.0, len(ref), dtype=torch.float64)
            ref_grads = torch.autograd.grad((ref * weights).sum(), ref_leaves)
            scales = nb_sum_scales(x, *ref_leaves[:3], rho, weights)
            ref = ref.detach()
            case = f"zi={zero_inflated}, per_entry={per_entry}"
            for sparse in (False, True):
                run = (x.float(), zero_inflated, sparse)
                leaves = [t.float().requires_grad_() for t in ref_leaves]
                with kernel_calls(native) as calls:
                    out = _kernel_nb(run[0], leaves, *run[1:])
                    grads = torch.autograd.grad((out * weights.float()).sum(), leaves)
                assert out.grad_fn.name().startswith("_NativeNegBinomialLogLik")
                assert calls[0][1][_NB_D_LOGITS] is not None  # derivatives computed
                close(out, ref, f"log-likelihood ({case}, sparse={sparse})")
                for name, g, w, sc in zip(("logits", "log library", "theta", "rho"), grads,
                                          ref_grads, scales, strict=False):  # fmt: skip
                    close(g, w, f"d {name} ({case}, sparse={sparse})", scale=sc)
                # the loop without derivatives: under no_grad with inputs that require grad,
                # and in grad mode with inputs that do not
                plain = [t.detach() for t in leaves]
                with kernel_calls(native) as calls, torch.no_grad():
                    quiet = _kernel_nb(run[0], leaves, *run[1:])
                loose = _kernel_nb(run[0], plain, *run[1:])
                assert len(calls) == 1 and calls[0][1][_NB_D_LOGITS] is None
                assert loose.grad_fn is None
                close(quiet, ref, f"log-likelihood under no_grad ({case})")
                close(loose, ref, f"log-likelihood, no input requires grad ({case})")
                # two threads: the kernel is told so, and gives the reference's numbers
                with kernel_calls(native) as calls:
                    two = with_threads(2, lambda lv=leaves, r=run: _kernel_nb(r[0], lv, *r[1:]))
                    two_grads = torch.autograd.grad((two * weights.float()).sum(), leaves)
                assert calls[0][1][-1] == 2, "the NB kernel did not get two threads"
                close(two, ref, f"log-likelihood on two threads ({case})")
                for g, w, sc in zip(two_grads, ref_grads, scales, strict=False):
                    close(g, w, f"gradient on two threads ({case})", scale=sc)
                assert torch.equal(two.detach(), out.detach()), "NB: threads changed the result"
    # scipy for the values of the plain NB at a few cells
    x, logits, log_lib, theta, _ = nb_data(n=6, p=40, seed=3)
    mu = (torch.softmax(logits, -1) * torch.exp(log_lib).unsqueeze(-1)).numpy()
    th = theta.numpy() + THETA_EPS
    want = scipy.stats.nbinom.logpmf(x.numpy(), th, th / (th + mu)).sum(1)
    lxf = torch.lgamma(x.float() + 1).sum(1)
    got = nb_log_likelihood(x.float(), logits.float(), log_lib.float(), theta.float(),
                            log_x_factorial=lxf)  # fmt: skip
    close(got, torch.from_numpy(want), "NB against scipy")


# -------------------------------------------------------------------------- protein mixture
def mixture_reference(y, log_back, log_fore, theta, rho, mask):
    def component(m):
        log_den = torch.logaddexp(torch.log(theta), m)  # log(theta + mu)
        return (torch.lgamma(y + theta) - torch.lgamma(theta) - torch.lgamma(y + 1)
                + theta * (torch.log(theta) - log_den) + y * (m - log_den))  # fmt: skip

    sp_ = torch.nn.functional.softplus
    lp = torch.logaddexp(component(log_back) - sp_(-rho), component(log_fore) - sp_(rho))
    return (lp * (1.0 if mask is None else mask)).sum(-1)


_MIXTURE_D_BACK = 10  # the kernel's first derivative argument (NULL: no derivatives)


def check_mixture():
    g = torch.Generator().manual_seed(5)
    n, p = 70, 14
    y = torch.poisson(torch.rand(n, p, generator=g, dtype=torch.float64) * 300)
    y[0] = 0.0
    y[1, 0] = 20000.0
    log_back = torch.randn(n, p, generator=g, dtype=torch.float64) + 2
    log_fore = log_back + torch.rand(n, p, generator=g, dtype=torch.float64) * 3
    rho = torch.randn(n, p, generator=g, dtype=torch.float64) * 2
    mask = (torch.rand(n, p, generator=g) > 0.2).double()
    for per_entry in (False, True):
        theta = torch.exp(torch.randn((n, p) if per_entry else (p,), generator=g,
                                      dtype=torch.float64))  # fmt: skip
        theta.view(-1)[0] = 1e-3  # near 0
        for m in (None, mask):
            ref_leaves = [t.clone().requires_grad_() for t in (log_back, log_fore, theta, rho)]
            ref = mixture_reference(y, *ref_leaves, m)
            ref_grads = torch.autograd.grad(ref.sum(), ref_leaves)
            scales = [None] * 4
            if not per_entry:  # d theta sums over the cells
                full = theta.expand(n, p).clone().requires_grad_()
                (d_full,) = torch.autograd.grad(
                    mixture_reference(y, log_back, log_fore, full, rho, m).sum(), [full]
                )
                scales[2] = d_full.abs().sum(0)
            ref = ref.detach()
            leaves = [t.float().requires_grad_() for t in ref_leaves]
            mf = None if m is None else m.float()
            case = f"per_entry={per_entry}, mask={m is not None}"
            with kernel_calls(native) as calls:
                out = nb_mixture_log_likelihood(y.float(), *leaves, mf)
            assert out.grad_fn.name().startswith("_NativeMixtureLogLik")
            assert calls[0][1][_MIXTURE_D_BACK] is not None
            close(out, ref, f"mixture log-likelihood ({case})")
            for name, gr, w, sc in zip(("back", "fore", "theta", "rho"),
                                       torch.autograd.grad(out.sum(), leaves), ref_grads,
                                       scales, strict=True):  # fmt: skip
                close(gr, w, f"mixture d {name} ({case})", scale=sc)
            with kernel_calls(native) as calls:
                with torch.no_grad():
                    quiet = nb_mixture_log_likelihood(y.float(), *leaves, mf)
                loose = nb_mixture_log_likelihood(y.float(), *(t.detach() for t in leaves), mf)
            assert [c[1][_MIXTURE_D_BACK] for c in calls] == [None, None]
            close(quiet, ref, f"mixture under no_grad ({case})")
            close(loose, ref, f"mixture, no input requires grad ({case})")
            serial = native._SERIAL_ENTRIES
            native._SERIAL_ENTRIES = 0  # below it one thread scores everything
            try:
                with kernel_calls(native) as calls:
                    two = with_threads(2, lambda lv=leaves, mm=mf: nb_mixture_log_likelihood(
                        y.float(), *lv, mm))  # fmt: skip
                    two_grads = torch.autograd.grad(two.sum(), leaves)
            finally:
                native._SERIAL_ENTRIES = serial
            assert calls[0][1][-1] == 2, "the mixture kernel did not get two threads"
            close(two, ref, f"mixture on two threads ({case})")
            for gr, w, sc in zip(two_grads, ref_grads, scales, strict=True):
                close(gr, w, f"mixture gradient on two threads ({case})", scale=sc)
            assert torch.equal(two.detach(), out.detach()), "mixture: threads changed the result"


# ------------------------------------------------------------------------------------ dropout
def splitmix64(z: np.ndarray) -> np.ndarray:
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def dropout_replay(n: int, seed: int, threshold: int, scale: float) -> torch.Tensor:
    """The scaled mask ``_dropout_kernel.c`` draws, from its definition (numpy uint64)."""
    words = np.arange((n + 3) // 4, dtype=np.uint64)
    with np.errstate(over="ignore"):
        bits = splitmix64(np.uint64(seed) + words * np.uint64(0x9E3779B97F4A7C15))
    u16 = np.stack([(bits >> np.uint64(16 * k)) & np.uint64(0xFFFF) for k in range(4)], 1)
    keep = u16.reshape(-1)[:n] >= threshold
    return torch.from_numpy(keep.astype(np.float32)) * scale


def next_seed(torch_seed: int) -> int:
    torch.manual_seed(torch_seed)
    return int(torch.empty((), dtype=torch.int64).random_())


def check_dropout():
    dropout = Dropout(0.3).train()
    x = torch.randn(301, 257).requires_grad_()  # not a multiple of 4: the last, partial word
    torch.manual_seed(11)
    out = dropout(x)
    assert out.grad_fn.name().startswith("_NativeDropout"), "the dropout kernel is not used"
    mask = dropout_replay(x.numel(), next_seed(11), dropout.keep_threshold, dropout.scale)
    mask = mask.view_as(x)
    assert torch.equal(out.detach(), x.detach() * mask), "dropout: output is not x * mask"
    (grad,) = torch.autograd.grad(out, x, torch.ones_like(out))
    assert torch.equal(grad, mask)
    kept = (mask > 0).float()
    assert abs(kept.mean().item() - 0.7) < 0.01  # 77k entries: 4 standard errors ~ 0.007
    torch.manual_seed(11)
    with torch.no_grad():
        assert torch.equal(dropout(x), out.detach()), "dropout under no_grad"
    for n in (1, 2, 3, 5, 6, 7, 9, 10, 11):  # every length of the last, partial word
        for seed in range(6):
            torch.manual_seed(seed)
            small = dropout(torch.ones(n))
            want = dropout_replay(n, next_seed(seed), dropout.keep_threshold, dropout.scale)
            assert torch.equal(small, want), f"dropout of {n} entries, seed {seed}"
    torch.manual_seed(11)
    with kernel_calls(dropout_module) as calls:
        two = with_threads(2, lambda: dropout(x).detach())
    assert calls[0][1][-1] == 2, "the dropout kernel did not get two threads"
    assert torch.equal(two, out.detach()), "dropout: two threads changed the mask"


# ------------------------------------------------------------------------------ hidden layer
_M32 = 0xFFFFFFFF


def _mix32(v: np.ndarray) -> np.ndarray:
    v = v.astype(np.uint64) & _M32
    v ^= v >> 16
    v = (v * 0x7FEB352D) & _M32
    v ^= v >> 15
    v = (v * 0x846CA68B) & _M32
    v ^= v >> 16
    return v


def hidden_mask_replay(n: int, d: int, seed: int, threshold: int) -> torch.Tensor:
    """The keep mask of ``_hidden_kernel.c`` from its definition (numpy)."""
    i = np.arange(n, dtype=np.uint64)
    key = _mix32(_mix32(i ^ np.uint64(seed & _M32)) + (i >> np.uint64(32)) + np.uint64(seed >> 32))
    j = np.arange(d, dtype=np.uint64)
    u = _mix32(key[:, None] + ((j * np.uint64(0x9E3779B9)) & np.uint64(_M32))[None, :]) >> 16
    return torch.from_numpy(u >= threshold)


def _norm(d: int):
    torch.manual_seed(0)
    norm = torch.nn.BatchNorm1d(d, momentum=0.01, eps=1e-3)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-0.5, 0.5)
        norm.running_mean.uniform_(-1, 1)
        norm.running_var.uniform_(0.5, 2)
    return norm


def check_hidden():
    n, d, p = 300, 200, 0.25
    torch.manual_seed(1)
    a = (torch.randn(n, d) * 3 + 1).requires_grad_()
    tables = [torch.randn(k, d, requires_grad=True) for k in (3, 5)]
    codes = [torch.randint(0, k, (n,)) for k in (3, 5)]
    dropout = Dropout(p).train()
    threshold, scale = dropout.keep_threshold, dropout.scale
    keep = hidden_mask_replay(n, d, next_seed(7), threshold)
    assert torch.equal(keep, fused_hidden.dropout_mask(n, d, next_seed(7), threshold))
    assert abs(keep.float().mean().item() - (1 - p)) < 0.01
    upstream = torch.randn(n, d)

    def run(serial_entries: int):
        norm = _norm(d)
        saved = fused_hidden.SERIAL_ENTRIES
        fused_hidden.SERIAL_ENTRIES = serial_entries
        try:  # the backward step reads it too
            torch.manual_seed(7)
            out = fused_hidden.hidden_step(a, tables, codes, norm, dropout)
            grads = torch.autograd.grad(out, [a, norm.weight, norm.bias, *tables], upstream)
        finally:
            fused_hidden.SERIAL_ENTRIES = saved
        return out.detach(), grads, norm

    out, grads, norm = run(1 << 30)
    # float64 reference: the unfused layer with torch's batch norm and the replayed mask
    leaves = [t.detach().double().requires_grad_() for t in (a, *tables)]
    ref_norm = _norm(d).double()
    v = leaves[0] + sum(t[c] for t, c in zip(leaves[1:], codes, strict=True))
    ref = torch.relu(ref_norm(v)) * keep.double() * scale
    close(out, ref.detach(), "hidden layer output", rtol=1e-5)
    want = torch.autograd.grad(ref, [leaves[0], ref_norm.weight, ref_norm.bias, *leaves[1:]],
                               upstream.double())  # fmt: skip
    for name, g, w in zip(("a", "gamma", "beta", "table 0", "table 1"), grads, want, strict=True):
        close(g, w, f"hidden layer d {name}", rtol=1e-4)
    for buf in ("running_mean", "running_var"):
        close(getattr(norm, buf), getattr(ref_norm, buf), buf, rtol=1e-5)
    with torch.no_grad():
        fresh = _norm(d)  # (seeds torch itself)
        torch.manual_seed(7)
        quiet = fused_hidden.hidden_step(a, tables, codes, fresh, dropout)
    close(quiet, ref.detach(), "hidden layer output under no_grad", rtol=1e-5)
    # more than one thread (a serial threshold of 0 hands every thread the layer)
    with kernel_calls(fused_hidden) as calls:
        two = with_threads(2, lambda: run(0))
    threads = {name: args[-1] for name, args in calls}
    assert threads == {"cellvi_hidden_forward": 2, "cellvi_hidden_backward": 2}, threads
    assert torch.equal(two[0], out), "hidden layer: two threads changed the output"
    for g, h in zip(grads, two[1], strict=True):
        assert torch.equal(g, h), "hidden layer: two threads changed a gradient"


# ------------------------------------------------------------------------------------ gather
def check_gather():
    rng = np.random.default_rng(2)
    dense = np.floor(rng.random((80, 50)) * 1000).astype(np.float32)
    dense[rng.random(dense.shape) > 0.2] = 0.0
    dense[5] = 0.0  # an empty row
    X = sp.csr_matrix(dense)
    rows = np.array([7, 5, 0, 79, 5, 7])
    for dtype, torch_dtype in ((np.int32, torch.int32), (np.int64, torch.int64)):
        kernels = loader._gather_kernels(torch_dtype)
        assert kernels is not None, "the gather kernel is not loaded"
        count, fill = kernels
        indptr = torch.from_numpy(X.indptr.astype(np.int64))
        indices = torch.from_numpy(X.indices.astype(dtype))
        values = torch.from_numpy(X.data)
        r = torch.from_numpy(rows)
        out_indptr = torch.empty(len(rows) + 1, dtype=torch.int64)
        nnz = count(len(rows), r.data_ptr(), X.shape[0], indptr.data_ptr(), X.nnz,
                    out_indptr.data_ptr())  # fmt: skip
        sub = X[rows].tocoo()
        assert nnz == sub.nnz
        assert out_indptr.tolist() == X[rows].indptr.tolist()
        local, cols = torch.empty(nnz, dtype=torch.int64), torch.empty(nnz, dtype=torch.int64)
        vals, totals = torch.empty(nnz), torch.empty(len(rows))
        fill(len(rows), r.data_ptr(), indptr.data_ptr(), indices.data_ptr(), values.data_ptr(),
             out_indptr.data_ptr(), local.data_ptr(), cols.data_ptr(), vals.data_ptr(),
             totals.data_ptr())  # fmt: skip
        assert local.tolist() == sub.row.tolist() and cols.tolist() == sub.col.tolist()
        assert vals.tolist() == sub.data.tolist()
        assert totals.tolist() == np.asarray(X[rows].sum(1)).ravel().tolist()
        bad = torch.tensor([0, 80])
        assert count(2, bad.data_ptr(), X.shape[0], indptr.data_ptr(), X.nnz,
                     out_indptr.data_ptr()) == -1  # fmt: skip


# ------------------------------------------------------------------------------ scANVI pairs
def _scanvi_pairs_reference(w, z1, cells, ys, eps, keep, scale, stats):
    """float64 formulas: both networks, the draw, the two per-pair terms (autograd leaves
    ``w``: 9 weights per network, as ``_scanvi_pairs._weights`` orders them)."""

    def network(x, weights, mask, running):
        w1, b1, table, gamma, beta, wm, bm, wv, bv = weights
        v = x @ w1.T + b1 + table[ys]
        mean, var = v.mean(0), v.var(0, unbiased=False)
        running.append((mean.detach(), v.var(0).detach()))
        y = gamma * (v - mean) / torch.sqrt(var + 1e-3) + beta
        h = torch.relu(y) * mask
        return h @ wm.T + bm, torch.exp(h @ wv.T + bv) + 1e-4

    m2, s2e = network(z1[cells], w[:9], keep.double() * scale, stats)
    z2 = m2 + s2e.sqrt() * eps
    kl = 0.5 * (s2e + m2.square() - 1 - s2e.log()).sum(-1)
    m1, s2d = network(z2, w[9:], 1.0, stats)
    log_p = -0.5 * (np.log(2 * np.pi) + s2d.log() + (z1[cells] - m1).square() / s2d).sum(-1)
    return log_p, kl


def check_scanvi_pairs():
    # widths off the kernel's tiles (hidden 40, latent 6) and a batch of rows off its blocks
    torch.manual_seed(3)
    module = SCANVIModule(20, unlabeled_code=5, n_labels=6, n_hidden=40, n_latent=6).train()
    for norm in (module.z2_encoder.body.norms[0], module.z1_decoder.body.norms[0]):
        with torch.no_grad():
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.uniform_(-0.5, 0.5)
            norm.running_var.uniform_(0.5, 2)
    n, classes = 37, torch.full((37,), -1)
    classes[:6] = torch.tensor([0, 1, 2, 3, 4, 2])
    _, _, cells, ys = module._class_pairs(classes)
    z1 = (torch.randn(n, 6) * 1.5).requires_grad_()
    encoders = (module.z2_encoder, module.z1_decoder)
    assert _scanvi_pairs.applies(*encoders, z1, cells.numel())
    weights = [*_scanvi_pairs._weights(encoders[0]), *_scanvi_pairs._weights(encoders[1])]
    running0 = [(nm.running_mean.clone(), nm.running_var.clone()) for nm in
                (encoders[0].body.norms[0], encoders[1].body.norms[0])]  # fmt: skip
    upstream = torch.randn(2, cells.numel())

    def draw():
        return torch.randn(5 * n, 6)[ys * n + cells]

    torch.manual_seed(11)
    log_p, kl = _scanvi_pairs.pair_terms(*encoders, z1, cells, ys, draw)
    grads = torch.autograd.grad((log_p * upstream[0]).sum() + (kl * upstream[1]).sum(), [z1, *weights])  # fmt: skip
    # the generator's draws replayed: the first network's dropout seed, the normal draws, the
    # second network's seed; the mask from _hidden_kernel.c's hash
    torch.manual_seed(11)
    seed = int(torch.empty((), dtype=torch.int64).random_())
    eps = draw().double()
    dropout = encoders[0].body.dropout
    keep = hidden_mask_replay(cells.numel(), 40, seed, dropout.keep_threshold)
    leaves = [t.detach().double().requires_grad_() for t in (z1, *weights)]
    stats = []
    ref_log_p, ref_kl = _scanvi_pairs_reference(leaves[1:], leaves[0], cells, ys, eps, keep, dropout.scale, stats)  # fmt: skip
    close(log_p, ref_log_p.detach(), "scANVI pairs log p(z1 | z2, y)", rtol=1e-5)
    close(kl, ref_kl.detach(), "scANVI pairs KL(q(z2) || p(z2))", rtol=1e-5)
    want = torch.autograd.grad((ref_log_p * upstream[0].double()).sum() + (ref_kl * upstream[1].double()).sum(), leaves)  # fmt: skip
    names = ["z1", *(f"{net} {w}" for net in ("q(z2)", "p(z1)") for w in _scanvi_pairs._WEIGHTS)]
    for name, g, w in zip(names, grads, want, strict=True):
        close(g, w, f"scANVI pairs d {name}", rtol=1e-4)
    for norm, (mean0, var0), (mean, var) in zip((e.body.norms[0] for e in encoders), running0, stats, strict=True):  # fmt: skip
        close(norm.running_mean, 0.99 * mean0.double() + 0.01 * mean, "running mean", rtol=1e-5)
        close(norm.running_var, 0.99 * var0.double() + 0.01 * var, "running var", rtol=1e-5)
        assert int(norm.num_batches_tracked) == 1


CHECKS = {
    "nb_likelihood": (check_nb, check_mixture),
    "hidden_layer": (check_hidden,),
    "dropout": (check_dropout,),
    "gather": (check_gather,),
    "scanvi_pairs": (check_scanvi_pairs,),
}
