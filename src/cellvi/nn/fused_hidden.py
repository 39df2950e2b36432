"""The step after a hidden layer's matrix product, fused: covariates, batch norm, ReLU, dropout.

In training mode an :class:`~cellvi.nn.layers.MLP` layer is ``Linear -> + covariate biases ->
BatchNorm1d -> ReLU -> dropout``. Written with torch modules, everything after the matrix
product is a chain of small operations, each a full pass over the ``cells x hidden`` matrix
with its own autograd node: for a 256 x 256 layer about 180 microseconds of forward and
backward (2 threads), close to the matrix products themselves. ``_hidden_kernel.c`` does the
forward in three passes over the matrix and the backward in two, with the same results: batch
statistics, running-statistics update, NaN propagation and an unbiased dropout mask.

Used for float32 / bfloat16 CPU tensors in training mode with batch normalisation, when
:attr:`cellvi.settings.native_kernels` is on and the kernel could be built
(:func:`cellvi.utils.native.enabled_kernel_function`). Evaluation mode, layer norm, CUDA and
machines without a C compiler use the torch modules.
"""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from ..utils.native import enabled_kernel_function, threads_for
from ..utils.native import pointer as _ptr
from .dropout import Dropout

_SOURCE = Path(__file__).with_name("_hidden_kernel.c")
_P, _I64, _F = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float

_FORWARD_ARGS = (_I64, _I64, _P, ctypes.c_int, _P, _P, _P, _P, _P, _P, _P, _F, _F,
                 ctypes.c_uint64, ctypes.c_uint32, _F, _P, _P, _P, _P, ctypes.c_int)  # fmt: skip
_BACKWARD_ARGS = (_I64, _I64, _P, _P, _P, _P, _P, ctypes.c_int, _P, _P, _P, _P, _P, _P,
                  ctypes.c_int)  # fmt: skip
_MASK64 = 2**64 - 1
_MASK_ARGS = (_I64, _I64, ctypes.c_uint64, ctypes.c_uint32, _P)


#: below this many entries (16 MiB of float32) one thread does the whole layer: the kernel is
#: memory-bound, and a second thread cost more than it saved. Measured on the project's 2-core
#: VM: 256 x 256 took 28 us on one thread and 34 us on two; the 2048 x 128 layers of scANVI's
#: per-class networks, timed inside training: 264 us forward and 319 us backward on one thread,
#: 1349 us and 946 us on two (medians of 300+ calls). The training step as a whole gained less
#: than that suggests (median 15.1 -> 14.9 ms, 320 steps each, interleaved)
SERIAL_ENTRIES = 1 << 22


def _threads(n_entries: int) -> int:
    return threads_for(n_entries, SERIAL_ENTRIES)


@functools.cache
def _offsets(sizes: tuple[int, ...]) -> torch.Tensor:
    """First row of each table in the concatenated table (never written to)."""
    return torch.tensor([0, *sizes], dtype=torch.long).cumsum(0)


def draw_seed() -> int:
    """One draw from torch's default generator, as a kernel's 64-bit dropout seed."""
    return int(torch.empty((), dtype=torch.int64).random_()) & _MASK64


def _function(name: str, argtypes: tuple, restype=None):
    return enabled_kernel_function(_SOURCE, name, argtypes, restype)


def _dropout_setting(dropout: nn.Module) -> tuple[int, float]:
    """The kernel's keep threshold (a 16-bit integer) and scale for a dropout module."""
    if isinstance(dropout, Dropout) and dropout.p > 0:
        return dropout.keep_threshold, dropout.scale
    return 0, 1.0


def _hooked(module: nn.Module) -> bool:
    """Whether calling the module would run hooks (e.g. query training's frozen norms), which
    the fused step would skip."""
    return bool(
        module._forward_pre_hooks
        or module._forward_hooks
        or nn.modules.module._global_forward_pre_hooks
        or nn.modules.module._global_forward_hooks
    )


def applies(h: torch.Tensor, norm: nn.Module, dropout: nn.Module) -> bool:
    """Whether :func:`hidden_step` can replace ``dropout(relu(norm(h)))`` here."""
    return (
        norm.training
        and not _hooked(norm)
        and not _hooked(dropout)
        and type(norm) is nn.BatchNorm1d
        and norm.affine
        and norm.momentum is not None
        and (norm.track_running_stats or norm.running_mean is None)
        and isinstance(dropout, Dropout | nn.Identity)
        and dropout.training
        and h.device.type == "cpu"
        and h.dim() == 2
        and h.shape[0] > 1
        and h.dtype in (torch.float32, torch.bfloat16)
        and norm.weight.dtype == torch.float32
        and _function("cellvi_hidden_forward", _FORWARD_ARGS, ctypes.c_int) is not None
    )


