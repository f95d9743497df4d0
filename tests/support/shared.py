"""Files under ../shared (real-data samples): skipped when absent unless MAMMO_REQUIRE_SHARED=1."""
import os
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[3] / "shared"


def shared_path(*parts: str) -> Path:
    """Path under ../shared; skip the test when absent, fail when MAMMO_REQUIRE_SHARED=1."""
    p = SHARED.joinpath(*parts)
    if not p.exists():
        if os.environ.get("MAMMO_REQUIRE_SHARED") == "1":
            pytest.fail(f"{p} is required (MAMMO_REQUIRE_SHARED=1) but absent")
        pytest.skip(f"{p} absent (../shared not available)")
    return p
