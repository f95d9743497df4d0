"""imageio: readers (PNG/TIFF/DICOM incl. RLE and MONOCHROME1), unit scaling, masks, load_record."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from support.images import ramp, rect_mask, truncate, write_dicom, write_png, write_tiff
from mammo_lib.data.images import (LoadedCase, binary_mask, load_record, read_dicom_header, read_image,
                               resize_nearest, to_unit_float)
from mammo_lib.data.records import DataError, MassRecord

SHAPE = (16, 20)
A16 = ramp(SHAPE, np.uint16, step=7)          # 0 .. 2233, all distinct
A8 = (ramp(SHAPE, np.int64) % 251).astype(np.uint8)  # 8-bit values

# --- read_image: (name, writer, array, expected pixels) -----------------------------------
READ_CASES = [
    ("png8", lambda p: write_png(p / "a.png", A8), A8),
    ("png16", lambda p: write_png(p / "a.png", A16), A16),
    ("tiff16", lambda p: write_tiff(p / "a.tif", A16), A16),
    ("dicom", lambda p: write_dicom(p / "a.dcm", A16), A16),
    ("dicom_rle", lambda p: write_dicom(p / "a.dcm", A16, rle=True), A16),
    # MONOCHROME1 with 12 stored bits: inverted within [0, 4095]
    ("dicom_mono1", lambda p: write_dicom(p / "a.dcm", A16, photometric="MONOCHROME1", bits_stored=12),
     (4095 - A16.astype(np.int64)).astype(np.uint16)),
    ("dicom_no_suffix", lambda p: write_dicom(p / "a", A16), A16),
    ("tiff_named_png", lambda p: write_tiff(p / "a.png", A16), A16),       # content decides, not the name
    ("rgb_grey_png", lambda p: write_png(p / "a.png", np.repeat(A8[..., None], 3, axis=2)), A8),
]


def _bad_dicom_truncated(p: Path, rle: bool) -> Path:
    return truncate(write_dicom(p / "a.dcm", A16, rle=rle), -100)


def _garbage(p: Path) -> Path:
    (p / "a.png").write_bytes(b"not an image at all")
    return p / "a.png"


# --- read_image failures: (name, writer, exception, message fragment) -----------------------
READ_FAILURES = [
    ("missing", lambda p: p / "nope.png", DataError, "image file not found"),
    ("truncated_png", lambda p: truncate(write_png(p / "a.png", A16), 60), DataError, "cannot read image"),
    ("truncated_tiff", lambda p: truncate(write_tiff(p / "a.tif", A16), -100), DataError, "cannot read image"),
    ("truncated_dicom", lambda p: _bad_dicom_truncated(p, False), DataError, "cannot read image"),
    ("truncated_rle_dicom", lambda p: _bad_dicom_truncated(p, True), DataError, "cannot read image"),
    ("garbage", _garbage, DataError, "cannot read image"),
    ("multiframe", lambda p: write_dicom(p / "a.dcm", A16, frames=2), DataError, "multi-frame"),
    ("colour", lambda p: write_png(p / "a.png", np.stack([A8, A8 // 2, A8], axis=2)), DataError, "colour"),
]

# --- to_unit_float: (name, array, kwargs, expected) -- hand computed ------------------------
UNIT_CASES = [
    ("minmax_u8", np.array([[0, 50], [100, 200]], np.uint8), {"intensity": "minmax"}, [[0, 0.25], [0.5, 1]]),
    ("minmax_offset", np.array([[10, 20], [30, 50]], np.uint16), {"intensity": "minmax"}, [[0, 0.25], [0.5, 1]]),
    ("minmax_constant", np.full((2, 2), 7, np.uint16), {"intensity": "minmax"}, [[0, 0], [0, 0]]),
    ("dtype_u8", np.array([[0, 51], [255, 102]], np.uint8), {"intensity": "dtype"}, [[0, 0.2], [1, 0.4]]),
    ("dtype_bits12", np.array([[0, 4095], [1365, 2730]], np.uint16), {"intensity": "dtype", "bits": 12},
     [[0, 1], [1 / 3, 2 / 3]]),
    ("dtype_u16", np.array([[0, 65535]], np.uint16), {"intensity": "dtype"}, [[0, 1]]),
    ("dtype_float", np.array([[0.0, 0.5]], np.float64), {"intensity": "dtype"}, [[0, 0.5]]),
    # percentiles 10/90 of 0..10 are 1 and 9: (x - 1) / 8, clipped
    ("percentile_clip", np.arange(11, dtype=np.uint16).reshape(1, 11),
     {"intensity": "percentile", "percentiles": (10, 90)},
     [[0, 0, 0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1, 1]]),
]
UNIT_FAILURES = [
    ("nan", np.array([[0.0, np.nan]]), {}, ValueError),
    ("unknown_mode", np.zeros((2, 2), np.uint8), {"intensity": "zscore"}, ValueError),
    ("above_bits", np.array([[0, 5000]], np.uint16), {"intensity": "dtype", "bits": 12}, ValueError),
    ("float_out_of_range", np.array([[0.0, 2.0]]), {"intensity": "dtype"}, ValueError),
    ("bad_percentiles", np.zeros((2, 2), np.uint8), {"intensity": "percentile", "percentiles": (90, 10)}, ValueError),
    ("three_d", np.zeros((2, 2, 2), np.uint8), {}, ValueError),
    ("strings", np.array([["a", "b"]]), {}, TypeError),
]

# --- binary_mask: (name, stored values, expected) ----------------------------------------------
BINARY_CASES = [
    ("0_255", np.array([[0, 255], [255, 0]], np.uint8), [[0, 1], [1, 0]]),
    ("0_1", np.array([[0, 1], [0, 0]], np.uint16), [[0, 1], [0, 0]]),
    ("all_zero", np.zeros((2, 2), np.uint8), [[0, 0], [0, 0]]),
]
BINARY_FAILURES = [
    ("three_values", np.array([[0, 1], [2, 0]], np.uint8)),
    ("no_zero", np.array([[100, 200], [100, 100]], np.uint8)),
]


@pytest.mark.parametrize("name,write,expected", READ_CASES, ids=[c[0] for c in READ_CASES])
def test_read_image(tmp_path, name, write, expected):
    arr = read_image(write(tmp_path))
    assert arr.dtype == expected.dtype and arr.shape == expected.shape
    np.testing.assert_array_equal(arr, expected)


@pytest.mark.parametrize("name,write,exc,fragment", READ_FAILURES, ids=[c[0] for c in READ_FAILURES])
def test_read_image_failures_name_the_file(tmp_path, name, write, exc, fragment):
    path = write(tmp_path)
    with pytest.raises(exc, match=fragment) as info:
        read_image(path)
    assert info.value.file == str(path) and str(path) in str(info.value)


def test_read_dicom_header_skips_pixels(tmp_path):
    path = write_dicom(tmp_path / "h.dcm", A16, series_uid="1.2.3.4.5.6")
    ds = read_dicom_header(path)
    assert (ds.Rows, ds.Columns, ds.SeriesInstanceUID) == (16, 20, "1.2.3.4.5.6")
    assert "PixelData" not in ds
    with pytest.raises(DataError, match="not found"):
        read_dicom_header(tmp_path / "missing.dcm")


@pytest.mark.parametrize("name,arr,kwargs,expected", UNIT_CASES, ids=[c[0] for c in UNIT_CASES])
def test_to_unit_float(name, arr, kwargs, expected):
    out = to_unit_float(arr, **kwargs)
    assert out.dtype == np.float32 and out.shape == arr.shape
    np.testing.assert_allclose(out, np.array(expected, np.float32), atol=1e-6)


@pytest.mark.parametrize("name,arr,kwargs,exc", UNIT_FAILURES, ids=[c[0] for c in UNIT_FAILURES])
def test_to_unit_float_failures(name, arr, kwargs, exc):
    with pytest.raises(exc):
        to_unit_float(arr, **kwargs)


@pytest.mark.parametrize("name,arr,expected", BINARY_CASES, ids=[c[0] for c in BINARY_CASES])
def test_binary_mask(name, arr, expected):
    out = binary_mask(arr)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("name,arr", BINARY_FAILURES, ids=[c[0] for c in BINARY_FAILURES])
def test_binary_mask_failures(name, arr):
    with pytest.raises(DataError, match="mask is not binary"):
        binary_mask(arr, "m.png")


def test_resize_nearest_by_hand():
    a = np.array([[1, 2], [3, 4]], np.uint8)
    np.testing.assert_array_equal(resize_nearest(a, (4, 4)),
                                  [[1, 1, 2, 2], [1, 1, 2, 2], [3, 3, 4, 4], [3, 3, 4, 4]])
    b = np.arange(9, dtype=np.uint8).reshape(3, 3)
    # pixel centres of a 2x2 grid fall at 0.75 and 2.25 source pixels -> rows/cols 0 and 2
    np.testing.assert_array_equal(resize_nearest(b, (2, 2)), [[0, 2], [6, 8]])


# --- load_record ---------------------------------------------------------------------------------
IMG_SHAPE = (64, 80)


def _record(tmp_path: Path, *, mask=None, outline=None, meta=None, image=None) -> MassRecord:
    img = write_png(tmp_path / "img.png", ramp(IMG_SHAPE, np.uint16, step=3) if image is None else image)
    mask_path = None if mask is None else str(write_png(tmp_path / "mask.png", mask))
    return MassRecord(case_id="c1", dataset="t", patient_id="p1", label=1, image_path=str(img),
                      source_file="cases.csv", source_row=7, mask_path=mask_path, outline=outline, meta=meta or {})


# (name, record kwargs, expected mask pixel count, expected notes)
LOAD_CASES = [
    ("mask_0_255", {"mask": rect_mask(IMG_SHAPE, 10, 20, 30, 45)}, 10 * 15, []),
    ("mask_0_1", {"mask": rect_mask(IMG_SHAPE, 10, 20, 30, 45, value=1)}, 10 * 15, []),
    # 62x80 stored mask, rows 0..30 set -> nearest rows of a 64-row grid: floor((i+.5)*62/64) < 31 -> i < 32
    ("mask_resized", {"mask": rect_mask((62, 80), 0, 31, 0, 80)}, 32 * 80,
     ["mask resized from 62x80 to 64x80 (nearest)"]),
    # rectangle outline x 2..6, y 3..5 with boundary: 5 x 3 pixels
    ("outline", {"outline": ((2, 6, 6, 2), (3, 3, 5, 5))}, 15, []),
]

# (name, record kwargs, message fragment, file expected in the message)
LOAD_FAILURES = [
    ("empty_mask", {"mask": np.zeros(IMG_SHAPE, np.uint8)}, "empty mask", "mask.png"),
    ("non_binary_mask", {"mask": (ramp(IMG_SHAPE, np.uint8) % 3).astype(np.uint8)}, "mask is not binary", "mask.png"),
    ("mask_far_off_size", {"mask": rect_mask((32, 40), 0, 10, 0, 10)}, "does not match image size", "mask.png"),
    ("outline_outside", {"outline": ((2, 90, 6), (3, 3, 5))}, "outline outside image", "img.png"),
    ("no_mask_no_outline", {}, "neither mask_path nor outline", "img.png"),
    ("missing_confounder", {"mask": rect_mask(IMG_SHAPE, 1, 2, 1, 2), "meta": {"confounder_mask_path": "nope.png"}},
     "image file not found", "nope.png"),
]


@pytest.mark.parametrize("name,kwargs,count,notes", LOAD_CASES, ids=[c[0] for c in LOAD_CASES])
def test_load_record(tmp_path, name, kwargs, count, notes):
    case = load_record(_record(tmp_path, **kwargs))
    assert isinstance(case, LoadedCase)
    assert case.image.dtype == np.float32 and case.image.shape == IMG_SHAPE
    assert case.image.min() == 0.0 and case.image.max() == 1.0
    assert case.mask.dtype == np.uint8 and case.mask.shape == IMG_SHAPE and set(np.unique(case.mask)) == {0, 1}
    assert int(case.mask.sum()) == count
    assert case.notes == notes and case.confounders is None


@pytest.mark.parametrize("name,kwargs,fragment,fname", LOAD_FAILURES, ids=[c[0] for c in LOAD_FAILURES])
def test_load_record_failures_name_record_and_file(tmp_path, name, kwargs, fragment, fname):
    with pytest.raises(DataError, match=fragment) as info:
        load_record(_record(tmp_path, **kwargs))
    err = info.value
    assert (err.file, err.row) == ("cases.csv", 7)
    assert fname in str(err)


# (name, writer of a corrupt full image) -- through load_record the error names the file and the row
CORRUPT_IMAGES = [
    ("truncated_dicom", lambda p: _bad_dicom_truncated(p, False)),
    ("truncated_rle_dicom", lambda p: _bad_dicom_truncated(p, True)),
    ("truncated_tiff", lambda p: truncate(write_tiff(p / "a.tif", A16), -100)),
    ("multiframe_dicom", lambda p: write_dicom(p / "a.dcm", A16, frames=2)),
]


@pytest.mark.parametrize("name,write", CORRUPT_IMAGES, ids=[c[0] for c in CORRUPT_IMAGES])
def test_load_record_corrupt_image(tmp_path, name, write):
    bad = write(tmp_path)
    rec = MassRecord(case_id="c", dataset="t", patient_id="p", label=0, image_path=str(bad),
                     source_file="x.csv", source_row=4, mask_path=str(write_png(tmp_path / "m.png", A8)))
    with pytest.raises(DataError) as info:
        load_record(rec)
    assert (info.value.file, info.value.row) == ("x.csv", 4)
    assert str(bad) in str(info.value) and "x.csv, row 4" in str(info.value)


def test_load_record_missing_image(tmp_path):
    rec = MassRecord(case_id="c", dataset="t", patient_id="p", label=0, image_path=str(tmp_path / "gone.dcm"),
                     source_file="x.csv", source_row=3, mask_path=str(tmp_path / "m.png"))
    with pytest.raises(DataError, match="image file not found") as info:
        load_record(rec)
    assert info.value.row == 3 and "gone.dcm" in str(info.value)


def test_load_record_dtype_intensity_and_confounders(tmp_path):
    img = ramp(IMG_SHAPE, np.uint16, step=3) + 100
    conf = np.zeros(IMG_SHAPE, np.uint8)
    conf[5:9, 5:9], conf[40:50, 60:70] = 1, 2
    conf_path = write_png(tmp_path / "conf.png", conf)
    rec = _record(tmp_path, image=img, mask=rect_mask(IMG_SHAPE, 1, 3, 1, 4),
                  meta={"confounder_mask_path": str(conf_path)})
    case = load_record(rec, intensity="dtype")
    np.testing.assert_allclose(case.image, img / 65535.0, rtol=1e-6)
    np.testing.assert_array_equal(case.confounders, conf)
    assert case.mask.sum() == 6
    # min-max: the offset of 100 disappears
    np.testing.assert_allclose(load_record(rec, intensity="minmax").image, (img - 100) / float(img.max() - 100), rtol=1e-6)


def test_load_record_dtype_uses_bits_stored(tmp_path):
    img = np.array([[0, 1365], [2730, 4095]], np.uint16)
    rec = MassRecord(case_id="c", dataset="t", patient_id="p", label=0,
                     image_path=str(write_dicom(tmp_path / "i.dcm", img, bits_stored=12)), source_file="x.csv",
                     source_row=2, mask_path=str(write_png(tmp_path / "m.png", np.array([[0, 1], [0, 0]], np.uint8))))
    np.testing.assert_allclose(load_record(rec, intensity="dtype").image, [[0, 1 / 3], [2 / 3, 1]], atol=1e-6)


def test_a_few_bright_pixels_do_not_rescale_the_image_with_percentile():
    """The leak found on the phantom: with minmax one bright calcification changes every pixel."""
    base = np.arange(10000, dtype=np.uint16).reshape(100, 100)
    calc = base.copy()
    calc[0, :3] = 60000                                    # three very bright pixels
    mm = to_unit_float(calc, "minmax")[50, 50] / to_unit_float(base, "minmax")[50, 50]
    pc = to_unit_float(calc, "percentile")[50, 50] / to_unit_float(base, "percentile")[50, 50]
    assert mm < 0.2                                         # minmax: the mass pixel darkens by > 5x
    assert pc == pytest.approx(1.0, abs=1e-3)              # percentile: unchanged


def test_the_default_intensity_is_percentile():
    """One library default (imageio.DEFAULT_INTENSITY): robust percentile scaling, not minmax."""
    from mammo_lib.data.images import DEFAULT_INTENSITY

    arr = np.arange(10000, dtype=np.uint16).reshape(100, 100)
    arr[0, :3] = 60000
    assert DEFAULT_INTENSITY == "percentile"
    np.testing.assert_array_equal(to_unit_float(arr), to_unit_float(arr, "percentile"))
    assert not np.array_equal(to_unit_float(arr), to_unit_float(arr, "minmax"))
