"""The (zero-inflated) NB training likelihood through the compiled C kernel ``_nb_kernel.c``.

Same inputs and outputs as :class:`cellvi.distributions._likelihood._NegBinomialLogLik`: the
full normalised log-likelihood per cell from decoder logits, and the gradients with respect to
the logits, the log library size, the inverse dispersion and the zero-inflation logits. The
kernel makes one pass over each cell (the torch version makes about twenty-five full passes
over the ``cells x genes`` matrix per step) and computes the derivatives in the same pass, so
the backward step only scales them by the upstream gradient.

The same file scores the protein background/foreground mixture
(:func:`nb_mixture_log_likelihood_native`, the values and gradients of
:mod:`._mixture_likelihood`) in float64 in one pass.

Used for float32 CPU tensors when :attr:`cellvi.settings.native_kernels` is on and the kernel
could be built (:func:`cellvi.utils.native.enabled_kernel_function`); everything else (CUDA, float64, no
compiler) uses the torch version, and so do both likelihoods where the kernel was built
without vector math (:data:`USE_SCALAR_BUILD`).
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import torch

from ..utils.native import enabled_kernel_function, threads_for
from ..utils.native import pointer as _ptr

_SOURCE = Path(__file__).with_name("_nb_kernel.c")
_P = ctypes.c_void_p


_ARGTYPES = (ctypes.c_int64, ctypes.c_int64, _P, _P, _P, ctypes.c_int, _P, _P, _P, _P, _P, _P,
             _P, _P, _P, _P, _P, ctypes.c_int)  # fmt: skip


#: use the kernels of this file also where they were built without vector math (clang without
#: libmvec, a glibc before 2.22, CELLVI_NO_VECTOR_MATH): there the NB and the protein mixture
#: kernels are slower than the torch implementations (docs/performance.md), so off but for
#: tests and benchmarks
USE_SCALAR_BUILD = False


def _kernel():
    return enabled_kernel_function(
        _SOURCE, "cellvi_nb_loglik", _ARGTYPES, ctypes.c_int, scalar_ok=USE_SCALAR_BUILD
    )


def available() -> bool:
    """Whether the compiled kernel can be used in this process (builds it on first call)."""
    return _kernel() is not None


def _float32_cpu(tensors) -> bool:
    return all(t is None or (t.device.type == "cpu" and t.dtype == torch.float32) for t in tensors)


def usable(*tensors: torch.Tensor | None) -> bool:
    """Whether the kernel applies to these inputs: float32 on the CPU, kernel available."""
    return _float32_cpu(tensors) and available()


def _indptr(rows: torch.Tensor, n_cells: int) -> torch.Tensor:
    indptr = torch.zeros(n_cells + 1, dtype=torch.int64)
    torch.cumsum(torch.bincount(rows, minlength=n_cells), 0, out=indptr[1:])
    return indptr


def _run(logits, log_library, theta, rho, rows, cols, values, log_x_factorial, *, grad: bool):
    n_cells, n_genes = logits.shape
    per_entry = theta.dim() == 2
    out = torch.empty(n_cells)
    d_logits = d_lib = d_theta = d_rho = None
    if grad:
        d_logits, d_lib = torch.empty(n_cells, n_genes), torch.empty(n_cells)
        d_theta = torch.empty(n_cells, n_genes)
        d_rho = torch.empty(n_cells, n_genes) if rho is not None else None
    for attempt in range(2):
        indptr = _indptr(rows, n_cells)
        status = _kernel()(
            n_cells, n_genes, _ptr(logits), _ptr(log_library), _ptr(theta), int(per_entry),
            _ptr(rho), _ptr(indptr), _ptr(rows), _ptr(cols), _ptr(values),
            _ptr(log_x_factorial), _ptr(out), _ptr(d_logits), _ptr(d_lib), _ptr(d_theta),
            _ptr(d_rho), torch.get_num_threads(),
        )  # fmt: skip
        if status == 0:
            return out, d_logits, d_lib, d_theta, d_rho
        if status & 2:
            raise MemoryError("The NB likelihood kernel could not allocate its scratch memory.")
        if attempt == 0:  # non-zero entries not grouped by cell: sort them, once
            order = torch.argsort(rows, stable=True)
            rows, cols, values = rows[order], cols[order], values[order]
    raise ValueError("Non-zero count coordinates are out of range for the count matrix.")


def _upstream_times(grad, derivs, needs, summed: int | None) -> list:
    """The backward step of a per-cell log-likelihood whose kernel stored its derivatives:
    each derivative times its cell's upstream gradient (``None`` where none is needed); the
    one at index ``summed`` belongs to a parameter shared by all cells and is summed over them."""
    out = []
    for i, (d, need) in enumerate(zip(derivs, needs, strict=True)):
        if not need:
            out.append(None)
        elif i == summed:
            out.append(grad @ d)
        else:
            out.append(d * (grad if d.dim() == 1 else grad.unsqueeze(-1)))
    return out


class _NativeNegBinomialLogLik(torch.autograd.Function):
    """Per-cell (zero-inflated) NB log-likelihood from decoder logits, computed by the C kernel
    together with its derivatives."""

    @staticmethod
    def forward(ctx, logits, log_library, theta, rho, rows, cols, x_nz, log_x_factorial, grad_mode):
        inputs = (logits, log_library, theta, rho)
        # inside forward grad mode is always off, and requires_grad stays True under no_grad:
        # the caller's grad mode says whether the derivatives will be used
        grad = grad_mode and any(t is not None and t.requires_grad for t in inputs)
        out, d_logits, d_lib, d_theta, d_rho = _run(
            *(t.contiguous() if t is not None else None for t in inputs),
            rows.contiguous(), cols.contiguous(), x_nz.contiguous(),
            log_x_factorial.contiguous(), grad=grad,
        )  # fmt: skip
        ctx.per_gene = theta.dim() == 1
        ctx.save_for_backward(d_logits, d_lib, d_theta, d_rho)
        return out

    @staticmethod
    def backward(ctx, grad):
        summed = 2 if ctx.per_gene else None  # theta of shape (n_genes,)
        grads = _upstream_times(grad, ctx.saved_tensors, ctx.needs_input_grad[:4], summed)
        return *grads, None, None, None, None, None


def nb_log_likelihood_native(logits, log_library, theta, rho, rows, cols, x_nz, log_x_factorial):
    """Per-cell log-likelihood (NB when ``rho`` is ``None``, else ZINB) through the kernel."""
    return _NativeNegBinomialLogLik.apply(
        logits, log_library, theta, rho, rows, cols, x_nz, log_x_factorial, torch.is_grad_enabled()
    )


_MIXTURE_ARGTYPES = (ctypes.c_int64, ctypes.c_int64, _P, _P, _P, _P, ctypes.c_int, _P, _P, _P,
                     _P, _P, _P, _P, ctypes.c_int)  # fmt: skip
#: entries below which one thread scores the whole matrix (waking threads costs more)
_SERIAL_ENTRIES = 1 << 14


def _mixture_kernel():
    return enabled_kernel_function(
        _SOURCE, "cellvi_nb_mixture_loglik", _MIXTURE_ARGTYPES, ctypes.c_int,
        scalar_ok=USE_SCALAR_BUILD,
    )  # fmt: skip


class _NativeMixtureLogLik(torch.autograd.Function):
    """The per-cell protein mixture log-likelihood and its derivatives, from the C kernel."""

    @staticmethod
    def forward(ctx, y, log_back, log_fore, theta, rho, mask, grad_mode):
        n, p = log_back.shape
        per_entry = theta.dim() == 2
        inputs = (log_back, log_fore, theta, rho)
        grad = grad_mode and any(t.requires_grad for t in inputs)  # as in the NB Function
        y, log_back, log_fore, theta, rho = (t.contiguous() for t in (y, *inputs))
        mask = mask.contiguous() if mask is not None else None
        out = torch.empty(n)
        derivs = [torch.empty(n, p) for _ in range(4)] if grad else [None] * 4
        status = _mixture_kernel()(
            n, p, _ptr(y), _ptr(log_back), _ptr(log_fore), _ptr(theta), int(per_entry),
            _ptr(rho), _ptr(mask), _ptr(out), *(_ptr(d) for d in derivs),
            threads_for(n * p, _SERIAL_ENTRIES),
        )  # fmt: skip
        if status:
            raise MemoryError("The NB mixture kernel could not allocate its scratch memory.")
        ctx.per_protein = not per_entry
        if grad:
            ctx.save_for_backward(*derivs)
        return out

    @staticmethod
    def backward(ctx, grad):
        summed = 2 if ctx.per_protein else None  # theta of shape (n_proteins,)
        grads = _upstream_times(grad, ctx.saved_tensors, ctx.needs_input_grad[1:5], summed)
        return None, *grads, None, None


def mixture_usable(*tensors: torch.Tensor | None) -> bool:
    """Whether the mixture kernel applies: float32 CPU inputs, kernel available."""
    return _float32_cpu(tensors) and _mixture_kernel() is not None


def nb_mixture_log_likelihood_native(y, log_back, log_fore, theta, rho, mask=None):
    """Per-cell protein mixture log-likelihood through the kernel (``theta`` per protein,
    ``(n_proteins,)``, or per entry, ``(n_cells, n_proteins)``)."""
    return _NativeMixtureLogLik.apply(
        y, log_back, log_fore, theta, rho, mask, torch.is_grad_enabled()
    )
