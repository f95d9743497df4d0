"""Data-side fault cases (issue 11, "Data"): each input is built in ``tmp_path``; the expected outcome
is an exception (type + message fragment naming the file / row) or a recorded exclusion / note.

Before the fixes (for the report): the memory bombs decoded whole (PNG: PIL's
DecompressionBombError, no file or row, aborting ``on_error="skip"``), BitsStored=12 silently cut
16-bit values, degenerate masks and leakage were accepted, a misspelt intensity excluded (and
cached) every case, damaged caches / checkpoints ended in raw BadZipFile / RuntimeError tracebacks.
"""
from __future__ import annotations

import json
import re
import shutil
import struct
import zlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pydicom
import pytest
import tifffile
import torch

from support.images import ramp, rect_mask, truncate, write_dicom, write_png
from mammo_lib.data.cbis_ddsm import load_cbis_ddsm
from mammo_lib.data.generic_csv import load_generic
from mammo_lib.data.images import MAX_PIXELS, load_record, read_image
from mammo_lib.networks.densenet import build_model
from mammo_lib.data.phantom import write_cbis_tree
from mammo_lib.data.preprocess import RoiSet, preprocess
from mammo_lib.protocol.cross_validation import make_folds, pretrain, run_cv
from mammo_lib.data.records import DataError, MassRecord
from mammo_lib.engines.training import TensorData, TrainConfig, train_model
from mammo_lib.engines.trunk_cache import DamagedCacheError, TrunkCache, build_cache

FIXTURES = Path(__file__).parent / "fixtures" / "cbis_ddsm"
SHAPE = (48, 64)


def _png_claiming(path: Path, width: int, height: int) -> Path:
    """A valid 2x2 PNG whose IHDR (CRC fixed) claims ``width`` x ``height``: tiny on disk."""
    write_png(path, np.zeros((2, 2), np.uint8))
    data = bytearray(path.read_bytes())
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    path.write_bytes(bytes(data))
    return path


