"""Model surgery for query mapping (scArches-style): new batch columns, the rest frozen.

A trained model gains rows for new batches in every parameter indexed by batch (the batch
columns of the first layers, which this package stores as per-batch bias rows; a batch
embedding; per-batch dispersions). Everything the reference learned is copied; with freezing,
gradients reach only the new rows.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn


def transplant(reference: nn.Module, extended: nn.Module, n_old: int) -> dict[str, torch.Tensor]:
    """Copy ``reference``'s weights into ``extended`` (same model, more batches).

    Parameters and buffers of equal shape are copied. Those whose first dimension grew
    from ``n_old`` to ``extended``'s number of batches keep the reference's rows, and the
    new rows start at the mean of the reference's rows (an "average batch"). Batch terms
    the reference did not have (it had one batch, which needs none) start at zero, which is
    what the reference computed.

    Returns
    -------
    For each parameter that holds new-batch rows, a mask of the entries that belong to new
    batches (``True``: may train when frozen).
    """
    old = reference.state_dict()
    state = extended.state_dict()
    params = dict(extended.named_parameters())
    masks = {}
    for name, value in state.items():
        if name in old and old[name].shape == value.shape:
            state[name] = old[name].clone()
            continue
        if name in old:
            source = old[name]
            if source.shape[1:] != value.shape[1:] or source.shape[0] != n_old:
                raise ValueError(
                    f"cannot extend {name!r} from shape {tuple(source.shape)} to "
                    f"{tuple(value.shape)}: only batch-indexed rows may grow"
                )
            grown = source.mean(0, keepdim=True).expand_as(value).clone()
            grown[:n_old] = source
        else:
            grown = torch.zeros_like(value)
        state[name] = grown
        if name in params:
            mask = torch.zeros(value.shape, dtype=torch.bool)
            mask[n_old:] = True
            masks[name] = mask
    extended.load_state_dict(state)
    return masks


def _norms(module: nn.Module, prefixes: Sequence[str]) -> tuple[set[str], list[nn.Module]]:
    """Names of the parameters of the batch norms under ``prefixes``, and the other norms."""
    adaptive, fixed = set(), []
    for name, sub in module.named_modules():
        if isinstance(sub, nn.modules.batchnorm._BatchNorm):
            if any(name.startswith(p) for p in prefixes):
                adaptive.update(f"{name}.{p}" for p, _ in sub.named_parameters())
            else:
                fixed.append(sub)
    return adaptive, fixed


@contextmanager
def frozen_except(
    module: nn.Module, masks: dict[str, torch.Tensor], *, adaptive_norms: Sequence[str] = ()
) -> Iterator[None]:
    """Train only the masked entries of ``module`` while in the context.

    Parameters without a mask get ``requires_grad=False`` (optimisers built inside the
    context skip them); masked ones keep gradients only where the mask is ``True``. Train
    with zero weight decay: Adam's decay acts on every entry of a parameter, also on
    masked-out ones.

    BatchNorm layers normalise with the reference's running statistics, also in training
    mode. With minibatch statistics, a per-batch bias added before the norm would be
    subtracted again whenever a minibatch holds one batch (a one-batch query always does),
    so the new batch columns could not learn anything. The exception is the norms under the
    submodule prefixes ``adaptive_norms`` (a module's decoder, as scArches leaves its decoder
    norms free): they normalise with the minibatch's statistics (updating their running
    ones) and train their scale and shift, so the decoder re-centres on the query while the
    encoder's new batch columns learn the query's shift. Everything is restored on exit
    (apart from the adaptive norms' running statistics, which now describe the query).
    """
    adaptive, fixed = _norms(module, adaptive_norms)
    frozen = {n for n, _ in module.named_parameters() if n not in masks and n not in adaptive}
    with _train_only(module, frozen=frozen, masks=masks, fixed_norms=fixed):
        yield


@contextmanager
def fixed_parts(
    module: nn.Module, prefixes: Sequence[str], *, adaptive_norms: Sequence[str] = ()
) -> Iterator[None]:
    """Fine-tune every weight of ``module`` but those under the submodule ``prefixes`` while
    in the context.

    The parameters under ``prefixes`` get ``requires_grad=False`` (optimisers built inside
    the context skip them), and their batch norms normalise with the running statistics, also
    in training mode, except the norms also under ``adaptive_norms``: those normalise with the
    minibatch's statistics (updating their running ones) and train their scale and shift, as
    in :func:`frozen_except`. Everything else trains as usual. Everything is restored on exit
    (apart from the adaptive norms' running statistics).
    """

    def under(name: str, which: Sequence[str]) -> bool:
        return any(name.startswith(p) for p in which)

    adaptive, _ = _norms(module, adaptive_norms)
    frozen = {n for n, _ in module.named_parameters() if under(n, prefixes) and n not in adaptive}
    fixed = [
        sub
        for name, sub in module.named_modules()
        if isinstance(sub, nn.modules.batchnorm._BatchNorm)
        and under(name, prefixes)
        and not under(name, adaptive_norms)
    ]
    with _train_only(module, frozen=frozen, masks={}, fixed_norms=fixed):
        yield


@contextmanager
def _train_only(
    module: nn.Module,
    *,
    frozen: set[str],
    masks: dict[str, torch.Tensor],
    fixed_norms: Sequence[nn.Module],
) -> Iterator[None]:
    """While in the context: the parameters named in ``frozen`` get ``requires_grad=False``,
    those in ``masks`` keep gradients only where the mask is ``True``, and the norms in
    ``fixed_norms`` normalise with their running statistics; all restored on exit."""
    handles, flags, modes = [], {}, {}
    try:
        for name, param in module.named_parameters():
            flags[name] = param.requires_grad
            if name in masks:
                # the trainer may move the module to a GPU after this point: follow the grad
                mask = masks[name]
                handles.append(param.register_hook(lambda g, m=mask: g * m.to(g.device, g.dtype)))
            elif name in frozen:
                param.requires_grad_(False)
        for sub in fixed_norms:
            modes[sub] = sub.training
            handles.append(sub.register_forward_pre_hook(_use_running_statistics))
        yield
    finally:
        for handle in handles:
            handle.remove()
        for name, param in module.named_parameters():
            param.requires_grad_(flags.get(name, True))
        for sub, training in modes.items():
            sub.train(training)


def _use_running_statistics(norm: nn.Module, args) -> None:
    # the trainer switches every module to training mode at each epoch: undo it for the norm
    norm.train(False)
