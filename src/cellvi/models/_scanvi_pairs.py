"""scANVI's per-(cell, class) networks in one C kernel (``_scanvi_pairs_kernel.c``).

In training, scANVI's latent term runs two small Gaussian networks (``q(z2 | z1, y)`` and
``p(z1 | z2, y)``, one hidden layer each) on every scored (cell, class) pair, with a
reparameterised draw of ``z2`` between them. Written with torch modules that is about thirty
operations per step, each a pass over a ``pairs x n_hidden`` matrix with its own dispatch,
and thin matrix products (inner width ``n_latent``) that run far below the machine's speed.
The kernel does one pass per network forward (after the batch statistics) and two backward,
its products in small register tiles, keeping each network's normalised and hidden matrices
for the backward pass, and returns the two per-pair terms :meth:`SCANVIModule._pair_terms`
gives: ``log p(z1 | z2, y)`` and ``KL(q(z2 | z1, y) || p(z2))``.

It draws from torch's generator exactly what the module path with the fused hidden-layer kernel
(:mod:`cellvi.nn.fused_hidden`) draws, in the same order (the first network's dropout seed, the
standard-normal draws of ``z2``, the second network's seed), and the same dropout masks, so both
paths give the same values up to float rounding.

Used in training mode for float32 CPU tensors when :attr:`cellvi.settings.native_kernels` is on
and the kernel could be built, for networks of one hidden layer with batch normalisation and
without hooks. Everything else runs the module path.

Threads: the kernel cuts the pairs into at most :data:`MAX_CHUNKS` chunks that depend on the
number of pairs alone and adds the chunks' sums in order, so its results are the same for any
thread count. It takes torch's threads from :data:`ONE_THREAD_BELOW` entries of the hidden matrix
(pairs x n_hidden). On the project's 2-core machine it was 2.3-2.5x faster than the module path
from 2^20 to 2^23.9 entries (fusing the networks of 512 to 8,192 cells with 16 classes), so there
it is used at any size; with more threads than chunks it is used up to
:data:`cellvi.nn.fused_hidden.SERIAL_ENTRIES` entries (beyond that it was not measured against
torch's threaded products).
"""

from __future__ import annotations

import ctypes
import weakref
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from ..nn import GaussianEncoder, fused_hidden
from ..nn.dropout import Dropout
from ..nn.layers import CovariateInjection
from ..utils.native import enabled_kernel_function, threads_for

_SOURCE = Path(__file__).with_name("_scanvi_pairs_kernel.c")
#: below this many entries of the hidden matrix (pairs x n_hidden) the kernel runs on one
#: thread (two blocks of rows or fewer at n_hidden 128); on 2 cores, two threads were already
#: faster at 55 pairs (forward 46 vs 53 us, backward 81 vs 89 us)
ONE_THREAD_BELOW = 1 << 12
#: the kernel's chunks of pairs at most (``NCH`` in the C source): the threads it can use
MAX_CHUNKS = 8
_P, _I64, _F = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float
_POINTERS = ("w1", "b1", "table", "gamma", "beta", "running_mean", "running_var", "wm", "bm",
             "wv", "bv", "mean", "invstd", "xhat", "h", "g_w1", "g_b1", "g_table", "g_gamma",
             "g_beta", "g_wm", "g_bm", "g_wv", "g_bv")  # fmt: skip
_WEIGHTS = ("w1", "b1", "table", "gamma", "beta", "wm", "bm", "wv", "bv")


class _Net(ctypes.Structure):
    """The kernel's ``net_args``: one network's parameters, saved values and gradients."""

    _fields_ = [*((name, _P) for name in _POINTERS), ("seed", ctypes.c_uint64),
                ("threshold", ctypes.c_uint32), ("scale", _F)]  # fmt: skip


_NET = ctypes.POINTER(_Net)
_FORWARD_ARGS = (_I64, _I64, _I64, _I64, _I64, _P, _P, _P, _P, _NET, _NET, _F, _F,
                 _P, _P, _P, _P, _P, _P, _P, ctypes.c_int)  # fmt: skip
_BACKWARD_ARGS = (_I64, _I64, _I64, _I64, _I64, *(_P,) * 11, _NET, _NET, _P, ctypes.c_int)


def _function(name: str, argtypes: tuple):
    return enabled_kernel_function(_SOURCE, name, argtypes, ctypes.c_int)


def _parts(encoder: GaussianEncoder) -> tuple[nn.Module, ...]:
    """The first linear layer, class embedding, norm and dropout of a one-layer encoder."""
    body = encoder.body
    return body.linears[0], body.injections[0].categorical[0], body.norms[0], body.dropout


