"""Tests of mammo_lib.repro.fingerprint: the committed smoke tables, the check that names each table,
column and size of a difference, what it promises across CPUs (decisions equal, numbers within
the tolerance), and that it still catches a deliberate change of a loss term."""
from __future__ import annotations

import json

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mammo_lib.repro.fingerprint import ATOL, RTOL, VOLATILE, compare, main, table_fingerprint, text_difference, write

ROOT = Path(__file__).resolve().parents[2]
PROBE = ROOT / "tests" / "scripts" / "fingerprint_probe.py"

A_CSV = "spec,fold,acc,prob,passes,beta per fold\nft,0,0.75,0.123456789,True,\"0, 8\"\nkt,0,0.5,0.5,False,\"8, 8\"\n"

# (change applied to the run after it was committed, expected difference line or None when the promise holds)
DIFF_CASES = [
    ("float within tolerance", ("0.123456789", f"{0.123456789 * (1 + RTOL / 2):.9f}"), None),
    ("float beyond tolerance", ("0.123456789", "0.1240"),
     "a: column 'prob': 1 cell(s) differ, largest difference 0.000543 (row 0: 0.124 here, 0.123456789 committed; "
     f"tolerance {RTOL:g} relative + {ATOL:g})"),
    ("accuracy of one more case", ("0.75", "0.8"), "a: column 'acc': 1 cell(s) differ, largest difference 0.05"),
    ("integer", ("ft,0", "ft,1"), "a: column 'fold': 1 cell(s) differ, largest difference 1 (row 0: 1 here, 0 committed; "
                                  "tolerance exact (a decision))"),
    ("gate", ("True", "False"), "a: column 'passes': 1 cell(s) differ"),
    ("label", ("kt,0", "xx,0"), "a: column 'spec': 1 cell(s) differ (row 1: 'xx' here, 'kt' committed;"),
    ("number in text", ("\"0, 8\"", "\"0, 2\""), "a: column 'beta per fold': 1 cell(s) differ, largest difference 6"),
    ("remove b", None, "b: missing from this run"),
    ("add c", None, "c: new table, not committed"),
    ("edit timing", None, None),   # volatile: ignored
    ("verdict words", None, "summary.notes.md: column 'line 1': 1 cell(s) differ (row 0:"),
    ("verdict last digit", None, None),
]

TEXT_CASES = [  # have, want, expected
    ("p = 0.18", "p = 0.18", None),
    ("63.0 %", "63.1 %", None),            # one unit in the last printed digit: rounding of float noise
    ("63.0 %", "63.2 %", pytest.approx(0.2)),
    ("beta 8", "beta 2", 6.0),             # integers are decisions
    ("helps", "no effect", "nan"),
    ("1e-05", "1.0e-05", None),
]


def _results(tmp_path: Path) -> Path:
    t = tmp_path / "r" / "tables"
    t.mkdir(parents=True)
    (t / "a.csv").write_text(A_CSV)
    (t / "b.csv").write_text("y\n2\n")
    (t / "explain_timing.csv").write_text("seconds\n0.1\n")
    (t / "summary.notes.md").write_text("- Condition B: +1.8 points, p = 0.37. **No effect.**\n")
    return tmp_path / "r"


def test_hashes_by_hand(tmp_path):
    r = _results(tmp_path)
    fp = table_fingerprint(r)
    assert set(fp) == {"a", "b", "summary.notes.md"} and "explain_timing" in VOLATILE
    assert fp["b"] == hashlib.sha256(b"y\n2\n").hexdigest()


@pytest.mark.parametrize("name,edit,want", DIFF_CASES)
def test_compare_names_table_column_and_size(tmp_path, name, edit, want):
    r = _results(tmp_path)
    write(r, tmp_path / "committed")
    assert compare(r, tmp_path / "committed") == ([], True)
    t = r / "tables"
    if edit is not None:
        old, new = edit
        text = (t / "a.csv").read_text()
        assert old in text
        (t / "a.csv").write_text(text.replace(old, new, 1))
    else:
        {"remove b": lambda: (t / "b.csv").unlink(), "add c": lambda: (t / "c.csv").write_text("z\n"),
         "edit timing": lambda: (t / "explain_timing.csv").write_text("seconds\n7\n"),
         "verdict words": lambda: (t / "summary.notes.md").write_text(
             "- Condition B: +1.8 points, p = 0.37. **Knowledge transfer helps.**\n"),
         "verdict last digit": lambda: (t / "summary.notes.md").write_text(
             "- Condition B: +1.9 points, p = 0.38. **No effect.**\n")}[name]()
    diffs, identical = compare(r, tmp_path / "committed")
    if want is None:
        assert diffs == []
        assert identical == (name == "edit timing")
    else:
        assert len(diffs) == 1 and not identical
        assert str(diffs[0]).startswith(want), str(diffs[0])


@pytest.mark.parametrize("have,want,expected", TEXT_CASES)
def test_text_difference(have, want, expected):
    got = text_difference(have, want)
    if expected == "nan":
        assert got != got  # nan: the words differ
    else:
        assert got == expected


def test_shape_change_is_named(tmp_path):
    r = _results(tmp_path)
    write(r, tmp_path / "committed")
    (r / "tables" / "b.csv").write_text("y\n2\n3\n")
    diffs, _ = compare(r, tmp_path / "committed")
    assert [str(d) for d in diffs] == ["b: 2 rows x columns ['y'] here, 1 rows x columns ['y'] committed"]