def _tiff_bomb(path: Path) -> Path:
    """Tiled zlib TIFF of 30000 x 30000 zeros (about 1 MB on disk)."""
    tile = np.zeros((2048, 2048), np.uint8)
    per_side = -(-30000 // 2048)                                            # 15 tiles a side
    tifffile.imwrite(path, (tile for _ in range(per_side ** 2)), shape=(30000, 30000), dtype=np.uint8,
                     tile=(2048, 2048), compression="zlib", compressionargs={"level": 1})
    return path


def _dicom_claiming(path: Path, rows: int, cols: int) -> Path:
    write_dicom(path, np.zeros((4, 4), np.uint16))
    ds = pydicom.dcmread(path)
    ds.Rows, ds.Columns = rows, cols
    ds.save_as(path)
    return path


def _record(tmp: Path, image: Path, mask: np.ndarray | None = None, row: int = 5, cid: str = "c1") -> MassRecord:
    m = rect_mask(SHAPE, 10, 20, 15, 30) if mask is None else mask
    mask_path = write_png(tmp / f"mask_{cid}.png", m)
    return MassRecord(case_id=cid, dataset="t", patient_id=f"p_{cid}", label=row % 2, image_path=str(image),
                      source_file="cases.csv", source_row=row, mask_path=str(mask_path))


def _good_image(tmp: Path, name: str = "img.png") -> Path:
    return write_png(tmp / name, ramp(SHAPE, np.uint16, step=5))


one_pixel = np.zeros((64, 64), np.uint8)
one_pixel[10, 10] = 255
nearly_full = np.full(SHAPE, 255, np.uint8)
nearly_full.flat[: int(0.03 * nearly_full.size)] = 0          # 3 % background: 97.0 % covered

# --- load_record faults: (id, image writer, mask or None, exception, message fragment) --------------
# The file named in the message is always the image (or mask) written, and the row is 5.
LOAD_FAULTS = [
    ("png_bomb_30000", lambda p: _png_claiming(p / "bomb.png", 30000, 30000), None, DataError,
     "image too large: Image size (900000000 pixels)"),
    ("png_header_9000", lambda p: _png_claiming(p / "big.png", 9000, 9000), None, DataError,
     f"header says 9000x9000 = 81000000 pixels > MAX_PIXELS = {MAX_PIXELS}"),
    ("tiff_tiled_bomb", lambda p: _tiff_bomb(p / "bomb.tif"), None, DataError,
     "header says 30000x30000 = 900000000 pixels"),
    ("dicom_header_bomb", lambda p: _dicom_claiming(p / "bomb.dcm", 30000, 30000), None, DataError,
     "header says 30000x30000 = 900000000 pixels"),
    ("dicom_bits_stored_12_16bit_values",
     lambda p: write_dicom(p / "b12.dcm", np.array([[0, 4095], [40000, 65535]] * 4, np.uint16), bits_stored=12),
     rect_mask((8, 2), 0, 2, 0, 1), DataError, "pixel values up to 65535 exceed BitsStored=12 (max 4095)"),
    ("image_1x1", lambda p: write_png(p / "one.png", np.array([[7]], np.uint16)), np.array([[255]], np.uint8),
     DataError, "image is 1x1 pixels; at least 2 on each side"),
    ("mask_whole_image", _good_image, np.full(SHAPE, 255, np.uint8), DataError,
     "mask covers the whole 48x64 image (inverted mask?)"),
]


@pytest.mark.parametrize("name,write,mask,exc,fragment", LOAD_FAULTS, ids=[c[0] for c in LOAD_FAULTS])
def test_load_fault_names_file_and_row(tmp_path, name, write, mask, exc, fragment):
    image = write(tmp_path)
    with pytest.raises(exc) as info:
        load_record(_record(tmp_path, image, mask))
    msg = str(info.value)
    assert fragment in msg and "cases.csv, row 5" in msg
    named = str(tmp_path / "mask_c1.png") if name == "mask_whole_image" else str(image)
    assert named in msg


def test_bombs_are_refused_before_decoding_and_valid_images_still_read(tmp_path):
    with pytest.raises(DataError, match="not decoded") as info:
        read_image(_png_claiming(tmp_path / "b.png", 30000, 30000))
    assert info.value.file == str(tmp_path / "b.png")
    ok = write_png(tmp_path / "ok.png", ramp(SHAPE, np.uint16, step=5))
    np.testing.assert_array_equal(read_image(ok), ramp(SHAPE, np.uint16, step=5))


def test_near_full_mask_is_a_note(tmp_path):
    case = load_record(_record(tmp_path, _good_image(tmp_path), nearly_full))
    assert case.notes == ["mask covers 97.0% of the image (inverted mask?)"]


# --- preprocess: exclusions with on_error="skip", parameter errors before any work ------------------
def test_bomb_and_degenerate_rows_become_exclusions_not_aborts(tmp_path):
    recs = [_record(tmp_path, _png_claiming(tmp_path / "bomb.png", 30000, 30000), row=2, cid="bomb"),
            _record(tmp_path, _good_image(tmp_path, "dot.png"), one_pixel[:48], row=3, cid="dot"),
            _record(tmp_path, _good_image(tmp_path), row=4, cid="good")]
    rs = preprocess(recs, tmp_path / "cache", size=32, workers=1, on_error="skip", progress=False)
    assert list(rs.index["case_id"]) == ["good"]
    ex = rs.exclusions.set_index("case_id")
    assert ex.loc["bomb", "source_row"] == 2 and "image too large" in ex.loc["bomb", "reason"]
    assert str(tmp_path / "bomb.png") in ex.loc["bomb", "reason"]
    # 1 pixel at crop index 112 of a 224 crop; nearest 224 -> 32 samples 3, 10, ..., 115: empty
    assert ex.loc["dot", "source_row"] == 3 and ex.loc["dot", "reason"] == (
        "DataError: ROI mask is empty after resizing the 224x224 crop to 32x32 (mass of 1 pixel(s) too small "
        "for this ROI size)")
    with pytest.raises(DataError, match="row 3: case dot: DataError: ROI mask is empty"):
        preprocess(recs[1:], tmp_path / "cache2", size=32, workers=1, progress=False)


# (id, preprocess kwargs, message fragment)
PARAM_FAULTS = [
    ("intensity_misspelt", {"intensity": "minmx"},
     "intensity must be one of ('minmax', 'percentile', 'dtype'), got 'minmx'"),
    ("size_7", {"size": 7}, "size must be an int >= MIN_ROI_SIZE = 32 (the networks halve the ROI 5 times"),
    ("size_1", {"size": 1}, "size must be an int >= MIN_ROI_SIZE = 32"),
    ("size_True", {"size": True}, "size must be an int >= MIN_ROI_SIZE = 32 (the networks halve the ROI 5 "
                                  "times: mammo_lib.data.roi.MIN_ROI_SIZE), got True"),
]


@pytest.mark.parametrize("name,kwargs,fragment", PARAM_FAULTS, ids=[c[0] for c in PARAM_FAULTS])
def test_preprocess_parameter_errors_before_any_work(tmp_path, name, kwargs, fragment):
    rec = _record(tmp_path, _good_image(tmp_path))
    with pytest.raises(ValueError) as info:
        preprocess([rec], tmp_path / "cache", **{"size": 32, "workers": 1, "progress": False, **kwargs})
    assert fragment in str(info.value) and not isinstance(info.value, DataError)
    assert not (tmp_path / "cache").exists()  # nothing computed, nothing cached


def test_min_roi_size_is_the_smallest_that_gives_a_1x1_group4_map():
    """2**5: the DenseNet halves 5 times; 32 px gives a 1 x 1 final map, 28 px fails to pool."""
    model = build_model("small", seed=0).eval()
    with torch.no_grad():
        assert model.features(torch.zeros(1, 3, 32, 32)).shape[-2:] == (1, 1)
        with pytest.raises(RuntimeError):
            model.features(torch.zeros(1, 3, 28, 28))


# --- leakage and repeated columns in a generic CSV ---------------------------------------------------
def _generic_csv(tmp: Path, header: str, rows: list[str]) -> Path:
    for i in range(3):
        write_png(tmp / f"i{i}.png", ramp(SHAPE, np.uint16, step=i + 1))
        write_png(tmp / f"m{i}.png", rect_mask(SHAPE, 5, 15, 5, 15))
    path = tmp / "cases.csv"
    path.write_text("\n".join([header] + rows) + "\n")
    return path


# (id, header, rows, message fragment)
GENERIC_FAULTS = [
    ("patient_in_train_and_test", "image_path,mask_path,label,patient_id,split",
     ["i0.png,m0.png,0,p1,train", "i1.png,m1.png,1,p2,train", "i2.png,m2.png,1,p1,test"],
     "patient 'p1' is in more than one split (test: rows 4; train: rows 2)"),
    ("label_column_twice", "image_path,mask_path,label,patient_id,label",
     ["i0.png,m0.png,0,p1,1", "i1.png,m1.png,1,p2,0"],
     "duplicated column(s) ['label'] in the header (pandas would rename the second 'label' to 'label.1')"),
]


@pytest.mark.parametrize("name,header,rows,fragment", GENERIC_FAULTS, ids=[c[0] for c in GENERIC_FAULTS])
def test_generic_leakage_and_repeated_column(tmp_path, name, header, rows, fragment):
    path = _generic_csv(tmp_path, header, rows)
    for on_error in ("raise", "skip"):
        with pytest.raises(DataError) as info:
            load_generic(path, on_error=on_error)
        assert fragment in str(info.value) and info.value.file == str(path)


# --- single-class data in the protocol entry points -------------------------------------------------
def _one_class(n: int = 10) -> SimpleNamespace:
    return SimpleNamespace(labels=np.zeros(n, np.int64), groups=np.array([f"p{i}" for i in range(n)]),
                           index=pd.DataFrame({"case_id": [f"c{i}" for i in range(n)]}))


def test_single_class_is_an_error_before_training(tmp_path):
    with pytest.raises(ValueError, match=r"cross-validation data has 1 class\(es\) \(0: 10\)"):
        run_cv(_one_class(), [SimpleNamespace(name="x")], tmp_path / "cv", arch="small", progress=False)
    with pytest.raises(ValueError, match=r"pre-training data has 1 class\(es\) \(0: 10\)"):
        pretrain(_one_class(), _one_class(4), tmp_path / "pt", arch="small", weights="none", progress=False)
    assert not (tmp_path / "cv").exists() and not (tmp_path / "pt").exists()
    # the folds of every CV entry point (run_cv, instrument.run_instrument)
    with pytest.raises(ValueError, match=r"cross-validation data has 1 class\(es\) \(1: 12\)"):
        make_folds(np.ones(12, np.int64), n_splits=2)


# --- damaged caches and checkpoints -----------------------------------------------------------------
def interrupting_loader(rec: MassRecord, intensity: str = "minmax"):
    """load_record, but record ``meta['interrupt']`` stops the run (leaves a partial cache)."""
    if rec.meta.get("interrupt"):
        raise KeyboardInterrupt
    return load_record(rec, intensity=intensity)


def _two_records(tmp: Path) -> list[MassRecord]:
    return [_record(tmp, _good_image(tmp, "a.png"), row=2, cid="a"),
            _record(tmp, _good_image(tmp, "b.png"), rect_mask(SHAPE, 20, 30, 5, 12), row=3, cid="b")]


def test_truncated_roi_cache_is_named_and_rebuilt(tmp_path):
    recs = _two_records(tmp_path)
    first = preprocess(recs, tmp_path / "cache", size=32, workers=1, progress=False)
    (folder,) = [p for p in (tmp_path / "cache").iterdir()]
    truncate(folder / "arrays.npz", 100)
    with pytest.raises(DamagedCacheError, match=re.escape(f"damaged file {folder / 'arrays.npz'} (BadZipFile")):
        RoiSet.load(folder)
    with pytest.warns(UserWarning, match=re.escape(f"damaged ROI cache {folder} (") + ".*BadZipFile.*rebuilding it"):
        again = preprocess(recs, tmp_path / "cache", size=32, workers=1, progress=False)
    np.testing.assert_array_equal(again.images, first.images)
    np.testing.assert_array_equal(again.masks, first.masks)


def test_torn_partial_file_is_named_and_recomputed(tmp_path):
    recs = _two_records(tmp_path)
    ref = preprocess(recs, tmp_path / "ref", size=32, workers=1, progress=False, loader=interrupting_loader)
    recs[1].meta["interrupt"] = True
    with pytest.raises(KeyboardInterrupt):
        preprocess(recs, tmp_path / "cache", size=32, workers=1, progress=False, loader=interrupting_loader)
    (partial,) = (tmp_path / "cache").glob(".partial-*")
    torn = partial / "000000.npz"
    truncate(torn, -200)
    recs[1].meta["interrupt"] = False
    with pytest.warns(UserWarning, match=re.escape(f"damaged partial ROI file {torn} (") + ".*recomputing it"):
        out = preprocess(recs, tmp_path / "cache", size=32, workers=1, progress=False, loader=interrupting_loader)
    np.testing.assert_array_equal(out.images, ref.images)


def test_truncated_trunk_cache_raises_named_error_and_load_or_none_warns(tmp_path):
    x = np.random.default_rng(0).random((2, 32, 32), dtype=np.float32)
    m = np.zeros((2, 32, 32), np.uint8)
    m[:, 8:20, 8:20] = 1
    path = build_cache(build_model("small", seed=0), x, m, flips=("none",), progress=False).save(tmp_path / "c.pt")
    assert TrunkCache.load_or_none(path) is not None
    truncate(path, -300)
    with pytest.raises(DamagedCacheError, match=re.escape(f"damaged trunk cache {path} (")):
        TrunkCache.load(path)
    with pytest.warns(UserWarning, match=re.escape(f"damaged trunk cache {path} (") + ".*rebuilding it"):
        assert TrunkCache.load_or_none(path) is None


def test_truncated_last_checkpoint_retrains_from_scratch(tmp_path):
    rng = np.random.default_rng(0)
    imgs = rng.random((8, 32, 32), dtype=np.float32)
    masks = np.zeros((8, 32, 32), np.uint8)
    masks[:, 10:22, 10:22] = 1
    data = TensorData(imgs, masks, np.arange(8) % 2, [f"c{i}" for i in range(8)])
    cfg = TrainConfig(epochs=1, batch_size=4, lr=1e-2, augment=())
    ref_model = build_model("small", seed=0)
    train_model(ref_model, data, data, cfg, checkpoint_dir=tmp_path / "ref", progress=False)
    ck = tmp_path / "run"
    train_model(build_model("small", seed=0), data, data, cfg, checkpoint_dir=ck, progress=False)
    truncate(ck / "last.pt", 1000)
    model = build_model("small", seed=0)
    with pytest.warns(UserWarning, match=re.escape(f"damaged checkpoint {ck / 'last.pt'} (") + ".*training from scratch"):
        res = train_model(model, data, data, cfg, checkpoint_dir=ck, progress=False)
    assert res.resumed_from is None
    for (k, a), b in zip(ref_model.state_dict().items(), model.state_dict().values()):
        assert torch.equal(a, b), k


# --- CBIS-DDSM: line numbers, unreadable DICOM, missing mask series --------------------------------
def test_cbis_row_spanning_two_lines_reports_the_line(tmp_path):
    """In the real CSV every row ends in a quoted newline: row r starts on line 2r - 2."""
    csv_path = tmp_path / "mass_case_description_train_set.csv"
    df = pd.read_csv(FIXTURES / "mass_case_description_train_set.csv", dtype=str, keep_default_na=False)
    df.loc[10, "pathology"] = "UNSURE"                                    # spreadsheet row 12
    df.to_csv(csv_path, index=False, lineterminator="\r\n")
    with pytest.raises(DataError, match=r"row 12 \(line 22\): unknown pathology 'UNSURE'"):
        load_cbis_ddsm(csv_path)
    res = load_cbis_ddsm(csv_path, on_error="skip")
    (ex,) = res.exclusions
    assert (ex.source_row, ex.source_line) == (12, 22)
    assert "source_line" not in res.records[0].meta and res.records[1].meta["source_line"] == 4


def test_cbis_unreadable_dicom_and_missing_mask_series(tmp_path):
    root = write_cbis_tree(tmp_path / "cbis", n_cases=6)
    truth = json.loads((root / "phantom_cbis_tree.json").read_text())["rows"]
    first = truth[0]                                        # row 2: full image cut to 200 bytes
    cut = root / first["full"]
    cut.write_bytes(cut.read_bytes()[:200])
    sep = next(r for r in truth if r["mask_separate_series"] and r["full"] != first["full"])
    shutil.rmtree((root / sep["mask"]).parent)               # its ROI-mask series is gone
    other = next(r for r in truth if r["full"] not in (first["full"], sep["full"]))  # unrelated image gone
    shutil.rmtree((root / other["full"]).parent)
    csvs = sorted(root.glob("mass_case_description_*.csv"))
    res = load_cbis_ddsm(csvs, root, on_error="skip", progress=False)
    reasons = {e.case_id: e.reason for e in res.exclusions}
    assert f"{cut}: unreadable DICOM file (header of 200 bytes" in reasons[first["case_id"]]
    mask_reason = reasons[sep["case_id"]]
    assert "no ROI mask of the full image's size" in mask_reason and "1-1.dcm" in mask_reason
    assert f"series {sep['mask_series_uid']} of 'ROI mask file path'" in mask_reason
    unrelated = [r for cid, r in reasons.items() if cid.startswith(other["case_id"].rsplit("_", 1)[0])]
    assert unrelated and all("not found" in r and "could not be indexed" not in r for r in unrelated)
    with pytest.raises(DataError, match="unreadable DICOM file") as info:
        load_cbis_ddsm(csvs, root, progress=False)
    assert info.value.file == str(cut)


# --- issue 21: small data, damaged results, full disks, silently wrong input (library side) ---------
def test_inner_split_of_a_small_training_part_puts_both_classes_on_each_side():
    from mammo_lib.protocol.cross_validation import inner_split

    y = np.array([0, 0, 0, 0, 1, 1])
    tr, va = inner_split(y, seed=3)
    # val: round(0.2 * 4) = 1 benign, round(0.2 * 2) = 0 -> at least 1 malignant
    assert sorted(y[va].tolist()) == [0, 1] and sorted(y[tr].tolist()) == [0, 0, 0, 1]
    assert np.array_equal(np.sort(np.concatenate([tr, va])), np.arange(6))
    with pytest.raises(ValueError, match=re.escape(
            "inner train/validation split: the training part holds 3 benign and 1 malignant case(s); both sides "
            "need one of each class, so 2 of each (use fewer folds or add cases)")):
        inner_split(np.array([0, 0, 0, 1]))
    # patients: 2 malignant cases of one patient -> by case, with a warning
    with pytest.warns(UserWarning, match="inner train/validation split by case, not by patient"):
        tr, va = inner_split(np.array([0, 0, 0, 1, 1]), np.array(["a", "b", "c", "d", "d"]))
    assert sorted(np.array([0, 0, 0, 1, 1])[va].tolist()) == [0, 1]


def test_inner_split_of_enough_data_is_the_k_fold_split_as_before():
    from mammo_lib.protocol.cross_validation import inner_split

    y = np.array([0] * 12 + [1] * 9)
    g = np.array([f"p{i // 2}" for i in range(21)])
    tr, va = inner_split(y, g, val_fraction=0.2, seed=4)
    folds = make_folds(y, g, n_splits=5, seed=4)
    assert np.array_equal(va, np.flatnonzero(folds == 0)) and np.array_equal(tr, np.flatnonzero(folds != 0))


def test_too_small_data_is_refused_with_the_counts_and_the_folds_that_fit():
    from mammo_lib.protocol.cross_validation import check_cv_sizes, min_cases_per_class

    # k test folds, and n - ceil(n / k) >= 2 left in every training part: k = 2 needs 4, k = 3 needs 3
    assert [min_cases_per_class(k) for k in (2, 3, 4, 5)] == [4, 3, 4, 5]
    y = np.array([0] * 8 + [1] * 3)
    with pytest.raises(ValueError, match=re.escape(
            "8 benign and 3 malignant case(s) are too few for n_splits 2: each class needs at least 4 (2 for the "
            "test folds, and 2 left in every training part for its train/validation split); use n_splits 3")):
        check_cv_sizes(y, 2)
    check_cv_sizes(y, 3)
    with pytest.raises(ValueError, match=re.escape("from 2 patient(s) are too few for n_splits 3")):
        check_cv_sizes(y, 3, groups=["a"] * 5 + ["b"] * 6)


def test_mask_beyond_the_image_is_refused_and_a_padded_mask_still_resized(tmp_path):
    img = _good_image(tmp_path)
    beyond = np.zeros((SHAPE[0] + 2, SHAPE[1]), np.uint8)
    beyond[SHAPE[0]:, 10:13] = 255                                          # 6 pixels, all beyond row 47
    with pytest.raises(DataError, match=re.escape(
            "mask size 50x64 is larger than the image 48x64 and 6 of its foreground pixel(s) lie beyond the image's "
            "last row or column: resizing would move them onto the image")):
        load_record(_record(tmp_path, img, beyond))
    padded = np.zeros((SHAPE[0] + 2, SHAPE[1]), np.uint8)
    padded[10:20, 15:30] = 255
    case = load_record(_record(tmp_path, img, padded, cid="p"))
    assert case.notes == ["mask resized from 50x64 to 48x64 (nearest)"]


def test_palette_colour_refused_and_non_mg_modality_noted(tmp_path):
    pal = write_dicom(tmp_path / "pal.dcm", ramp(SHAPE, np.uint16, step=5), photometric="PALETTE COLOR")
    with pytest.raises(DataError, match="PhotometricInterpretation PALETTE COLOR: the stored values are indices"):
        read_image(pal)
    ct = write_dicom(tmp_path / "ct.dcm", ramp(SHAPE, np.uint16, step=5))
    ds = pydicom.dcmread(ct)
    ds.Modality = "CT"
    ds.save_as(ct)
    assert load_record(_record(tmp_path, ct)).notes == [
        "DICOM Modality is CT, not MG (mammography): is this a mammogram?"]
    ds.Modality = "MG"
    ds.save_as(ct)
    assert load_record(_record(tmp_path, ct)).notes == []


def test_mask_with_no_tissue_is_noted(tmp_path):
    arr = ramp(SHAPE, np.uint16, step=5)
    arr[:, :20] = 0                                                         # air on the left
    img = write_png(tmp_path / "air.png", arr)
    in_air, on_tissue = rect_mask(SHAPE, 10, 20, 2, 12), rect_mask(SHAPE, 10, 20, 25, 35)
    note = ("no tissue under the mask: its pixels are all at the image's darkest level (mask in the air outside the "
            "breast?)")
    assert load_record(_record(tmp_path, img, in_air)).notes == [note]
    assert load_record(_record(tmp_path, img, on_tissue, cid="t")).notes == []


def test_damaged_result_json_warns_and_is_recomputed(tmp_path):
    from mammo_lib.utils.files import read_done_marker

    path = tmp_path / "result.json"
    path.write_text('{"key": ')
    with pytest.warns(UserWarning, match=re.escape(f"damaged result {path} (JSONDecodeError: Expecting value: line 1 "
                                                   "column 9 (char 8)); training it again")):
        assert read_done_marker(path) is None
    path.write_text("[1, 2]\n")
    with pytest.warns(UserWarning, match=re.escape(f"damaged result {path} (holds a JSON list, not an object)")):
        assert read_done_marker(path) is None
    path.write_text('{"key": 1}\n')
    assert read_done_marker(path) == {"key": 1}


def test_disk_full_is_one_error_naming_the_file(tmp_path, monkeypatch):
    import errno

    from mammo_lib.utils import files as mio

    def full(tmp: Path) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    target = tmp_path / "cache" / "x.npz"
    with pytest.raises(mio.DiskFullError, match=re.escape(f"the disk is full: could not write {target} (No space "
                                                          "left on device; ")):
        mio.atomic_write(target, full)
    assert [p.name for p in target.parent.iterdir()] == []                  # no temporary file left
    monkeypatch.setattr(torch, "save", lambda obj, f: (_ for _ in ()).throw(
        RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")))
    with pytest.raises(mio.DiskFullError, match=re.escape(
            f"could not write {tmp_path / 'last.pt'} ([enforce fail at inline_container.cc:672] . unexpected pos")):
        mio.save_torch({"a": 1}, tmp_path / "last.pt")
    monkeypatch.setattr(torch, "save", lambda obj, f: (_ for _ in ()).throw(RuntimeError("other")))
    with pytest.raises(RuntimeError, match="^other$"):                      # not every RuntimeError is a full disk
        mio.save_torch({"a": 1}, tmp_path / "last.pt")


def test_schema_bounds_come_from_the_library():
    from mammo_lib.repro.config import RoiSpec
    from mammo_lib.data.roi import MAX_ROI_SIZE, MIN_ROI_SIZE

    meta = {type(m).__name__: m for m in RoiSpec.model_fields["roi_size"].metadata}
    assert (meta["Ge"].ge, meta["Le"].le) == (MIN_ROI_SIZE, MAX_ROI_SIZE) == (32, 2048)