def _has_one_layer_and_covariate(encoder: GaussianEncoder) -> bool:
    """One hidden layer, one categorical covariate (what :func:`_parts` reads)."""
    body = encoder.body
    inject = body.injections[0]
    return len(body.linears) == 1 and isinstance(inject, CovariateInjection) and len(inject.categorical) == 1  # fmt: skip


def _shape_fits(encoder: GaussianEncoder) -> bool:
    """Whether a network of one layer and one covariate is built as the kernel computes it:
    the class as an embedding, no continuous covariate, batch normalisation with affine
    parameters, the project's dropout or none."""
    body = encoder.body
    inject, norm, dropout = body.injections[0], body.norms[0], body.dropout
    return (
        isinstance(inject.categorical[0], nn.Embedding)
        and inject.continuous is None
        and type(norm) is nn.BatchNorm1d
        and norm.affine
        and isinstance(dropout, Dropout | nn.Identity)
    )


#: per network: its parts (:func:`_parts`), whether its shape fits the kernel, and its
#: submodules, from the first look (walking the modules every step cost 0.14 ms); looked at
#: again when a part was replaced. Modes, hooks and parameters are checked at every call.
_SHAPES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _fusable(encoder: GaussianEncoder) -> bool:
    if not _has_one_layer_and_covariate(encoder):
        return False
    parts = _parts(encoder)
    known = _SHAPES.get(encoder)
    if known is None or any(a is not b for a, b in zip(known[0], parts, strict=True)):
        known = _SHAPES[encoder] = (parts, _shape_fits(encoder), tuple(encoder.modules()))
    if not known[1]:
        return False
    _, _, norm, dropout = parts
    return (
        norm.training
        and norm.momentum is not None
        and (norm.track_running_stats or norm.running_mean is None)
        and (dropout.training or isinstance(dropout, nn.Identity))
        and not any(fused_hidden._hooked(m) for m in known[2])
        and all(
            p.dtype == torch.float32 and p.device.type == "cpu" and p.is_contiguous()
            for p in _weights(encoder)
        )
    )


def applies(z2_encoder: GaussianEncoder, z1_decoder: GaussianEncoder, z1: torch.Tensor, n_pairs: int) -> bool:  # fmt: skip
    """Whether :func:`pair_terms` can replace the module path for these networks and pairs."""
    hidden = z2_encoder.body.linears[0].out_features
    return (
        z1.device.type == "cpu"
        and z1.dtype == torch.float32
        and 1 < n_pairs
        and (
            n_pairs * hidden <= fused_hidden.SERIAL_ENTRIES or torch.get_num_threads() <= MAX_CHUNKS
        )
        and _fusable(z2_encoder)
        and _fusable(z1_decoder)
        and z1_decoder.body.linears[0].out_features == hidden
        and _function("cellvi_scanvi_pairs_forward", _FORWARD_ARGS) is not None
    )


def _weights(encoder: GaussianEncoder) -> list[torch.Tensor]:
    """The network's parameters, in the order of ``_WEIGHTS``."""
    linear, embedding, norm, _ = _parts(encoder)
    return [linear.weight, linear.bias, embedding.weight, norm.weight, norm.bias,
            encoder.mean.weight, encoder.mean.bias, encoder.log_var.weight, encoder.log_var.bias]  # fmt: skip


class _Setting:
    """What the kernel needs of one network besides its weights."""

    def __init__(self, encoder: GaussianEncoder, seed: int) -> None:
        _, _, self.norm, dropout = _parts(encoder)
        self.threshold, self.scale = fused_hidden._dropout_setting(dropout)
        self.seed = seed


def _net(setting: _Setting, tensors: dict[str, torch.Tensor | None]) -> _Net:
    """The kernel's struct for one network (the tensors must outlive the call)."""
    ptr = {name: (None if t is None else t.data_ptr()) for name, t in tensors.items()}
    return _Net(**ptr, seed=setting.seed, threshold=setting.threshold, scale=setting.scale)


def _threads(n_pairs: int, n_hidden: int) -> int:
    return threads_for(n_pairs * n_hidden, ONE_THREAD_BELOW)


