"""Tests for mammo_lib.data.preprocess: caching, workers, errors, RoiSet round trip.

A fake loader (module-level so worker processes can unpickle it) reads tiny .npy images and
masks and appends the case id to a counter file for every call, so cache hits are observable.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd
import pytest

from mammo_lib.data.preprocess import INDEX_COLUMNS, RoiSet, preprocess
from mammo_lib.data.records import DataError, MassRecord
from mammo_lib.data.roi import extract_roi

SRC = "cases.csv"
N = 6  # records in the standard set
KW = dict(size=32, min_context=16, progress=False)

# (description, kwargs for preprocess, exception, message fragment)
FAIL_CASES = [
    ("unknown variant", {"variant": "tight"}, ValueError, "unknown ROI variant"),
    ("bad on_error", {"on_error": "ignore"}, ValueError, "on_error must be"),
    ("size 0", {"size": 0}, ValueError, "size must be an int >= MIN_ROI_SIZE = 32"),
    ("float min_context", {"min_context": 1.5}, ValueError, "min_context must be a positive int"),
    ("workers 0", {"workers": 0}, ValueError, "workers must be a positive int"),
]


@dataclass
class FakeCase:
    image: np.ndarray
    mask: np.ndarray
    notes: list
    confounders: Optional[np.ndarray] = None


def fake_loader(rec: MassRecord, intensity: str = "minmax") -> FakeCase:
    """Reads ``rec.image_path`` / ``rec.mask_path`` (.npy); counts calls in ``meta['counter']``."""
    with open(rec.meta["counter"], "a") as f:
        f.write(rec.case_id + "\n")
    if rec.meta.get("interrupt"):
        raise KeyboardInterrupt
    if not os.path.exists(rec.image_path):
        raise DataError("image file not found", rec.image_path)
    image = np.load(rec.image_path)
    mask = np.load(rec.mask_path)
    conf = (mask * 2 + (image > 0.5)).astype(np.uint8) if rec.meta.get("conf") else None
    return FakeCase(image=image, mask=mask, notes=[f"intensity {intensity}", "fake"], confounders=conf)


def _calls(counter: Path) -> int:
    return len(counter.read_text().splitlines()) if counter.exists() else 0


def _make_records(tmp: Path, n: int = N, conf: bool = False) -> tuple[list[MassRecord], Path]:
    """``n`` 40 x 48 images with a small rectangular mass at a different place each."""
    data = tmp / "data"
    data.mkdir(exist_ok=True)
    counter = tmp / "calls.txt"
    rng = np.random.default_rng(1)
    recs = []
    for i in range(n):
        img = rng.random((40, 48)).astype(np.float32)
        mask = np.zeros((40, 48), np.uint8)
        y, x = 3 + 5 * i, 2 + 7 * i
        mask[y:y + 4 + i, x:x + 3 + i] = 1
        np.save(data / f"img{i}.npy", img)
        np.save(data / f"mask{i}.npy", mask)
        recs.append(MassRecord(case_id=f"c{i}", dataset="fake", patient_id=f"00{i // 2}", label=i % 2,
                               image_path=str(data / f"img{i}.npy"), mask_path=str(data / f"mask{i}.npy"),
                               source_file=SRC, source_row=i + 2, split="train" if i < 4 else None,
                               meta={"counter": str(counter), "conf": conf}))
    return recs, counter


def test_cache_hit_then_param_change_then_touched_file(tmp_path):
    recs, counter = _make_records(tmp_path)
    cache = tmp_path / "cache"
    first = preprocess(recs, cache, workers=1, loader=fake_loader, **KW)
    assert _calls(counter) == N
    folders = [p.name for p in cache.iterdir()]
    assert len(folders) == 1 and re.fullmatch(r"mass_centred-32-[0-9a-f]{16}", folders[0])

    second = preprocess(recs, cache, workers=1, loader=fake_loader, **KW)
    assert _calls(counter) == N  # cache hit: the loader was not called
    np.testing.assert_array_equal(second.images, first.images)
    pd.testing.assert_frame_equal(second.index, first.index)

    preprocess(recs, cache, workers=1, loader=fake_loader, **{**KW, "min_context": 20})
    assert _calls(counter) == 2 * N  # changed parameter

    st = os.stat(recs[3].image_path)
    os.utime(recs[3].image_path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    preprocess(recs, cache, workers=1, loader=fake_loader, **KW)
    assert _calls(counter) == 3 * N  # touched input file
    assert not [p for p in cache.iterdir() if p.name.startswith(".")]  # no temp / partial folders


def test_result_equals_one_by_one_extraction(tmp_path):
    recs, _ = _make_records(tmp_path)
    rs = preprocess(recs, tmp_path / "cache", variant="overlap_0.9", seed=5, workers=1,
                    loader=fake_loader, **KW)
    assert list(rs.index["case_id"]) == [r.case_id for r in recs]
    assert list(rs.index.columns) == INDEX_COLUMNS
    for i, rec in enumerate(recs):
        roi = extract_roi(np.load(rec.image_path), np.load(rec.mask_path), variant="overlap_0.9",
                          size=32, min_context=16, rng=np.random.default_rng([5, i]))
        np.testing.assert_array_equal(rs.images[i], roi.image)
        np.testing.assert_array_equal(rs.masks[i], roi.mask)
        row = rs.index.iloc[i]
        assert (row.box_y0, row.box_x0, row.box_y1, row.box_x1) == roi.box.as_tuple()
        assert (row.pad_top, row.pad_bottom, row.pad_left, row.pad_right) == roi.pad
        assert row.source_row == i + 2 and row.notes == "intensity percentile;fake"  # the default, imageio.DEFAULT_INTENSITY
    assert rs.confounders is None


def test_workers_1_and_2_identical(tmp_path):
    recs, counter = _make_records(tmp_path, conf=True)
    one = preprocess(recs, tmp_path / "c1", variant="overlap_0.9", workers=1, loader=fake_loader, **KW)
    two = preprocess(recs, tmp_path / "c2", variant="overlap_0.9", workers=2, loader=fake_loader, **KW)
    assert _calls(counter) == 2 * N
    np.testing.assert_array_equal(one.images, two.images)
    np.testing.assert_array_equal(one.masks, two.masks)
    np.testing.assert_array_equal(one.confounders, two.confounders)
    pd.testing.assert_frame_equal(one.index, two.index)
    assert one.confounders.shape == (N, 32, 32) and one.confounders.max() >= 2


def _with_bad_rows(tmp_path):
    recs, counter = _make_records(tmp_path)
    empty = tmp_path / "data" / "empty.npy"
    np.save(empty, np.zeros((40, 48), np.uint8))
    recs[1].mask_path = str(empty)                       # ROI stage: empty mask (row 3)
    recs[4].image_path = str(tmp_path / "missing.npy")   # loader: DataError (row 6)
    return recs, counter


def test_skip_records_exclusions_with_rows(tmp_path):
    recs, _ = _with_bad_rows(tmp_path)
    rs = preprocess(recs, tmp_path / "cache", workers=2, on_error="skip", loader=fake_loader, **KW)
    assert list(rs.index["case_id"]) == ["c0", "c2", "c3", "c5"]
    assert len(rs) == 4 and rs.images.shape == (4, 32, 32)
    ex = rs.exclusions
    assert list(ex["case_id"]) == ["c1", "c4"]
    assert list(ex["source_row"]) == [3, 6] and set(ex["source_file"]) == {SRC}
    assert set(ex["stage"]) == {"roi"}
    assert "empty mask" in ex["reason"].iloc[0]
    assert "missing.npy" in ex["reason"].iloc[1] and "image file not found" in ex["reason"].iloc[1]
    # the cached set holds exclusions: loading it with on_error="raise" must raise
    with pytest.raises(DataError, match="cases.csv, row 3"):
        preprocess(recs, tmp_path / "cache", workers=1, on_error="raise", loader=fake_loader, **KW)


def test_raise_names_file_and_row(tmp_path):
    recs, _ = _with_bad_rows(tmp_path)
    with pytest.raises(DataError) as info:
        preprocess(recs, tmp_path / "cache", workers=1, loader=fake_loader, **KW)
    assert (info.value.file, info.value.row) == (SRC, 3)
    assert "c1" in str(info.value) and "empty mask" in str(info.value)
    assert not any((tmp_path / "cache").glob("mass_centred-*"))  # nothing cached


def test_interrupted_run_resumes(tmp_path):
    recs, counter = _make_records(tmp_path)
    recs[3].meta["interrupt"] = True  # meta is not part of the cache key
    with pytest.raises(KeyboardInterrupt):
        preprocess(recs, tmp_path / "cache", workers=1, loader=fake_loader, **KW)
    assert _calls(counter) == 4
    assert not any((tmp_path / "cache").glob("mass_centred-*"))  # no partial final cache
    recs[3].meta["interrupt"] = False
    rs = preprocess(recs, tmp_path / "cache", workers=1, loader=fake_loader, **KW)
    assert _calls(counter) == 4 + 3  # records 0-2 resumed from the partial folder
    fresh = preprocess(recs, tmp_path / "fresh", workers=1, loader=fake_loader, **KW)
    np.testing.assert_array_equal(rs.images, fresh.images)


@pytest.mark.parametrize("conf", [False, True])
def test_roiset_save_load_round_trip(tmp_path, conf):
    recs, _ = _with_bad_rows(tmp_path)
    for r in recs:
        r.meta["conf"] = conf
    rs = preprocess(recs, tmp_path / "cache", workers=1, on_error="skip", loader=fake_loader, **KW)
    rs.save(tmp_path / "saved")
    rs.save(tmp_path / "saved")  # overwriting an existing folder works
    back = RoiSet.load(tmp_path / "saved")
    pd.testing.assert_frame_equal(back.index, rs.index)
    pd.testing.assert_frame_equal(back.exclusions, rs.exclusions)
    np.testing.assert_array_equal(back.images, rs.images)
    np.testing.assert_array_equal(back.masks, rs.masks)
    assert (back.confounders is None) == (not conf)
    if conf:
        np.testing.assert_array_equal(back.confounders, rs.confounders)
    assert back.params == rs.params and back.images.dtype == np.float32
    assert list(back.groups) == ["000", "001", "001", "002"]  # string ids keep leading zeros
    assert back.index["split"].isna().tolist() == [False, False, False, True]
    with pytest.raises(FileNotFoundError, match="not a complete RoiSet"):
        RoiSet.load(tmp_path / "data")


def test_subset_and_by_case_ids(tmp_path):
    recs, _ = _make_records(tmp_path, conf=True)
    rs = preprocess(recs, tmp_path / "cache", workers=1, loader=fake_loader, **KW)
    np.testing.assert_array_equal(rs.labels, [0, 1, 0, 1, 0, 1])
    sub = rs.subset(np.array([4, 1]))
    assert list(sub.index["case_id"]) == ["c4", "c1"]
    np.testing.assert_array_equal(sub.images[0], rs.images[4])
    np.testing.assert_array_equal(sub.confounders[1], rs.confounders[1])
    by_mask = rs.subset(rs.labels == 1)
    assert list(by_mask.index["case_id"]) == ["c1", "c3", "c5"]
    by_id = rs.by_case_ids(["c5", "c0"])
    assert list(by_id.index["case_id"]) == ["c5", "c0"]
    np.testing.assert_array_equal(by_id.masks[0], rs.masks[5])
    with pytest.raises(KeyError, match="'c9'"):
        rs.by_case_ids(["c0", "c9"])
    with pytest.raises(ValueError, match="boolean subset mask"):
        rs.subset(np.ones(3, bool))
    with pytest.raises(TypeError, match="integer positions"):
        rs.subset(np.array([0.5]))
    with pytest.raises(IndexError, match="out of range"):
        rs.subset([6])


@pytest.mark.parametrize("desc,kwargs,exc,msg", FAIL_CASES, ids=[c[0] for c in FAIL_CASES])
def test_preprocess_rejects_bad_arguments(tmp_path, desc, kwargs, exc, msg):
    recs, _ = _make_records(tmp_path, n=1)
    with pytest.raises(exc, match=msg):
        preprocess(recs, tmp_path / "cache", **{**KW, "workers": 1, "loader": fake_loader, **kwargs})


def test_duplicate_ids_and_mixed_confounders(tmp_path):
    recs, _ = _make_records(tmp_path, n=3)
    recs[2].case_id = "c0"
    with pytest.raises(DataError, match="duplicate case_id 'c0'"):
        preprocess(recs, tmp_path / "cache", workers=1, loader=fake_loader, **KW)
    recs[2].case_id = "c2"
    recs[1].meta["conf"] = True
    with pytest.raises(ValueError, match="confounder maps present for 1 of 3"):
        preprocess(recs, tmp_path / "cache", workers=1, loader=fake_loader, **KW)
