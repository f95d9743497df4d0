"""Shared pytest fixtures and markers.

Helpers that are not fixtures (synthetic image files, tiny data, ../shared paths) live in
``tests/support/``; no test module imports another test module. A test that starts another Python
process (``subprocess``, directly or through a helper of its module) is marked ``slow``
automatically: ``pytest -m "not slow"`` runs the in-process tests alone.
"""
from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"

_SPAWNS = re.compile(r"\bsubprocess\.(run|Popen|check_call|check_output|call)\b")


@pytest.fixture
def fixtures_dir() -> Path:
    return FIXTURES


@pytest.fixture(autouse=True)
def _restore_float_precision():
    """A test that opens the smoke profile sets torch's default dtype to float64 for its process
    (``runtime.pin_numerics``, as a notebook kernel does); the next test starts from the default."""
    import torch

    before = torch.get_default_dtype()
    yield
    torch.set_default_dtype(before)


def _spawning_helpers(module) -> set[str]:
    """Names of the module's own functions that start a process (directly, or through another one)."""
    funcs = {n: f for n, f in vars(module).items()
             if inspect.isfunction(f) and getattr(f, "__module__", None) == module.__name__}
    src = {}
    for n, f in funcs.items():
        try:
            src[n] = inspect.getsource(f)
        except (OSError, TypeError):
            src[n] = ""
    spawning = {n for n, s in src.items() if _SPAWNS.search(s)}
    grew = True
    while grew:
        more = {n for n, s in src.items() if n not in spawning and any(re.search(rf"\b{m}\(", s) for m in spawning)}
        spawning |= more
        grew = bool(more)
    return spawning


def pytest_collection_modifyitems(config, items):
    cache: dict[str, set[str]] = {}
    for item in items:
        fn = getattr(item, "function", None)
        if fn is None or item.module is None:
            continue
        name = item.module.__name__
        if name not in cache:
            cache[name] = _spawning_helpers(item.module)
        fixtures = set(getattr(item, "fixturenames", ()))
        if fn.__name__ in cache[name] or fixtures & cache[name]:
            item.add_marker(pytest.mark.slow)