class _PairTerms(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z1, eps, cells, ys, enc: _Setting, dec: _Setting, *weights):
        z1 = z1.detach().contiguous()
        n, L = z1.shape
        P = cells.shape[0]
        H, K = weights[0].shape[0], weights[2].shape[0]
        momentum, bn_eps = enc.norm.momentum, enc.norm.eps
        if (dec.norm.momentum, dec.norm.eps) != (momentum, bn_eps):
            raise ValueError("The fused scANVI networks need the same batch-norm momentum and eps.")
        saved, nets = [], []
        for setting, w in ((enc, weights[:9]), (dec, weights[9:])):
            kept = {"mean": torch.empty(H), "invstd": torch.empty(H),
                    "xhat": z1.new_empty(P, H), "h": z1.new_empty(P, H)}  # fmt: skip
            tracked = setting.norm.running_mean is not None
            nets.append(_net(setting, {
                **dict(zip(_WEIGHTS, w, strict=True)), **kept,
                "running_mean": setting.norm.running_mean if tracked else None,
                "running_var": setting.norm.running_var if tracked else None,
            }))  # fmt: skip
            saved += kept.values()
        z2, m2, s2e, m1, s2d = (z1.new_empty(P, L) for _ in range(5))
        log_p, kl = z1.new_empty(P), z1.new_empty(P)
        status = _function("cellvi_scanvi_pairs_forward", _FORWARD_ARGS)(
            P, n, L, H, K, z1.data_ptr(), cells.data_ptr(), ys.data_ptr(), eps.data_ptr(),
            ctypes.byref(nets[0]), ctypes.byref(nets[1]), momentum, bn_eps, z2.data_ptr(),
            m2.data_ptr(), s2e.data_ptr(), m1.data_ptr(), s2d.data_ptr(), log_p.data_ptr(),
            kl.data_ptr(), _threads(P, H),
        )  # fmt: skip
        if status == 1:
            raise IndexError("A (cell, class) pair is outside z1 or the class table.")
        if status:
            raise MemoryError("The fused scANVI kernel could not allocate its scratch memory.")
        for setting in (enc, dec):
            if setting.norm.running_mean is not None:
                setting.norm.num_batches_tracked.add_(1)
        ctx.save_for_backward(z1, eps, cells, ys, z2, m2, s2e, m1, s2d, *saved, *weights)
        ctx.settings = (enc, dec)
        return log_p, kl

    @staticmethod
    def backward(ctx, g_log_p, g_kl):
        z1, eps, cells, ys, z2, m2, s2e, m1, s2d, *rest = ctx.saved_tensors
        saved, weights = rest[:8], rest[8:]
        n, L = z1.shape
        P = cells.shape[0]
        H, K = weights[0].shape[0], weights[2].shape[0]
        g_log_p = torch.zeros(P) if g_log_p is None else g_log_p.float().contiguous()
        g_kl = torch.zeros(P) if g_kl is None else g_kl.float().contiguous()
        grads, nets = [], []
        for i, setting in enumerate(ctx.settings):
            w = weights[9 * i : 9 * i + 9]
            g = [torch.empty_like(t) for t in w]
            grads += g
            kept = dict(zip(("mean", "invstd", "xhat", "h"), saved[4 * i : 4 * i + 4], strict=True))  # fmt: skip
            nets.append(_net(setting, {
                **dict(zip(_WEIGHTS, w, strict=True)), **kept,
                **{f"g_{name}": t for name, t in zip(_WEIGHTS, g, strict=True)},
                "running_mean": None, "running_var": None,
            }))  # fmt: skip
        g_z1 = torch.empty(n, L)
        status = _function("cellvi_scanvi_pairs_backward", _BACKWARD_ARGS)(
            P, n, L, H, K, z1.data_ptr(), cells.data_ptr(), ys.data_ptr(), eps.data_ptr(),
            z2.data_ptr(), m2.data_ptr(), s2e.data_ptr(), m1.data_ptr(), s2d.data_ptr(),
            g_log_p.data_ptr(), g_kl.data_ptr(), ctypes.byref(nets[0]), ctypes.byref(nets[1]),
            g_z1.data_ptr(), _threads(P, H),
        )  # fmt: skip
        if status:
            raise MemoryError("The fused scANVI kernel could not allocate its scratch memory.")
        return (g_z1, None, None, None, None, None, *grads)


def pair_terms(
    z2_encoder: GaussianEncoder,
    z1_decoder: GaussianEncoder,
    z1: torch.Tensor,
    cells: torch.Tensor,
    ys: torch.Tensor,
    draw: Callable[[], torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor]:
    """``log p(z1 | z2, y)`` and ``KL(q(z2 | z1, y) || p(z2))`` per (cell, class) pair.

    Parameters
    ----------
    z2_encoder, z1_decoder
        scANVI's networks (:func:`applies` true for them).
    z1
        ``(cells, n_latent)`` float32.
    cells, ys
        Each pair's cell (row of ``z1``) and class.
    draw
        Returns the pairs' standard-normal draws ``(pairs, n_latent)``; called after the
        first network's dropout seed is drawn and before the second's, as the module path
        draws them.
    """
    enc = _Setting(z2_encoder, fused_hidden.draw_seed())
    eps = draw().float().contiguous()
    dec = _Setting(z1_decoder, fused_hidden.draw_seed())
    return _PairTerms.apply(
        z1, eps, cells.long().contiguous(), ys.long().contiguous(), enc, dec,
        *_weights(z2_encoder), *_weights(z1_decoder),
    )  # fmt: skip
