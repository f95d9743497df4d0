"""Shared pytest fixtures."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
SHARED = ROOT.parent / "shared"


def shared_path(*parts: str) -> Path:
    """Path under ../shared; skip the test when absent, fail when MAMMO_REQUIRE_SHARED=1."""
    p = SHARED.joinpath(*parts)
    if not p.exists():
        if os.environ.get("MAMMO_REQUIRE_SHARED") == "1":
            pytest.fail(f"{p} is required (MAMMO_REQUIRE_SHARED=1) but absent")
        pytest.skip(f"{p} absent (../shared not available)")
    return p


@pytest.fixture
def fixtures_dir() -> Path:
    return FIXTURES
