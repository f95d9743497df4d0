"""cbis_ddsm: real TCIA description CSVs (metadata) and a tiny synthetic DICOM tree (end to end)."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from support.images import ramp, rect_mask, write_dicom
from mammo_lib.data.cbis_ddsm import REQUIRED_COLUMNS, SeriesIndex, load_cbis_ddsm, split_from_filename
from mammo_lib.data.images import load_record, to_unit_float
from mammo_lib.data.records import BENIGN, MALIGNANT, DataError

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "cbis_ddsm"
TRAIN, TEST = FIX / "mass_case_description_train_set.csv", FIX / "mass_case_description_test_set.csv"

# published counts (TCIA CBIS-DDSM mass subset): rows, patients, MALIGNANT/BENIGN/BENIGN_WITHOUT_CALLBACK
REAL_COUNTS = [
    (TRAIN, "train", 1318, 691, (637, 577, 104)),
    (TEST, "test", 378, 201, (147, 194, 37)),
]

SPLIT_NAMES = [
    ("mass_case_description_train_set.csv", "train"),
    ("mass_case_description_test_set.csv", "test"),
    ("Mass-Training-Description.csv", "train"),
    ("my_masses.csv", None),
]

# (name, column, new value on spreadsheet row 3, message fragment)
ROW_FAILURES = [
    ("unknown_pathology", "pathology", "UNPROVEN", "unknown pathology"),
    ("bad_side", "left or right breast", "BOTH", "unknown breast side"),
    ("bad_view", "image view", "ML", "unknown image view"),
    ("bad_abnormality_id", "abnormality id", "x", "not a positive integer"),
    ("empty_image_path", "image file path", "", "empty value in column 'image file path'"),
    ("not_a_mass", "abnormality type", "calcification", "is not a mass"),
]


def _read_rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        return list(reader.fieldnames or []), list(reader)


def _write_rows(path: Path, header: list[str], rows: list[dict[str, str]]) -> Path:
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=header)
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.mark.parametrize("path,split,n_rows,n_patients,pathology", REAL_COUNTS, ids=["train", "test"])
def test_real_csv_counts(path, split, n_rows, n_patients, pathology):
    res = load_cbis_ddsm([path], progress=False)
    df = res.to_frame()
    assert len(res) == n_rows and not res.exclusions
    assert df["patient_id"].nunique() == n_patients
    assert set(df["split"]) == {split}
    counts = df["meta_pathology"].value_counts()
    assert tuple(int(counts[k]) for k in ("MALIGNANT", "BENIGN", "BENIGN_WITHOUT_CALLBACK")) == pathology
    assert int((df["label"] == MALIGNANT).sum()) == pathology[0]
    assert int((df["label"] == BENIGN).sum()) == pathology[1] + pathology[2]
    assert df["case_id"].is_unique
    # quoted embedded newline at the end of the mask path is stripped
    assert not df["mask_path"].str.contains("\n").any()
    assert df["mask_path"].str.endswith(".dcm").all()


def test_real_rows_are_spreadsheet_rows():
    """source_row k is the k-th CSV record (header = 1) although records span two text lines."""
    _, rows = _read_rows(TRAIN)
    res = load_cbis_ddsm(TRAIN, progress=False)
    for rec in res.records[::97]:
        raw = rows[rec.source_row - 2]
        assert rec.patient_id == raw["patient_id"]
        assert rec.case_id == (f"{raw['patient_id']}_{raw['left or right breast']}_{raw['image view']}_"
                               f"{raw['abnormality id']}")
        assert rec.mask_path == raw["ROI mask file path"].strip()
    assert res.records[0].source_row == 2 and res.records[-1].source_row == len(rows) + 1


@pytest.mark.parametrize("name,split", SPLIT_NAMES)
def test_split_from_filename(name, split):
    assert split_from_filename(name) == split


def _small_csv(tmp_path: Path, name: str = "mass_case_description_train_set.csv", n: int = 3,
               change: tuple[str, str] | None = None) -> Path:
    header, rows = _read_rows(TRAIN)
    rows = [dict(r) for r in rows[:n]]
    if change is not None:
        rows[1][change[0]] = change[1]
    return _write_rows(tmp_path / name, header, rows)


@pytest.mark.parametrize("name,column,value,fragment", ROW_FAILURES, ids=[c[0] for c in ROW_FAILURES])
def test_bad_row_raises_with_file_and_row(tmp_path, name, column, value, fragment):
    path = _small_csv(tmp_path, change=(column, value))
    with pytest.raises(DataError, match=fragment) as info:
        load_cbis_ddsm([path], progress=False)
    assert (info.value.file, info.value.row) == (str(path), 3)
    assert f"{path}, row 3" in str(info.value)


@pytest.mark.parametrize("name,column,value,fragment", ROW_FAILURES, ids=[c[0] for c in ROW_FAILURES])
def test_bad_row_skipped_is_recorded(tmp_path, name, column, value, fragment):
    path = _small_csv(tmp_path, change=(column, value))
    res = load_cbis_ddsm([path], on_error="skip", progress=False)
    assert len(res.records) + len(res.exclusions) == 3
    assert [r.source_row for r in res.records] == [2, 4]
    (exc,) = res.exclusions
    assert exc.source_row == 3 and exc.source_file == str(path) and fragment in exc.reason


@pytest.mark.parametrize("column", ["pathology", "ROI mask file path", "patient_id"])
def test_missing_column(tmp_path, column):
    header, rows = _read_rows(TRAIN)
    keep = [h for h in header if h != column]
    path = _write_rows(tmp_path / "x_train_set.csv", keep, [{k: r[k] for k in keep} for r in rows[:2]])
    for on_error in ("raise", "skip"):
        with pytest.raises(DataError, match=column) as info:
            load_cbis_ddsm(path, on_error=on_error, progress=False)
        assert info.value.file == str(path) and info.value.row is None
    assert column in REQUIRED_COLUMNS


def test_duplicate_row(tmp_path):
    header, rows = _read_rows(TRAIN)
    path = _write_rows(tmp_path / "d_train_set.csv", header, [rows[0], rows[1], rows[0]])
    with pytest.raises(DataError, match="duplicate case_id 'P_00001_LEFT_CC_1' \\(also row 2\\)") as info:
        load_cbis_ddsm(path, progress=False)
    assert info.value.row == 4


def test_same_ids_in_two_files_get_the_split(tmp_path):
    a = _small_csv(tmp_path, "mass_case_description_train_set.csv", n=2)
    b = _small_csv(tmp_path, "mass_case_description_test_set.csv", n=3)
    res = load_cbis_ddsm([a, b], progress=False)
    ids = [r.case_id for r in res.records]
    assert ids == ["P_00001_LEFT_CC_1_train", "P_00001_LEFT_MLO_1_train",
                   "P_00001_LEFT_CC_1_test", "P_00001_LEFT_MLO_1_test", "P_00004_LEFT_CC_1"]
    with pytest.raises(ValueError, match="more than once"):
        load_cbis_ddsm([a, a], progress=False)
    # two files of the same split: the split cannot tell the rows apart -> excluded, not dropped
    (tmp_path / "c").mkdir()
    c = _small_csv(tmp_path / "c", "other_train_set.csv", n=1)
    with pytest.raises(DataError, match="occurs in several files"):
        load_cbis_ddsm([a, c], progress=False)
    res = load_cbis_ddsm([a, c], on_error="skip", progress=False)
    assert [r.case_id for r in res.records] == ["P_00001_LEFT_MLO_1"] and len(res.exclusions) == 2


# --- synthetic DICOM tree ------------------------------------------------------------------------
FULL = (64, 80)
CROP = (12, 18)
U = "1.3.6.1.4.1.9590.100.1.2."  # CBIS-DDSM's UID root


def _uid(n: int) -> str:
    return f"{U}{n}"


def _row(patient: str, side: str, view: str, abn: int, pathology: str, full: tuple[int, int],
         crop: tuple[int, int], roi: tuple[int, int], crop_name: str = "000000.dcm",
         roi_name: str = "000001.dcm") -> dict[str, str]:
    """A CSV row; each path is <first>/<study uid>/<series uid>/<file> as in the real CSVs."""
    base = f"Mass-Training_{patient}_{side}_{view}"
    return {
        "patient_id": patient, "breast_density": "2", "left or right breast": side, "image view": view,
        "abnormality id": str(abn), "abnormality type": "mass", "mass shape": "OVAL",
        "mass margins": "CIRCUMSCRIBED", "assessment": "3", "pathology": pathology, "subtlety": "4",
        "image file path": f"{base}/{_uid(full[0])}/{_uid(full[1])}/000000.dcm",
        "cropped image file path": f"{base}_{abn}/{_uid(crop[0])}/{_uid(crop[1])}/{crop_name}",
        "ROI mask file path": f"{base}_{abn}/{_uid(roi[0])}/{_uid(roi[1])}/{roi_name}\n",
    }


def _tcia(root: Path, first: str, series: str, uid: int, arr: np.ndarray, **kw) -> Path:
    """A file in a TCIA-renamed folder: the UID is only in the DICOM header."""
    return write_dicom(root / first / f"07-20-2016-DDSM-{uid % 10000}" / f"1.000000-{series}-{uid % 10000}"
                       / "1-1.dcm", arr, series_uid=_uid(uid), **kw)


@pytest.fixture
def cbis_tree(tmp_path):
    """Five images, six abnormalities:

    A (P_00001 LEFT CC, renamed folder) holds two masses: mass 1's mask and cropped image share a
    series whose folder is named by its UID and whose file names are swapped w.r.t. the CSV; mass 2's
    mask is 000000.dcm in a separate (renamed) series. B is RLE-compressed and its mask is 62x80.
    C has no image-sized mask, D's full image is absent, E has two image-sized files in the mask
    series of which only one is binary.
    """
    root = tmp_path / "CBIS-DDSM"
    img = {k: ramp(FULL, np.uint16, step=s) for k, s in (("A", 3), ("B", 5), ("C", 2), ("E", 7))}
    crop = ramp(CROP, np.uint16, step=11)
    _tcia(root, "Mass-Training_P_00001_LEFT_CC", "full mammogram images", 11, img["A"])
    s1 = root / "Mass-Training_P_00001_LEFT_CC_1" / _uid(12) / _uid(13)
    write_dicom(s1 / "000000.dcm", rect_mask(FULL, 10, 20, 30, 45), series_uid="9.9.9.9.9.1")
    write_dicom(s1 / "000001.dcm", crop, series_uid="9.9.9.9.9.1")
    _tcia(root, "Mass-Training_P_00001_LEFT_CC_2", "cropped images", 15, crop)
    _tcia(root, "Mass-Training_P_00001_LEFT_CC_2", "ROI mask images", 16, rect_mask(FULL, 40, 50, 5, 12))
    _tcia(root, "Mass-Training_P_00002_RIGHT_MLO", "full mammogram images", 21, img["B"], rle=True)
    s2 = root / "Mass-Training_P_00002_RIGHT_MLO_1" / "x" / f"ROI mask images {_uid(23)}"
    write_dicom(s2 / "1-1.dcm", crop)
    write_dicom(s2 / "1-2.dcm", rect_mask((62, 80), 0, 31, 0, 80))
    _tcia(root, "Mass-Training_P_00003_LEFT_MLO", "full mammogram images", 31, img["C"])
    _tcia(root, "Mass-Training_P_00003_LEFT_MLO_1", "ROI mask images", 33, crop)
    write_dicom(root / "Mass-Training_P_00003_LEFT_MLO_1" / "y" / _uid(33) / "2.dcm", rect_mask((30, 40), 1, 5, 1, 5))
    _tcia(root, "Mass-Training_P_00005_LEFT_CC", "full mammogram images", 51, img["E"])
    s5 = root / "Mass-Training_P_00005_LEFT_CC_1" / "z" / _uid(53)
    write_dicom(s5 / "000000.dcm", img["E"])
    write_dicom(s5 / "000001.dcm", rect_mask(FULL, 2, 4, 2, 5))
    rows = [
        _row("P_00001", "LEFT", "CC", 1, "MALIGNANT", (10, 11), (12, 13), (12, 13)),
        _row("P_00001", "LEFT", "CC", 2, "BENIGN", (10, 11), (14, 15), (14, 16)),
        _row("P_00002", "RIGHT", "MLO", 1, "BENIGN_WITHOUT_CALLBACK", (20, 21), (22, 23), (22, 23)),
        _row("P_00003", "LEFT", "MLO", 1, "MALIGNANT", (30, 31), (32, 33), (32, 33)),
        _row("P_00004", "RIGHT", "CC", 1, "BENIGN", (40, 41), (42, 43), (42, 43)),
        _row("P_00005", "LEFT", "CC", 1, "BENIGN", (50, 51), (52, 53), (52, 53)),
    ]
    header, _ = _read_rows(TRAIN)
    csv_path = _write_rows(tmp_path / "mass_case_description_train_set.csv", header, rows)
    return csv_path, root, img


def test_series_index_reads_folder_names_and_headers(cbis_tree):
    _, root, _ = cbis_tree
    index = SeriesIndex(root, progress=False)
    # 11 series folders, 10 distinct UIDs (the P_00003 mask series is split over two folders)
    assert len(index) == 10
    assert [p.name for p in index.get(_uid(13))] == ["000000.dcm", "000001.dcm"]  # folder name, not header
    assert index.get("9.9.9.9.9.1") == []
    assert index.get(_uid(16))[0].parent.name == "1.000000-ROI mask images-16"    # header of a renamed folder
    assert len(index.get(_uid(33))) == 2


def test_tree_raise_names_file_and_row(cbis_tree):
    csv_path, root, _ = cbis_tree
    with pytest.raises(DataError, match="no ROI mask of the full image's size 64x80") as info:
        load_cbis_ddsm([csv_path], root, progress=False)
    assert (info.value.file, info.value.row) == (str(csv_path), 5)


def test_tree_end_to_end(cbis_tree):
    csv_path, root, img = cbis_tree
    res = load_cbis_ddsm([csv_path], root, on_error="skip", progress=False)
    assert len(res.records) + len(res.exclusions) == 6
    assert [(e.source_row, e.case_id) for e in res.exclusions] == [(5, "P_00003_LEFT_MLO_1"), (6, "P_00004_RIGHT_CC_1")]
    assert "no ROI mask of the full image's size" in res.exclusions[0].reason
    assert f"series {_uid(41)} of 'image file path'" in res.exclusions[1].reason
    recs = {r.case_id: r for r in res.records}
    assert list(recs) == ["P_00001_LEFT_CC_1", "P_00001_LEFT_CC_2", "P_00002_RIGHT_MLO_1", "P_00005_LEFT_CC_1"]
    a1, a2, b, e = recs.values()
    assert a1.image_path == a2.image_path and Path(a1.image_path).name == "1-1.dcm"
    assert Path(a1.mask_path).name == "000000.dcm"          # by content: the CSV names 000001.dcm
    assert Path(e.mask_path).name == "000001.dcm"           # the binary one of two image-sized files
    assert (b.meta["image_size"], b.meta["mask_size"]) == (FULL, (62, 80))
    assert [r.label for r in recs.values()] == [MALIGNANT, BENIGN, BENIGN, BENIGN]
    assert b.meta["pathology"] == "BENIGN_WITHOUT_CALLBACK" and b.meta["assessment"] == 3

    # (record, image array, mask pixel count, notes) -- counts by hand from the rectangles above
    expected = [(a1, img["A"], 10 * 15, []), (a2, img["A"], 10 * 7, []),
                (b, img["B"], 32 * 80, ["mask resized from 62x80 to 64x80 (nearest)"]), (e, img["E"], 2 * 3, [])]
    for rec, arr, count, notes in expected:
        case = load_record(rec)
        np.testing.assert_array_equal(case.image, to_unit_float(arr))
        assert int(case.mask.sum()) == count and case.notes == notes


def test_unreadable_renamed_folder(cbis_tree):
    """A renamed series folder whose only file is not DICOM: raise names the file; skip names the cause."""
    csv_path, root, _ = cbis_tree
    bad = next(root.glob("Mass-Training_P_00005_LEFT_CC/*/*/1-1.dcm"))
    bad.write_bytes(b"\0" * 10)
    with pytest.raises(DataError, match="unreadable DICOM file") as info:
        load_cbis_ddsm([csv_path], root, progress=False)
    assert info.value.file == str(bad)
    res = load_cbis_ddsm([csv_path], root, on_error="skip", progress=False)
    assert len(res.records) + len(res.exclusions) == 6
    exc = res.exclusions[-1]
    assert exc.source_row == 7 and "not found" in exc.reason and "could not be indexed" in exc.reason and "unreadable DICOM file" in exc.reason
