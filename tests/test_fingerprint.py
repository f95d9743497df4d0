"""Tests of mammo_lib.fingerprint: hashes of result tables, volatile tables left out, and the
check naming every differing, missing or new table."""
from __future__ import annotations

import hashlib

import pytest

from mammo_lib.fingerprint import VOLATILE, compare, main, table_fingerprint, write

# (change applied to the run after the fingerprint was written, expected difference line)
DIFF_CASES = [
    ("edit a", "a: differs from the committed result"),
    ("remove b", "b: missing from this run"),
    ("add c", "c: new table"),
    ("edit timing", None),   # volatile: ignored
]


def _results(tmp_path):
    t = tmp_path / "r" / "tables"
    t.mkdir(parents=True)
    (t / "a.csv").write_text("x\n1\n")
    (t / "b.csv").write_text("y\n2\n")
    (t / "explain_timing.csv").write_text("seconds\n0.1\n")
    return tmp_path / "r"


def test_hashes_by_hand(tmp_path):
    r = _results(tmp_path)
    fp = table_fingerprint(r)
    assert set(fp) == {"a", "b"} and "explain_timing" in VOLATILE
    assert fp["a"] == hashlib.sha256(b"x\n1\n").hexdigest()


@pytest.mark.parametrize("change,want", DIFF_CASES)
def test_compare_names_each_difference(tmp_path, change, want):
    r = _results(tmp_path)
    committed = write(r, tmp_path / "fp.json")
    assert compare(r, committed) == []
    t = r / "tables"
    {"edit a": lambda: (t / "a.csv").write_text("x\n9\n"), "remove b": lambda: (t / "b.csv").unlink(),
     "add c": lambda: (t / "c.csv").write_text("z\n"),
     "edit timing": lambda: (t / "explain_timing.csv").write_text("seconds\n7\n")}[change]()
    diffs = compare(r, committed)
    if want is None:
        assert diffs == []
    else:
        assert len(diffs) == 1 and diffs[0].startswith(want)


def test_cli_check_exit_status(tmp_path, capsys):
    r = _results(tmp_path)
    assert main(["--write", str(r), str(tmp_path / "fp.json")]) == 0
    assert main(["--check", str(r), str(tmp_path / "fp.json")]) == 0
    (r / "tables" / "a.csv").write_text("changed\n")
    assert main(["--check", str(r), str(tmp_path / "fp.json")]) == 1
    assert "a: differs" in capsys.readouterr().err


def test_missing_results_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="run the profile first"):
        table_fingerprint(tmp_path / "nothing")
