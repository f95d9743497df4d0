"""generic: a lab's own CSV (and the phantom's) -> records; paths, labels, meta, errors with rows."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from support.images import ramp, rect_mask, write_png
from mammo_lib.data.generic_csv import load_generic, parse_label, read_csv_strings
from mammo_lib.data.images import load_record
from mammo_lib.data.records import BENIGN, MALIGNANT, DataError

SHAPE = (24, 32)

# (spelling, label)
LABELS = [("0", BENIGN), ("1", MALIGNANT), ("benign", BENIGN), ("Malignant", MALIGNANT), ("BENIGN", BENIGN),
          ("B", BENIGN), ("m", MALIGNANT), (" 1 ", MALIGNANT)]
BAD_LABELS = ["2", "malign", "yes", "", "0.5"]

# (name, column, value on spreadsheet row 3, message fragment, text the message must name)
ROW_FAILURES = [
    ("unknown_label", "label", "maybe", "unknown label 'maybe'", "cases.csv, row 3"),
    ("missing_image", "image_path", "imgs/gone.png", "image_path file not found", "gone.png"),
    ("missing_mask", "mask_path", "masks/gone.png", "mask_path file not found", "gone.png"),
    ("missing_extra_path", "confounder_mask_path", "conf/gone.png", "confounder_mask_path file not found", "gone.png"),
    ("empty_patient", "patient_id", "", "empty value in column 'patient_id'", "cases.csv, row 3"),
    ("duplicate_case_id", "case_id", "a", "duplicate case_id 'a' (also row 2)", "cases.csv, row 3"),
]


def _dataset(tmp_path: Path, rows: list[dict[str, str]] | None = None, header: list[str] | None = None) -> Path:
    """Three cases with images, masks and a confounder map under tmp_path; cases.csv uses relative paths."""
    for i in range(3):
        write_png(tmp_path / "imgs" / f"case{i}.png", ramp(SHAPE, np.uint16, step=i + 1))
        write_png(tmp_path / "masks" / f"case{i}.png", rect_mask(SHAPE, 2, 2 + i + 1, 3, 7))
    conf = np.zeros(SHAPE, np.uint8)
    conf[10:12, 10:13] = 1
    write_png(tmp_path / "conf" / "case0.png", conf)
    rows = rows if rows is not None else _rows()
    header = header or list(rows[0])
    lines = [",".join(header)] + [",".join(r.get(h, "") for h in header) for r in rows]
    path = tmp_path / "cases.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def _rows() -> list[dict[str, str]]:
    return [
        {"case_id": "a", "image_path": "imgs/case0.png", "mask_path": "masks/case0.png", "label": "malignant",
         "patient_id": "p1", "split": "Train", "has_calcification": "1", "contrast": "0.25",
         "confounder_mask_path": "conf/case0.png", "note": "spiculated"},
        {"case_id": "b", "image_path": "imgs/case1.png", "mask_path": "masks/case1.png", "label": "B",
         "patient_id": "p3", "split": "test", "has_calcification": "0", "contrast": "", "confounder_mask_path": "",
         "note": "True"},
        {"case_id": "", "image_path": "imgs/case2.png", "mask_path": "masks/case2.png", "label": "0",
         "patient_id": "p2", "split": "", "has_calcification": "0", "contrast": "-1e-2", "confounder_mask_path": "",
         "note": "x"},
    ]


@pytest.mark.parametrize("text,label", LABELS)
def test_parse_label(text, label):
    assert parse_label(text) == label


@pytest.mark.parametrize("text", BAD_LABELS)
def test_parse_label_unknown(text):
    with pytest.raises(DataError, match="unknown label") as info:
        parse_label(text, "f.csv", 9)
    assert (info.value.file, info.value.row) == ("f.csv", 9)


def test_load_generic(tmp_path):
    path = _dataset(tmp_path)
    res = load_generic(path)
    assert len(res) == 3 and not res.exclusions
    a, b, c = res.records
    assert [r.case_id for r in res.records] == ["a", "b", "case2_4"]     # default: image stem + row
    assert [r.label for r in res.records] == [MALIGNANT, BENIGN, BENIGN]
    assert [r.split for r in res.records] == ["train", "test", None]
    assert a.image_path == str(tmp_path / "imgs" / "case0.png") and a.source_row == 2 and a.dataset == "cases"
    assert a.meta == {"has_calcification": 1, "contrast": 0.25, "note": "spiculated",
                      "confounder_mask_path": str(tmp_path / "conf" / "case0.png")}
    assert b.meta == {"has_calcification": 0, "contrast": None, "note": True, "confounder_mask_path": None}
    assert c.meta["contrast"] == -0.01
    # through load_record: mask rows 2..2+i, cols 3..6 -> (i + 1) * 4 pixels; confounder map arrives
    cases = [load_record(r) for r in res.records]
    assert [int(cs.mask.sum()) for cs in cases] == [4, 8, 12]
    assert int(cases[0].confounders.sum()) == 6 and cases[1].confounders is None


def test_base_dir(tmp_path):
    path = _dataset(tmp_path / "data")
    moved = tmp_path / "elsewhere" / "cases.csv"
    moved.parent.mkdir()
    moved.write_text(path.read_text())
    with pytest.raises(DataError, match="file not found") as info:
        load_generic(moved)
    assert info.value.row == 2
    res = load_generic(moved, base_dir=tmp_path / "data", dataset="lab")
    assert len(res) == 3 and res.records[0].dataset == "lab"


@pytest.mark.parametrize("name,column,value,fragment,named", ROW_FAILURES, ids=[c[0] for c in ROW_FAILURES])
def test_bad_row(tmp_path, name, column, value, fragment, named):
    rows = _rows()
    rows[1][column] = value
    path = _dataset(tmp_path, rows)
    with pytest.raises(DataError) as info:
        load_generic(path)
    err = info.value
    assert (err.file, err.row) == (str(path), 3)
    assert fragment in str(err) and named in str(err)
    res = load_generic(path, on_error="skip")
    assert len(res.records) + len(res.exclusions) == 3
    assert [e.source_row for e in res.exclusions] == [3] and fragment in res.exclusions[0].reason


@pytest.mark.parametrize("column", ["image_path", "mask_path", "label", "patient_id"])
def test_missing_column(tmp_path, column):
    header = [h for h in _rows()[0] if h != column]
    path = _dataset(tmp_path, header=header)
    with pytest.raises(DataError, match=f"missing required column\\(s\\) \\['{column}'\\]") as info:
        load_generic(path, on_error="skip")
    assert info.value.file == str(path) and info.value.row is None


def test_read_csv_strings_strips_and_fills(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text(' a , b,c\n1, x ,"y\n"\n2\n')
    df = read_csv_strings(path, ["a"])
    assert list(df.columns) == ["a", "b", "c"]
    assert df.to_dict("records") == [{"a": "1", "b": "x", "c": "y"}, {"a": "2", "b": "", "c": ""}]
    path.write_text('a,b\n1,"unterminated\n')
    with pytest.raises(DataError, match="cannot parse CSV") as info:
        read_csv_strings(path)
    assert info.value.file == str(path)
    with pytest.raises(DataError, match="CSV file not found"):
        read_csv_strings(tmp_path / "none.csv")
    with pytest.raises(ValueError, match="on_error"):
        load_generic(_dataset(tmp_path, [dict(_rows()[0], label="x")]), on_error="ignore")
