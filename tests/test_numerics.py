"""Tests of the numeric environment a run pins and records (mammo_lib.numerics): which variables
are set where, that a caller's setting wins, and that NumPy's dispatch follows the pin when the
package is imported first (checked in a fresh process: NumPy reads its variable once)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mammo_lib.numerics import PINNED, describe, is_pinned, pin_environment

ROOT = Path(__file__).resolve().parents[1]
AVX2 = "avx2" in (Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else "")

# name, environment before, CPU flags, variables set
PIN_CASES = [
    ("AVX2 CPU", {}, {"avx2", "fma"}, set(PINNED)),
    ("AVX-512 CPU", {}, {"avx2", "avx512f", "amx_tile"}, set(PINNED)),
    ("caller's setting wins", {"ATEN_CPU_CAPABILITY": "default"}, {"avx2"}, set(PINNED) - {"ATEN_CPU_CAPABILITY"}),
    ("native", {"MAMMO_NUMERICS": "native"}, {"avx2"}, set()),
    ("no AVX2", {}, {"sse4_2"}, set()),
]


@pytest.mark.parametrize("name,env,flags,want", PIN_CASES)
def test_pin_environment(name, env, flags, want):
    before = dict(env)
    done = pin_environment(env, flags=flags)
    assert set(done) == want
    assert all(env[k] == before.get(k, PINNED[k]) for k in PINNED if k in env)


def test_an_unknown_mode_is_an_error_naming_the_choices():
    with pytest.raises(ValueError, match="MAMMO_NUMERICS='fast': expected one of pinned, native"):
        pin_environment({"MAMMO_NUMERICS": "fast"}, flags={"avx2"})


def test_numpy_is_capped_above_avx2():
    assert PINNED["NPY_DISABLE_CPU_FEATURES"].split()[0] == "X86_V4"  # NumPy 2's AVX-512 group


def _describe_in_fresh_process(env: dict[str, str]) -> dict:
    clean = {k: v for k, v in os.environ.items() if k not in PINNED}
    out = subprocess.run([sys.executable, "-c", "import mammo_lib, json; from mammo_lib.numerics import describe; "
                          "print(json.dumps(describe()))"], capture_output=True, text=True, check=True, timeout=300,
                         cwd=ROOT, env={**clean, "PYTHONPATH": str(ROOT), **env})
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not AVX2, reason="needs an x86-64 CPU with AVX2 (the pinned setting)")
def test_numpy_dispatch_is_recorded_and_a_lower_one_is_not_the_pinned_environment():
    pinned = _describe_in_fresh_process({})
    assert pinned["numpy simd"] == "X86_V3" and is_pinned(pinned)
    lower = _describe_in_fresh_process({"NPY_DISABLE_CPU_FEATURES": "X86_V3"})
    assert lower["numpy simd"] == "X86_V2" and not is_pinned(lower)
    assert {k: v for k, v in lower.items() if k != "numpy simd"} == {k: v for k, v in pinned.items() if k != "numpy simd"}


def test_describe_names_every_kernel_setting():
    assert {"cpu", "aten capability", "onednn max isa", "mkl cbwr", "numpy simd", "torch threads"} <= set(describe())