def test_write_replaces_the_committed_copies(tmp_path):
    r = _results(tmp_path)
    write(r, tmp_path / "committed")
    (r / "tables" / "b.csv").unlink()
    write(r, tmp_path / "committed")
    assert sorted(p.name for p in (tmp_path / "committed" / "tables").iterdir()) == ["a.csv", "summary.notes.md"]


def test_cli_check_exit_status_and_message(tmp_path, capsys):
    r = _results(tmp_path)
    assert main(["--write", str(r), str(tmp_path / "committed")]) == 0
    assert main(["--check", str(r), str(tmp_path / "committed")]) == 0
    assert "bit for bit" in capsys.readouterr().out
    text = (r / "tables" / "a.csv").read_text()
    (r / "tables" / "a.csv").write_text(text.replace("0.123456789", f"{0.123456789 * (1 + RTOL / 2):.9f}"))
    assert main(["--check", str(r), str(tmp_path / "committed")]) == 0
    assert "within the stated tolerances" in capsys.readouterr().out
    (r / "tables" / "a.csv").write_text(text.replace("0.123456789", "0.2"))
    assert main(["--check", str(r), str(tmp_path / "committed" / "fingerprint.json")]) == 1  # old form: the file
    err = capsys.readouterr().err
    assert "a: column 'prob': 1 cell(s) differ, largest difference 0.0765" in err
    assert "note: the kernels of this run or of the committed one are not recorded" in err
    # the note says whether the run's kernels are the committed run's
    committed = json.loads((tmp_path / "committed" / "fingerprint.json").read_text())["numerics"]
    for numerics, want in [(committed, "this run used the committed run's kernels (aten capability "),
                           ({**committed, "aten capability": "DEFAULT", "torch threads": committed["torch threads"] + 1},
                            f"this run's kernels are not the committed run's (aten capability: DEFAULT here, "
                            f"{committed['aten capability']} committed; torch threads: {committed['torch threads'] + 1} "
                            f"here, {committed['torch threads']} committed)")]:
        (r / "provenance.json").write_text(json.dumps({"environment": {"numerics (CPU kernels)": numerics}}))
        assert main(["--check", str(r), str(tmp_path / "committed")]) == 1
        assert want in capsys.readouterr().err


def test_missing_results_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match="run the profile first"):
        table_fingerprint(tmp_path / "nothing")
    assert main(["--check", str(tmp_path / "nothing"), str(tmp_path)]) == 2
    assert "run the profile first" in capsys.readouterr().err


# ----------------------------------------------------------------- another CPU, emulated
LOWER = {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41", "MKL_CBWR": "COMPATIBLE"}


def _probe(out: Path, env: dict[str, str], *extra: str) -> Path:
    clean = {k: v for k, v in os.environ.items() if k not in LOWER}
    subprocess.run([sys.executable, str(PROBE), str(out), *extra], check=True, timeout=300, cwd=ROOT,
                   env={**clean, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **env})
    return out


@pytest.mark.skipif("avx2" not in Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else True,
                    reason="needs an x86-64 CPU with AVX2 (the pinned setting) to emulate a lower one")
def test_another_capability_passes_and_a_loss_change_fails(tmp_path):
    pinned = _probe(tmp_path / "pinned", {})
    again = _probe(tmp_path / "again", {})
    lower = _probe(tmp_path / "lower", LOWER)
    mutated = _probe(tmp_path / "mutated", {}, "--mutate-loss")
    assert compare(again, pinned) == ([], True)                  # same settings: bit for bit
    diffs, identical = compare(lower, pinned)
    assert not identical, "the lower capability should change the float sums (else this test shows nothing)"
    assert diffs == []                                         # ... but within the promise
    diffs, _ = compare(mutated, pinned)
    assert any(d.table == "probe" and d.column == "prob_malignant" and d.largest > 5 * RTOL for d in diffs), \
        [str(d) for d in diffs]


def _largest_change(a: Path, b: Path) -> float:
    import pandas as pd

    pa, pb = (pd.read_csv(d / "tables" / "probe.csv")["prob_malignant"].to_numpy() for d in (a, b))
    return float(abs(pa - pb).max())


@pytest.mark.skipif("avx2" not in Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else True,
                    reason="needs an x86-64 CPU with AVX2 (the pinned setting) to emulate a lower one")
def test_float64_makes_the_kernels_effect_vanish(tmp_path):
    """The smoke profile's ``precision: float64``: the same training under the lower capability
    moves the probabilities by float64 rounding (measured 6e-17) where float32 moves them by float32
    rounding grown through training (measured 2e-7); neither changes a decision."""
    f32 = _largest_change(_probe(tmp_path / "f32", {}), _probe(tmp_path / "f32_lower", LOWER))
    f64 = _largest_change(_probe(tmp_path / "f64", {}, "--float64"), _probe(tmp_path / "f64_lower", LOWER, "--float64"))
    assert f32 > 1e-9, f"the lower capability should move float32 sums (else this shows nothing): {f32:g}"
    assert f64 < 1e-12 and f64 < f32 * 1e-4, (f32, f64)
    import pandas as pd

    p32, p64 = (pd.read_csv(tmp_path / d / "tables" / "probe.csv") for d in ("f32", "f64"))
    assert (p64["prob_malignant"].between(0, 1)).all() and len(p64) == len(p32)  # the same table, in float64