class _HiddenStep(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, table, weight, bias, codes, offsets, norm, threshold, scale):
        a = a.contiguous()
        n, d = a.shape
        out = torch.empty_like(a)
        xhat, keep = torch.empty_like(a), torch.empty_like(a)
        invstd = torch.empty(d)
        seed = draw_seed()
        tracked = norm.running_mean is not None
        status = _function("cellvi_hidden_forward", _FORWARD_ARGS, ctypes.c_int)(
            n, d, a.data_ptr(), codes.shape[1], _ptr(codes), offsets.data_ptr(), _ptr(table),
            weight.data_ptr(), bias.data_ptr(),
            norm.running_mean.data_ptr() if tracked else None,
            norm.running_var.data_ptr() if tracked else None,
            norm.momentum, norm.eps, seed, threshold, scale,
            out.data_ptr(), xhat.data_ptr(), keep.data_ptr(), invstd.data_ptr(), _threads(n * d),
        )  # fmt: skip
        if status == 2:
            raise MemoryError(
                "The fused hidden-layer kernel could not allocate its scratch memory."
            )
        if status:
            raise IndexError(
                "A covariate code is outside its embedding table: the data hold more "
                "categories than the model was built for."
            )
        if tracked:
            norm.num_batches_tracked.add_(1)
        ctx.save_for_backward(xhat, keep, invstd, weight, codes, offsets)
        ctx.table_shape = table.shape
        return out

    @staticmethod
    def backward(ctx, grad_out):
        xhat, keep, invstd, gamma, codes, offsets = ctx.saved_tensors
        grad_out = grad_out.contiguous().float()
        n, d = grad_out.shape
        grad_a = torch.empty_like(grad_out)
        grad_gamma, grad_beta = torch.empty(d), torch.empty(d)
        grad_table = torch.zeros(ctx.table_shape) if ctx.needs_input_grad[1] else None
        status = _function("cellvi_hidden_backward", _BACKWARD_ARGS, ctypes.c_int)(
            n, d, grad_out.data_ptr(), xhat.data_ptr(), keep.data_ptr(), invstd.data_ptr(),
            gamma.data_ptr(), codes.shape[1], _ptr(codes), offsets.data_ptr(),
            grad_a.data_ptr(), grad_gamma.data_ptr(), grad_beta.data_ptr(), _ptr(grad_table),
            _threads(n * d),
        )  # fmt: skip
        if status:
            raise MemoryError(
                "The fused hidden-layer kernel could not allocate its scratch memory."
            )
        return grad_a, grad_table, grad_gamma, grad_beta, None, None, None, None, None


def hidden_step(
    h: torch.Tensor,
    tables: Sequence[torch.Tensor],
    codes: Sequence[torch.Tensor],
    norm: nn.BatchNorm1d,
    dropout: nn.Module,
) -> torch.Tensor:
    """``dropout(relu(norm(h + sum_t tables[t][codes[t]])))`` in training mode, in float32.

    Parameters
    ----------
    h
        The layer's pre-activation, ``(cells, features)``.
    tables, codes
        One embedding weight ``(categories, features)`` and one code vector ``(cells,)`` per
        categorical covariate.
    norm, dropout
        The layer's :class:`~torch.nn.BatchNorm1d` (training mode; its running statistics are
        updated) and :class:`~cellvi.nn.dropout.Dropout` (or :class:`~torch.nn.Identity`).
    """
    h = h.float()
    n, d = h.shape
    if n < 2:
        raise ValueError(f"Batch normalisation in training mode needs more than one cell, got {n}.")
    if len(tables) == 1:
        table, code = tables[0], codes[0].long().view(n, 1)
    elif tables:
        table = torch.cat(list(tables))
        code = torch.stack([c.long() for c in codes], dim=1)
    else:
        table, code = h.new_empty((0, d)), torch.empty((n, 0), dtype=torch.long)
    offsets = _offsets(tuple(t.shape[0] for t in tables))
    threshold, scale = _dropout_setting(dropout)
    return _HiddenStep.apply(
        h, table, norm.weight, norm.bias, code.contiguous(), offsets, norm, threshold, scale
    )


def dropout_mask(n: int, d: int, seed: int, threshold: int) -> torch.Tensor:
    """The ``(n, d)`` keep mask (``True`` kept) the kernel draws for ``seed``; for tests."""
    keep = torch.empty((n, d), dtype=torch.uint8)
    _function("cellvi_hidden_dropout_mask", _MASK_ARGS)(n, d, seed & _MASK64, threshold, _ptr(keep))
    return keep.bool()
