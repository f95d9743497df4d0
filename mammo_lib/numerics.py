"""Same numbers on every x86-64 CPU: the numeric environment a run pins and records
(``docs/DECISIONS.md``, "Same numbers on every CPU").

A CPU run's floating-point sums depend on which kernels the libraries pick at run time, and they
pick by the machine. Measured on the project's machine (``docs/DECISIONS.md`` has the table):

- **ATen's CPU capability** (``ATEN_CPU_CAPABILITY``: default / avx2 / avx512): torch's own
  vectorised kernels (BatchNorm, reductions, element-wise ops); changes a DenseNet forward pass.
- **oneDNN's instruction set** (``ONEDNN_MAX_CPU_ISA``): the convolution kernels; on an AVX-512 or
  AMX CPU oneDNN picks other kernels with another summation order.
- **MKL's code path** (``MKL_CBWR``, conditional numerical reproducibility): the GEMMs of the
  linear layers and of convolutions without oneDNN.
- **NumPy's SIMD dispatch** (``NPY_DISABLE_CPU_FEATURES``): float32 ``exp``/``log``/``sin``/``tanh``
  and float64 ``tanh`` differ in their last bits between NumPy's AVX2 (``X86_V3``) and baseline
  loops; an AVX-512 CPU would take NumPy's ``X86_V4``/``AVX512_*`` loops (the phantom, the
  preprocessing and the statistics compute with them).
- **The thread count** (the profile's ``threads``): every parallel reduction.

:func:`pin_environment` fixes the first three at AVX2, the newest instruction set every x86-64
CPU of the last decade has, so that a run on an AVX-512 or AMX machine takes the same kernels as
one on an AVX2 machine. It must run before torch executes its first operation, so the package
calls it when it is imported (``import mammo_lib`` before ``import torch`` and ``import numpy``: NumPy
reads its variable when it is imported); the reproduction,
the jobs and the test command also set it in the environment of every process they start. A
variable the caller has set is never overridden (that is how the capability emulation of the
tests works), and ``MAMMO_NUMERICS=native`` leaves the machine's fastest kernels in place.

What cannot be pinned this way (oneDNN's blocking by cache size, a CPU without AVX2) is covered
by the committed-results check, which compares tables within stated tolerances
(:mod:`mammo_lib.repro.fingerprint`).

>>> env = {}
>>> sorted(pin_environment(env, flags={"avx2", "fma"}))
['ATEN_CPU_CAPABILITY', 'MKL_CBWR', 'NPY_DISABLE_CPU_FEATURES', 'ONEDNN_MAX_CPU_ISA']
>>> env["ATEN_CPU_CAPABILITY"], env["ONEDNN_MAX_CPU_ISA"], env["MKL_CBWR"]
('avx2', 'AVX2', 'AVX2')
>>> pin_environment({"MAMMO_NUMERICS": "native"}, flags={"avx2"})
{}
"""
from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any, Mapping, MutableMapping, Optional

#: The variables pinned on a CPU with AVX2 and the value each gets.
PINNED: Mapping[str, str] = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_CBWR": "AVX2",
                             # NumPy's groups above AVX2 (X86_V3); disabling one the CPU lacks is a no-op
                             "NPY_DISABLE_CPU_FEATURES": "X86_V4 AVX512_ICL AVX512_SPR"}
#: NumPy's dispatch groups, highest first (``numpy_simd``).
_NUMPY_GROUPS = ("AVX512_SPR", "AVX512_ICL", "X86_V4", "X86_V3", "X86_V2")
#: ``MAMMO_NUMERICS``: ``pinned`` (default) or ``native`` (leave the libraries' choice).
MODE_VAR = "MAMMO_NUMERICS"
MODES = ("pinned", "native")


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags as Linux reports them (``/proc/cpuinfo``); empty elsewhere."""
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.startswith("flags"):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else :func:`platform.processor`."""
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _mode(environ: Mapping[str, str]) -> str:
    mode = environ.get(MODE_VAR, "pinned").strip().lower() or "pinned"
    if mode not in MODES:
        raise ValueError(f"{MODE_VAR}={environ.get(MODE_VAR)!r}: expected one of {', '.join(MODES)}")
    return mode


def pin_environment(environ: Optional[MutableMapping[str, str]] = None, *,
                    flags: Optional[frozenset[str] | set[str]] = None) -> dict[str, str]:
    """Set :data:`PINNED` in ``environ`` (default ``os.environ``) where not set already; returns
    what it set. Nothing is set with ``MAMMO_NUMERICS=native``, on a CPU without AVX2 (there the
    libraries' own baseline runs, and the tolerance check covers the difference) or off x86-64."""
    env = os.environ if environ is None else environ
    if _mode(env) == "native":
        return {}
    have = cpu_flags() if flags is None else frozenset(flags)
    if "avx2" not in have:
        return {}
    done = {}
    for k, v in PINNED.items():
        if k not in env:
            env[k] = v
            done[k] = v
    return done


def describe() -> dict[str, Any]:
    """The numeric environment in effect, for the provenance and ``REPORT.md``: CPU model and
    the features that change kernels, ATen's capability as torch reports it, the oneDNN and MKL
    settings, the mode and the torch thread count."""
    import torch

    flags = cpu_flags()
    return {
        "cpu": cpu_model(),
        "cpu features": " ".join(f for f in ("avx2", "fma", "avx512f", "avx512_fp16", "amx_tile") if f in flags) or "n/a",
        "mode": _mode(os.environ),
        "aten capability": torch.backends.cpu.get_cpu_capability(),
        "onednn max isa": os.environ.get("ONEDNN_MAX_CPU_ISA", "unset (the CPU's best)"),
        "mkl cbwr": os.environ.get("MKL_CBWR", "unset (the CPU's best)"),
        "numpy simd": numpy_simd(),
        "torch threads": torch.get_num_threads(),
    }


def numpy_simd() -> str:
    """The highest SIMD group NumPy dispatches to in this process (``X86_V3`` is AVX2's),
    ``"baseline"`` when none of :data:`_NUMPY_GROUPS` is on, ``"unknown"`` for a NumPy that does
    not report its groups."""
    try:
        from numpy._core._multiarray_umath import __cpu_features__ as features
    except ImportError:  # pragma: no cover - NumPy < 2
        return "unknown"
    return next((g for g in _NUMPY_GROUPS if features.get(g)), "baseline")


def is_pinned(info: Mapping[str, Any]) -> bool:
    """Whether ``info`` (from :func:`describe`) is the pinned AVX2 environment."""
    return (str(info.get("aten capability", "")).upper() == "AVX2"
            and str(info.get("onednn max isa", "")).upper() == "AVX2"
            and str(info.get("mkl cbwr", "")).upper().startswith("AVX2")
            and str(info.get("numpy simd", "X86_V3")).upper() == "X86_V3")
