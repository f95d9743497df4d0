"""The committed smoke results and the check that a fresh run reproduces them.

``bash run.sh test`` runs the smoke profile from scratch (under nbval) and then compares every
table it wrote (``tables/*.csv``) and every sentence file (``tables/*.notes.md``: the verdicts)
with the committed copies in ``results/smoke/tables/``. A difference means the code no longer
produces what was committed: rerun and commit the new results when the change is intended::

    bash run.sh reproduce --profile smoke --fresh
    .venv/bin/python -m mammo_lib.repro.fingerprint --write runs/smoke/results results/smoke

**What the check promises** (``docs/DECISIONS.md``, "Same numbers on every CPU"). On an x86-64
CPU with AVX2 the package pins the kernels (:mod:`mammo_lib.numerics`), and the run is expected to
be bit-identical: the check says so when every file's SHA-256 matches. Where it is not (another
instruction set, another oneDNN blocking), the check compares what can be promised:

- every **decision** exactly: text, labels, booleans (gates), integers (counts, folds, confusion
  cells), and every number written inside text (verdicts, "beta per fold") up to one unit in its
  last printed digit;
- every other number within :data:`RTOL` relative plus :data:`ATOL` absolute. Measured: the
  smoke profile computes in float64 (its ``precision``), and with all three kernel settings lowered
  11 of its 37 files moved, by at most 8 % of the tolerance, no decision; a change of one loss term
  fails the check in 10 files (``tests/repro/test_fingerprint.py`` shows both on a probe).

In float32 the tolerance would not be a promise across kernels: there a training under other
kernels is another draw. A rounding-level difference can flip one ReLU in the first step, and
Adam's first update (``lr * sign(g)`` for every weight, however small its gradient) turns that into
weight changes of the order of the learning rate (measured on the smoke's generic trunk of seed 1
in float32: 5e-7 -> 2e-2 after one step); float64 makes such a flip improbable. A failing check
also says whether the run's kernels (:func:`mammo_lib.numerics.describe`) are those of the
committed run: if they are, the difference is the code's; if not, it may be the kernels'.

A failing check names, for each differing table, the columns, the largest difference, its row
and the tolerance.

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
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

#: Tables whose content depends on the clock, not on the code and the seed.
VOLATILE = frozenset({"explain_timing"})
#: Tolerance for numbers that are not decisions: ``|run - committed| <= ATOL + RTOL * |committed|``.
RTOL = 2e-3
ATOL = 1e-6
#: File patterns under ``tables/`` that the check compares.
PATTERNS = ("*.csv", "*.notes.md")

_NUMBER = re.compile(r"[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?")


def _files(results_dir: Path) -> dict[str, Path]:
    tables = Path(results_dir) / "tables"
    if not tables.is_dir():
        raise FileNotFoundError(f"{tables} does not exist: run the profile first")
    out: dict[str, Path] = {}
    for pat in PATTERNS:
        for p in sorted(tables.glob(pat)):
            name = p.name[: -len(".csv")] if p.suffix == ".csv" else p.name
            if name not in VOLATILE:
                out[name] = p
    return dict(sorted(out.items()))


def table_fingerprint(results_dir: str | Path) -> dict[str, str]:
    """``{table name: sha256}`` for ``results_dir/tables/*.csv`` (name without ``.csv``) and
    ``*.notes.md`` (full name), minus :data:`VOLATILE`."""
    return {name: hashlib.sha256(p.read_bytes()).hexdigest() for name, p in _files(Path(results_dir)).items()}


@dataclass(frozen=True)
class Difference:
    """One table's difference: ``kind`` is ``missing``, ``new``, ``shape`` or ``values``; for
    ``values`` the column, how many cells differ, the largest difference, its row (0-based data
    row) and the tolerance that was exceeded (``"exact"`` for decisions)."""

    table: str
    kind: str
    column: str = ""
    cells: int = 0
    largest: float = 0.0
    row: int = -1
    have: str = ""
    want: str = ""
    tolerance: str = ""

    def __str__(self) -> str:
        if self.kind == "missing":
            return f"{self.table}: missing from this run"
        if self.kind == "new":
            return f"{self.table}: new table, not committed"
        if self.kind == "shape":
            return f"{self.table}: {self.have} here, {self.want} committed"
        size = "" if math.isnan(self.largest) else f", largest difference {self.largest:.3g}"
        return (f"{self.table}: column {self.column!r}: {self.cells} cell(s) differ{size} (row {self.row}: "
                f"{self.have} here, {self.want} committed; tolerance {self.tolerance})")


def _close(a: float, b: float, rtol: float, atol: float) -> bool:
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    if math.isinf(a) or math.isinf(b):
        return a == b
    return abs(a - b) <= atol + rtol * abs(b)


def _ulp(token: str) -> float:
    """One unit in the last printed digit of a decimal number token (0 for integers)."""
    mant = re.split(r"[eE]", token)[0]
    if "." not in mant:
        return 0.0
    dec = len(mant.split(".", 1)[1])
    exp = int(re.split(r"[eE]", token)[1]) if re.search(r"[eE]", token) else 0
    return 10.0 ** (exp - dec)


def text_difference(have: str, want: str, rtol: float = RTOL, atol: float = ATOL) -> Optional[float]:
    """Compare two texts: the words must be equal, integers equal, decimal numbers within the
    tolerance or one unit in their last printed digit. ``None`` when they agree; otherwise the
    largest numeric difference (``nan`` when the words or the count of numbers differ).

    >>> text_difference("p = 0.18, beta 8", "p = 0.19, beta 8") is None
    True
    >>> text_difference("beta 8", "beta 2")
    6.0
    >>> text_difference("helps", "no effect")
    nan
    """
    if have == want:
        return None
    hw, ww = _NUMBER.split(have), _NUMBER.split(want)
    hn, wn = _NUMBER.findall(have), _NUMBER.findall(want)
    if hw != ww or len(hn) != len(wn):
        return float("nan")
    worst = None
    for h, w in zip(hn, wn):
        a, b = float(h), float(w)
        ulp = max(_ulp(h), _ulp(w))
        ok = (a == b) if ulp == 0 else (abs(a - b) <= ulp * (1 + 1e-9) or _close(a, b, rtol, atol))
        if not ok:
            worst = max(worst or 0.0, abs(a - b))
    return worst


def _compare_csv(name: str, have: Path, want: Path, rtol: float, atol: float) -> list[Difference]:
    import pandas as pd

    h = pd.read_csv(have, keep_default_na=False, na_values=["", "nan", "NaN"])
    w = pd.read_csv(want, keep_default_na=False, na_values=["", "nan", "NaN"])
    if list(h.columns) != list(w.columns) or len(h) != len(w):
        return [Difference(name, "shape", have=f"{len(h)} rows x columns {list(h.columns)}",
                           want=f"{len(w)} rows x columns {list(w.columns)}")]
    out = []
    for col in w.columns:
        hc, wc = h[col], w[col]
        numeric = pd.api.types.is_numeric_dtype(hc) and pd.api.types.is_numeric_dtype(wc)
        decision = (pd.api.types.is_bool_dtype(hc) or pd.api.types.is_bool_dtype(wc)
                    or (pd.api.types.is_integer_dtype(hc) and pd.api.types.is_integer_dtype(wc)))
        bad, worst, first = 0, -1.0, None
        for i, (a, b) in enumerate(zip(hc.tolist(), wc.tolist())):
            if numeric and not decision:
                fa, fb = float(a), float(b)
                ok = _close(fa, fb, rtol, atol)
                d = abs(fa - fb) if not (math.isnan(fa) or math.isnan(fb)) else float("nan")
            elif numeric:
                ok, d = a == b, abs(float(a) - float(b))
            else:
                d = text_difference(str(a), str(b), rtol, atol) if not (a == b) else None
                ok = d is None
                d = float("nan") if d is None else d
            if not ok:
                bad += 1
                key = -1.0 if math.isnan(d) else d
                if first is None or key > worst:
                    worst, first = key, (i, a, b, d)
        if bad:
            i, a, b, d = first
            tol = "exact (a decision)" if decision else (
                f"{rtol:g} relative + {atol:g}" if numeric else "words equal, numbers within the last printed digit")
            out.append(Difference(name, "values", column=str(col), cells=bad, largest=float(d), row=i,
                                  have=repr(a), want=repr(b), tolerance=tol))
    return out


def compare(results_dir: str | Path, committed: str | Path, *, rtol: float = RTOL,
            atol: float = ATOL) -> tuple[list[Difference], bool]:
    """Compare the tables of ``results_dir`` with the committed folder ``committed`` (holding
    ``tables/`` and ``fingerprint.json``). Returns the differences beyond the promise (empty
    when it holds) and whether every file is bit-identical."""
    have, want = _files(Path(results_dir)), _files(Path(committed))
    out = [Difference(n, "missing") for n in want if n not in have]
    out += [Difference(n, "new") for n in have if n not in want]
    identical = not out
    for name in [n for n in want if n in have]:
        if have[name].read_bytes() == want[name].read_bytes():
            continue
        identical = False
        if name.endswith(".notes.md"):
            hl, wl = have[name].read_text().splitlines(), want[name].read_text().splitlines()
            if len(hl) != len(wl):
                out.append(Difference(name, "shape", have=f"{len(hl)} lines", want=f"{len(wl)} lines"))
                continue
            for i, (a, b) in enumerate(zip(hl, wl)):
                d = text_difference(a, b, rtol, atol)
                if d is not None:
                    out.append(Difference(name, "values", column=f"line {i + 1}", cells=1, largest=d, row=i,
                                          have=repr(a[:120]), want=repr(b[:120]),
                                          tolerance="words equal, numbers within the last printed digit"))
        else:
            out += _compare_csv(name, have[name], want[name], rtol, atol)
    return out, identical


def write(results_dir: str | Path, committed: str | Path) -> Path:
    """Copy the tables of ``results_dir`` to ``committed/tables/`` (replacing the old copies) and
    write ``committed/fingerprint.json`` (their SHA-256 and the numeric environment of the run)."""
    from mammo_lib.utils.files import atomic_dir, write_json
    from mammo_lib.numerics import describe
    import shutil

    committed = Path(committed)
    files = _files(Path(results_dir))

    def build(tmp: Path) -> None:
        for p in files.values():
            shutil.copyfile(p, tmp / p.name)

    atomic_dir(committed / "tables", build)
    numerics = _numerics_of(Path(results_dir), "provenance.json") or describe()
    return write_json(committed / "fingerprint.json",
                      {"note": "sha256 of the smoke profile's tables (mammo_lib.repro.fingerprint); copies in tables/; "
                               "numerics: the kernels of the run that wrote them",
                       "numerics": numerics, "tables": table_fingerprint(results_dir)})


#: The settings of :func:`mammo_lib.numerics.describe` that choose the kernels' arithmetic.
KERNEL_KEYS = ("aten capability", "onednn max isa", "mkl cbwr", "numpy simd", "torch threads")


def _numerics_of(folder: Path, name: str) -> dict[str, Any] | None:
    """The numerics recorded in ``folder/name`` (``fingerprint.json``: ``numerics``;
    ``provenance.json``: its environment's ``numerics`` entry), or ``None``."""
    f = folder / name
    if not f.exists():
        return None
    try:
        d = json.loads(f.read_text())
    except (OSError, ValueError):
        return None
    if "numerics" in d:
        return d["numerics"]
    env = d.get("environment", {})
    return next((v for k, v in env.items() if k.startswith("numerics") and isinstance(v, dict)), None)


def kernel_note(results_dir: str | Path, committed: str | Path) -> str:
    """One sentence on whether the run's kernels are those of the committed run (a difference is
    then the code's) or not (it may be the kernels': a training under other kernels is another
    draw; module docstring)."""
    here, there = _numerics_of(Path(results_dir), "provenance.json"), _numerics_of(Path(committed), "fingerprint.json")
    if here is None or there is None:
        return "the kernels of this run or of the committed one are not recorded: cannot say whether they match"
    diff = [k for k in KERNEL_KEYS if str(here.get(k)).upper() != str(there.get(k)).upper()]
    if not diff:
        return ("this run used the committed run's kernels (" + ", ".join(f"{k} {here.get(k)}" for k in KERNEL_KEYS)
                + "): the difference comes from the code or the data, not from the CPU")
    return ("this run's kernels are not the committed run's (" + "; ".join(
        f"{k}: {here.get(k)} here, {there.get(k)} committed" for k in diff) + "): under other kernels a training is "
            "another draw and tables downstream of it can differ beyond the tolerance (docs/DECISIONS.md, "
            "\"Same numbers on every CPU\"); run on a CPU with AVX2 and without MAMMO_NUMERICS=native to compare")


def main(argv: Sequence[str] | None = None) -> int:
    """``--check RESULTS COMMITTED`` (exit 1 naming each table, column and size of a difference)
    or ``--write RESULTS COMMITTED``."""
    ap = argparse.ArgumentParser(prog="python -m mammo_lib.repro.fingerprint", description=__doc__.split("\n\n")[0])
    mode = ap.add_mutually_exclusive_group(required=True)
    mode.add_argument("--check", nargs=2, metavar=("RESULTS_DIR", "COMMITTED_DIR"),
                      help="compare a run's tables with the committed ones (results/smoke)")
    mode.add_argument("--write", nargs=2, metavar=("RESULTS_DIR", "COMMITTED_DIR"),
                      help="commit a run's tables: copy them and write fingerprint.json")
    a = ap.parse_args(argv)
    if a.write:
        print(f"wrote {write(*a.write)}")
        return 0
    results, committed = (Path(p) for p in a.check)
    if committed.suffix == ".json":  # the old form named the fingerprint file
        committed = committed.parent
    try:
        diffs, identical = compare(results, committed)
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    n = len(_files(committed))
    if diffs:
        print("error: the smoke run does not reproduce the committed results:", file=sys.stderr)
        for d in diffs:
            print(f"  {d}", file=sys.stderr)
        print(f"note: {kernel_note(results, committed)}", file=sys.stderr)
        print("if the change is intended: bash run.sh reproduce --profile smoke --fresh && "
              f".venv/bin/python -m mammo_lib.repro.fingerprint --write {results} {committed}", file=sys.stderr)
        return 1
    if identical:
        print(f"fingerprint: {n} smoke tables reproduce the committed ones bit for bit")
    else:
        print(f"fingerprint: {n} smoke tables reproduce the committed ones within the stated tolerances "
              f"(decisions equal, other numbers within {RTOL:g} relative; not bit-identical: another CPU "
              f"kernel path, see docs/DECISIONS.md)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
