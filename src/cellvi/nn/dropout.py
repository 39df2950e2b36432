"""Dropout with a cheaper random mask on CPU.

On CPU, :func:`torch.nn.functional.dropout` draws one Bernoulli variable per entry from a
single-threaded Mersenne twister, which makes it one of the most expensive operations of a
training step of a small VAE (measured: 0.6 ms of forward + backward for a 256 x 256 hidden
layer, against about 0.2 ms for the layer's matrix product). Here every 64-bit draw from the
same generator gives four 16-bit uniform integers, and an entry is kept when its integer is at
or above a threshold: a quarter of the generator calls and no float conversion.

The drop probability is therefore rounded to a multiple of ``2**-16`` (``p=0.1`` becomes
``0.100006``) and the kept entries are scaled by ``1 / (1 - p_rounded)``, so the expected
output still equals the input. The draws come from torch's default CPU generator, so
:func:`torch.manual_seed` makes them reproducible. On other devices (CUDA) torch's own fused
dropout is already fast and is used unchanged.

With a C compiler on the machine, float32 inputs go through ``_dropout_kernel.c`` instead
(compiled on first use, see :mod:`cellvi.utils.native`): one pass writes the output and the
scaled mask, with the 16-bit integers taken from a counter-based generator (splitmix64) whose
seed is one draw from torch's generator, which took a 256 x 256 layer's mask and product from
about 90 to 15 microseconds (2 threads).
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..utils.native import enabled_kernel_function

_LEVELS = 1 << 16  # values of a 16-bit integer
_INT16_MIN = -(1 << 15)
_INT64_MIN = -(1 << 63)


_SOURCE = Path(__file__).with_name("_dropout_kernel.c")


_ARGTYPES = (ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint64,
             ctypes.c_uint32, ctypes.c_float, ctypes.c_int)  # fmt: skip


def _kernel():
    return enabled_kernel_function(_SOURCE, "cellvi_dropout", _ARGTYPES)


class _NativeDropout(torch.autograd.Function):
    """``x * mask`` with the scaled mask drawn and applied by the C kernel."""

    @staticmethod
    def forward(ctx, x, keep_threshold: int, scale: float):
        x = x.contiguous()
        out, mask = torch.empty_like(x), torch.empty_like(x)
        seed = int(torch.empty((), dtype=torch.int64).random_())  # torch's default generator
        if x.numel():
            _kernel()(x.numel(), x.data_ptr(), out.data_ptr(), mask.data_ptr(), seed,
                      keep_threshold, scale, torch.get_num_threads())  # fmt: skip
        ctx.save_for_backward(mask)
        return out

    @staticmethod
    def backward(ctx, grad):
        (mask,) = ctx.saved_tensors
        return grad * mask, None, None


def _keep_mask(shape: torch.Size, threshold: int, dtype: torch.dtype) -> torch.Tensor:
    """``1`` where an entry is kept, ``0`` where it is dropped, in ``dtype``."""
    n = shape.numel()
    words = torch.empty((n + 3) // 4, dtype=torch.int64).random_(_INT64_MIN, None)
    uniform16 = words.view(torch.int16)[:n].view(shape)
    return (uniform16 >= threshold).to(dtype)


class Dropout(nn.Module):
    """Inverted dropout (as :class:`torch.nn.Dropout`), with a 16-bit random mask on CPU.

    Parameters
    ----------
    p
        Probability that an entry is zeroed during training, in ``[0, 1)``; rounded to a
        multiple of ``2**-16`` on CPU.
    """

    def __init__(self, p: float) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {p!r}.")
        self.p = float(p)
        dropped = min(round(self.p * _LEVELS), _LEVELS - 1)
        self._threshold = _INT16_MIN + dropped
        self._scale = _LEVELS / (_LEVELS - dropped)

    @property
    def keep_threshold(self) -> int:
        """An entry is kept when its 16-bit uniform integer (``0 .. 65535``) is at least this."""
        return self._threshold - _INT16_MIN

    @property
    def scale(self) -> float:
        """The factor of the kept entries, ``1 / (1 - p_rounded)``."""
        return self._scale

    def extra_repr(self) -> str:
        return f"p={self.p}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        if x.device.type != "cpu":
            return F.dropout(x, self.p, training=True)
        if x.dtype == torch.float32 and _kernel() is not None:
            return _NativeDropout.apply(x, self.keep_threshold, self._scale)
        return x * (_keep_mask(x.shape, self._threshold, x.dtype) * self._scale)
