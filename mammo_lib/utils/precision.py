"""The floating-point precision a run computes in: ``float32`` (default) or ``float64``
(``docs/DECISIONS.md``, "Same numbers on every CPU": the smoke profile's choice).

A training is chaotic: one ReLU input within rounding of zero that flips sign under another
CPU's kernels becomes, through Adam's first ``lr * sign(g)`` step, a different trained network.
In float32 the kernels' rounding (about 1e-7) makes such flips a matter of luck; in float64 it is
about 1e-16 and they do not happen at the sizes of a test run. A run's precision is torch's
default floating-point dtype (:func:`torch.get_default_dtype`): the networks are built in it, and
every float32 model input (:func:`widen`) and every float32 or autocast output that enters a loss
(:func:`full`) is cast up to it. In the default float32 :func:`full` is ``x.float()`` for a reduced-precision
``x`` and ``x`` itself otherwise, so float32 runs compute exactly what they computed before the
option existed.

>>> import torch
>>> with in_precision("float64"):
...     full(torch.ones(2, dtype=torch.float32)).dtype, torch.nn.Linear(2, 2).weight.dtype
(torch.float64, torch.float64)
>>> torch.get_default_dtype(), full(torch.ones(2, dtype=torch.bfloat16)).dtype
(torch.float32, torch.float32)
>>> full(torch.ones(2, dtype=torch.float64)).dtype   # a wider tensor is never narrowed
torch.float64
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import Tensor

from mammo_lib.utils.options import PRECISION_NAMES

#: The precisions a profile may name (its ``precision`` key) and torch's dtype for each.
PRECISIONS: dict[str, torch.dtype] = {name: getattr(torch, name) for name in PRECISION_NAMES}


def dtype_of(name: str) -> torch.dtype:
    """torch's dtype for a precision name; ``ValueError`` naming the choices otherwise."""
    if name not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {name!r}")
    return PRECISIONS[name]


def set_precision(name: str) -> torch.dtype:
    """Make ``name`` torch's default floating-point dtype for this process (what a notebook kernel
    or a job process does once, as it pins its thread count); returns the previous default."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype_of(name))
    return previous


def current() -> str:
    """The precision in use: the name of torch's default floating-point dtype."""
    return {v: k for k, v in PRECISIONS.items()}.get(torch.get_default_dtype(), str(torch.get_default_dtype()))


@contextmanager
def in_precision(name: str) -> Iterator[torch.dtype]:
    """:func:`set_precision` for the ``with`` block; the previous default comes back on exit."""
    previous = set_precision(name)
    try:
        yield torch.get_default_dtype()
    finally:
        torch.set_default_dtype(previous)


def widen(x: Tensor) -> Tensor:
    """A float32 tensor (data, a model input) in the run's precision when that is wider; any other
    tensor as it is (a float16 input of a float16 network stays float16)."""
    if x.dtype == torch.float32 and torch.get_default_dtype() == torch.float64:
        return x.to(torch.float64)
    return x


def full(x: Tensor) -> Tensor:
    """``x`` in the run's precision: a floating tensor narrower than torch's default dtype
    (bfloat16 or float16 from autocast, float32 data in a float64 run) is cast up to it; any other
    tensor is returned as it is."""
    d = torch.get_default_dtype()
    if x.is_floating_point() and x.element_size() < d.itemsize:
        return x.to(d)
    return x
