"""Mixed precision and channels-last memory format on CUDA (``docs/DECISIONS.md``, "GPU / mixed
precision").

Both are speed settings of :class:`~mammo_lib.engines.training.TrainConfig` (``amp``, ``channels_last``)
and take effect only when the device is CUDA; on the CPU every helper here is an exact no-op
(no autocast, no memory-format change), so CPU results are bit-identical with the flags on or off.
The Eq. 4 distance and the losses are always computed in full precision (float32, or the run's
float64: :func:`mammo_lib.utils.precision.full`): callers cast activations and
logits with ``.float()`` after the autocast region.

>>> import torch
>>> with autocast_for("cpu", "bf16"):
...     y = torch.ones(2, 2) @ torch.ones(2, 2)
>>> y.dtype
torch.float32
"""
from __future__ import annotations

import contextlib
from typing import Any, ContextManager, Iterator, Optional, TypeVar

import torch
from torch import Tensor, nn

#: Valid values of ``TrainConfig.amp``.
AMP_MODES = ("off", "bf16", "fp16")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}

T = TypeVar("T", Tensor, nn.Module)


def check_amp(amp: Any, where: str = "amp") -> str:
    """``amp`` itself when it is one of :data:`AMP_MODES`, else ``ValueError`` listing them."""
    if not isinstance(amp, str) or amp not in AMP_MODES:
        raise ValueError(f"{where} must be one of {AMP_MODES}, got {amp!r}")
    return amp


def _is_cuda(device: str | torch.device) -> bool:
    return torch.device(device).type == "cuda"


def autocast_for(device: str | torch.device, amp: str) -> ContextManager[Any]:
    """``torch.autocast("cuda", dtype=bfloat16|float16)`` when ``device`` is CUDA and ``amp`` is
    not ``"off"``; otherwise a context that does nothing.

    >>> import torch
    >>> with autocast_for("cpu", "fp16"):
    ...     torch.zeros(1).dtype
    torch.float32
    """
    check_amp(amp)
    if amp == "off" or not _is_cuda(device):
        return contextlib.nullcontext()
    return torch.autocast(device_type="cuda", dtype=_DTYPES[amp])


def maybe_channels_last(obj: T, flag: bool, device: str | torch.device) -> T:
    """``obj`` (a module, converted in place, or a 4-D tensor) in channels-last memory format when
    ``flag`` is set and ``device`` is CUDA; ``obj`` unchanged otherwise (also for non-4-D tensors).

    >>> import torch
    >>> x = torch.zeros(1, 3, 4, 4)
    >>> maybe_channels_last(x, True, "cpu") is x
    True
    """
    if not flag or not _is_cuda(device):
        return obj
    if isinstance(obj, nn.Module):
        return obj.to(memory_format=torch.channels_last)
    if isinstance(obj, Tensor) and obj.ndim == 4:
        return obj.contiguous(memory_format=torch.channels_last)
    return obj


def undo_channels_last(model: nn.Module, flag: bool, device: str | torch.device) -> nn.Module:
    """Back to the default contiguous format after :func:`maybe_channels_last` (same condition)."""
    if flag and _is_cuda(device):
        model.to(memory_format=torch.contiguous_format)
    return model


@contextlib.contextmanager
def channels_last_while(model: nn.Module, flag: bool, device: str | torch.device) -> Iterator[nn.Module]:
    """:func:`maybe_channels_last` on ``model`` inside the block, :func:`undo_channels_last` on exit
    (also after an error); a no-op on the CPU or when ``flag`` is off.

    >>> m = nn.Linear(2, 2)
    >>> with channels_last_while(m, True, "cpu") as same:
    ...     same is m
    True
    """
    maybe_channels_last(model, flag, device)
    try:
        yield model
    finally:
        undo_channels_last(model, flag, device)


def grad_scaler(device: str | torch.device, amp: str) -> Optional[torch.amp.GradScaler]:
    """A ``torch.amp.GradScaler("cuda")`` for ``amp="fp16"`` on CUDA (float16 gradients underflow
    without loss scaling); ``None`` otherwise (bfloat16 has float32's range and needs none)."""
    check_amp(amp)
    if amp == "fp16" and _is_cuda(device):
        return torch.amp.GradScaler("cuda")
    return None


def backward_step(loss: Tensor, optimizer: torch.optim.Optimizer, scaler: Optional[torch.amp.GradScaler]) -> None:
    """``loss.backward(); optimizer.step()``, through ``scaler`` when one is given."""
    if scaler is None:
        loss.backward()
        optimizer.step()
        return
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()


__all__ = ["AMP_MODES", "check_amp", "autocast_for", "maybe_channels_last", "undo_channels_last", "grad_scaler", "backward_step"]
