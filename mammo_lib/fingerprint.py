"""Fingerprints of result tables: a stale committed result can no longer land.

``bash run.sh test`` runs the smoke profile from scratch (under nbval) and then compares the
SHA-256 of every table it wrote (``tables/*.csv``) with ``results/smoke/fingerprint.json``. A
difference means the code no longer produces what was committed: rerun and commit the new
fingerprint when the change is intended::

    bash run.sh reproduce --profile smoke --fresh
    .venv/bin/python -m mammo_lib.fingerprint --write runs/smoke/results results/smoke/fingerprint.json

Tables that hold wall-clock times are left out (:data:`VOLATILE`): they differ on every run.

>>> import tempfile, pathlib
>>> d = pathlib.Path(tempfile.mkdtemp()); (d / "tables").mkdir()
>>> _ = (d / "tables" / "a.csv").write_text("x\\n1\\n")
>>> list(table_fingerprint(d))
['a']
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import Sequence

#: Tables whose content depends on the clock, not on the code and the seed.
VOLATILE = frozenset({"explain_timing"})


def table_fingerprint(results_dir: str | Path) -> dict[str, str]:
    """``{table name: sha256 of its CSV}`` for ``results_dir/tables/*.csv`` minus :data:`VOLATILE`."""
    tables = Path(results_dir) / "tables"
    if not tables.is_dir():
        raise FileNotFoundError(f"{tables} does not exist: run the profile first")
    return {p.stem: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(tables.glob("*.csv")) if p.stem not in VOLATILE}


def compare(results_dir: str | Path, committed: str | Path) -> list[str]:
    """Differences between the tables in ``results_dir`` and the committed fingerprint file, one
    line each (empty when they agree)."""
    want = json.loads(Path(committed).read_text())["tables"]
    have = table_fingerprint(results_dir)
    out = [f"{name}: missing from this run" for name in sorted(set(want) - set(have))]
    out += [f"{name}: new table, not in {committed}" for name in sorted(set(have) - set(want))]
    out += [f"{name}: differs from the committed result" for name in sorted(set(want) & set(have))
            if want[name] != have[name]]
    return out


def write(results_dir: str | Path, committed: str | Path) -> Path:
    """Write the fingerprint of ``results_dir`` to ``committed``."""
    from .io import write_json

    return write_json(Path(committed), {"note": "sha256 of the smoke profile's tables (mammo_lib.fingerprint)",
                                        "tables": table_fingerprint(results_dir)})


def main(argv: Sequence[str] | None = None) -> int:
    """``--check RESULTS FILE`` (exit 1 naming each differing table) or ``--write RESULTS FILE``."""
    ap = argparse.ArgumentParser(prog="python -m mammo_lib.fingerprint", description=__doc__.split("\n\n")[0])
    mode = ap.add_mutually_exclusive_group(required=True)
    mode.add_argument("--check", nargs=2, metavar=("RESULTS_DIR", "FINGERPRINT_JSON"))
    mode.add_argument("--write", nargs=2, metavar=("RESULTS_DIR", "FINGERPRINT_JSON"))
    a = ap.parse_args(argv)
    if a.write:
        print(f"wrote {write(*a.write)}")
        return 0
    diffs = compare(*a.check)
    if diffs:
        print("error: the smoke run does not reproduce the committed results:", file=sys.stderr)
        for d in diffs:
            print(f"  {d}", file=sys.stderr)
        print("if the change is intended: bash run.sh reproduce --profile smoke --fresh && "
              f".venv/bin/python -m mammo_lib.fingerprint --write {a.check[0]} {a.check[1]}", file=sys.stderr)
        return 1
    print(f"fingerprint: {len(json.loads(Path(a.check[1]).read_text())['tables'])} smoke tables reproduce "
          f"the committed ones")
    return 0


if __name__ == "__main__":
    sys.exit(main())
