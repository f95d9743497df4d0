"""bcdr: outline parsing, polygon masks (shoelace / Pick by hand), the real D01 sample, balanced_draw."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy.spatial import ConvexHull

from support.images import ramp, write_tiff
from support.shared import shared_path
from mammo_lib.data import bcdr
from mammo_lib.data.bcdr import balanced_draw, load_bcdr, polygon_mask
from mammo_lib.data.images import load_record
from mammo_lib.data.records import BENIGN, MALIGNANT, DataError, Exclusion, LoadResult, MassRecord

HEADER = ("patient_id,study_id,series,lesion_id,segmentation_id,image_view,image_filename,lw_x_points,"
          "lw_y_points,mammography_nodule,age,density,classification")


def _line(pid="3", study="4", lesion="7", seg="10", view="2", xs="2 6 6 2", ys="3 3 5 5", nodule="1",
          cls="Malign") -> str:
    """A row as BCDR writes it: every value after the first with a leading space."""
    fname = f"patient_{pid}/study_{study}/img_{pid}_{study}_1_{bcdr.IMAGE_VIEWS.get(int(view), 'X')}.tif" \
        if view.isdigit() else "img.tif"
    return ",".join([pid] + [f" {v}" for v in (study, "1", lesion, seg, view, fname, xs, ys, nodule, "60", "2", cls)])


# --- polygon area: (name, xs, ys, shoelace area, boundary lattice points, expected pixels) -------
# Boundary pixels are included (decision, imageio.polygon_mask): count = A + B/2 + 1 (Pick).
POLYGONS = [
    # 4 x 3 rectangle at (2..6, 3..6): A = 12, B = 2*(4+3) = 14 -> 5 * 4 = 20 pixels
    ("rectangle", (2, 6, 6, 2), (3, 3, 6, 6), 12.0, 14, 20),
    # right triangle legs 4: A = 8, B = 4 + 4 + 4 = 12 -> rows of 5, 4, 3, 2, 1 = 15 pixels
    ("right_triangle", (1, 5, 1), (1, 1, 5), 8.0, 12, 15),
    # diamond |x-5| + |y-5| <= 2: A = 8, B = 8 -> 1 + 3 + 5 + 3 + 1 = 13 pixels
    ("diamond", (5, 7, 5, 3), (3, 5, 7, 5), 8.0, 8, 13),
    # skew triangle, no edge through another lattice point: A = 13.5, B = 3 -> 16 pixels
    # (a rasterised outline, e.g. Bresenham, would add 5 pixels outside the triangle)
    ("skew_triangle", (1, 7, 4), (1, 2, 6), 13.5, 3, 16),
    # open outline (BCDR style, closing edge implied) equals the closed one
    ("closed_repeat", (2, 6, 6, 2, 2), (3, 3, 6, 6, 3), 12.0, 14, 20),
]

# --- bad rows: (name, overrides, message fragment) ------------------------------------------
ROW_FAILURES = [
    ("unknown_classification", {"cls": "Unknown"}, "unknown classification"),
    ("xy_count_mismatch", {"xs": "1 2 3 4", "ys": "1 2 3"}, "lw_x_points has 4 values but lw_y_points has 3"),
    ("two_vertices", {"xs": "1 2", "ys": "1 2"}, "at least 3"),
    ("bad_view", {"view": "7"}, "unknown image_view"),
    ("non_numeric", {"xs": "1 a 3", "ys": "1 2 3"}, "non-numeric value in 'lw_x_points'"),
    ("negative", {"xs": "-1 2 3", "ys": "1 2 3"}, "outline outside image"),
    ("empty_patient", {"pid": ""}, "empty value in column 'patient_id'"),
]


def _shoelace(xs, ys) -> float:
    x, y = np.asarray(xs, float), np.asarray(ys, float)
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


@pytest.mark.parametrize("name,xs,ys,area,boundary,pixels", POLYGONS, ids=[c[0] for c in POLYGONS])
def test_polygon_area_by_pick(name, xs, ys, area, boundary, pixels):
    mask = polygon_mask(xs, ys, (10, 12))
    assert mask.dtype == np.uint8 and set(np.unique(mask)) == {0, 1}
    assert _shoelace(xs, ys) == area
    assert int(mask.sum()) == pixels == area + boundary / 2 + 1
    assert mask[ys[0], xs[0]] == 1  # a vertex (boundary) is inside


def test_polygon_pick_on_random_convex_lattice_polygons():
    rng = np.random.default_rng(2025)
    for _ in range(100):
        hull = ConvexHull(rng.integers(0, 12, size=(7, 2)))
        x, y = hull.points[hull.vertices, 0], hull.points[hull.vertices, 1]
        d = np.abs(np.stack([np.roll(x, -1) - x, np.roll(y, -1) - y])).astype(int)
        boundary = int(np.gcd(d[0], d[1]).sum())
        assert polygon_mask(x, y, (12, 12)).sum() == _shoelace(x, y) + boundary / 2 + 1


def test_polygon_mask_refuses_outlines_it_cannot_draw():
    with pytest.raises(ValueError, match="outline outside image"):
        polygon_mask((0, 12, 0), (0, 0, 5), (10, 12))  # x = 12 is past the last column (11)
    with pytest.raises(ValueError, match="at least 3"):
        polygon_mask((0, 1), (0, 1), (10, 12))


def test_real_d01_sample():
    path = shared_path("data", "bcdr", "bcdr_d01_outlines.csv")
    res = load_bcdr(path)
    df = res.to_frame()
    assert len(res) == 15 and not res.exclusions
    assert int((df["label"] == MALIGNANT).sum()) == 2 and int((df["label"] == BENIGN).sum()) == 13
    first = res.records[0]
    assert first.case_id == "bcdrD01_3_4_7_10" and first.patient_id == "bcdr_3" and first.dataset == "BCDR-D01"
    assert first.image_path == "patient_3/study_4/img_3_4_1_LCC.tif"
    assert first.meta["view"] == "LCC" and first.meta["age"] == 74
    assert [len(r.outline[0]) for r in res.records[:3]] == [706, 1120, 240]
    assert all(len(r.outline[0]) == len(r.outline[1]) for r in res.records)
    # the view code agrees with the file name's view for every row
    assert all(r.image_path.endswith(f"_{r.meta['view']}.tif") for r in res.records)
    assert df["patient_id"].nunique() == 4 and df["case_id"].is_unique


def _csv(tmp_path: Path, lines: list[str]) -> Path:
    path = tmp_path / "bcdr_d01_outlines.csv"
    path.write_text("\n".join([HEADER] + lines) + "\n")
    return path


def test_synthetic_rows_parse(tmp_path):
    path = _csv(tmp_path, [_line(), _line(seg="11", view="4", cls="Benign"), _line(seg="12", nodule="0")])
    res = load_bcdr(path, subset="F01")
    assert [r.case_id for r in res.records] == ["bcdrF01_3_4_7_10", "bcdrF01_3_4_7_11"]
    assert [r.label for r in res.records] == [MALIGNANT, BENIGN]
    assert res.records[0].outline == ((2.0, 6.0, 6.0, 2.0), (3.0, 3.0, 5.0, 5.0))
    assert res.records[1].meta["view"] == "LO" and res.records[0].dataset == "BCDR-F01"
    (exc,) = res.exclusions  # mammography_nodule = 0: filtered, recorded
    assert exc.source_row == 4 and exc.stage == "filter" and "not a mass" in exc.reason
    assert len(load_bcdr(path, masses_only=False)) == 3


@pytest.mark.parametrize("name,over,fragment", ROW_FAILURES, ids=[c[0] for c in ROW_FAILURES])
def test_bad_row_raises_with_row(tmp_path, name, over, fragment):
    path = _csv(tmp_path, [_line(), _line(seg="11", **over), _line(seg="12")])
    with pytest.raises(DataError, match=fragment) as info:
        load_bcdr(path)
    assert (info.value.file, info.value.row) == (str(path), 3) and f"{path}, row 3" in str(info.value)
    res = load_bcdr(path, on_error="skip")
    assert len(res.records) + len(res.exclusions) == 3
    assert [e.source_row for e in res.exclusions] == [3] and fragment in res.exclusions[0].reason


def test_missing_column_and_bad_subset(tmp_path):
    path = tmp_path / "o.csv"
    path.write_text(HEADER.replace("classification", "class") + "\n" + _line() + "\n")
    with pytest.raises(DataError, match="classification") as info:
        load_bcdr(path, on_error="skip")
    assert info.value.file == str(path) and info.value.row is None
    with pytest.raises(ValueError, match="subset"):
        load_bcdr(path, subset="d-01")


def test_image_root_and_load_record(tmp_path):
    img = ramp((10, 12), np.uint16, step=9)
    write_tiff(tmp_path / "imgs" / "patient_3" / "study_4" / "img_3_4_1_LCC.tif", img)
    path = _csv(tmp_path, [_line(), _line(seg="11", view="4")])
    with pytest.raises(DataError, match="image file not found") as info:
        load_bcdr(path, tmp_path / "imgs")
    assert info.value.row == 3 and "img_3_4_1_LO.tif" in str(info.value)
    res = load_bcdr(path, tmp_path / "imgs", on_error="skip")
    assert len(res.records) == 1 and len(res.exclusions) == 1
    case = load_record(res.records[0])
    assert int(case.mask.sum()) == 5 * 3 and case.mask[3:6, 2:7].all()  # x 2..6, y 3..5 inclusive
    assert case.image.shape == (10, 12)


# --- balanced_draw ---------------------------------------------------------------------------------
def _pool(n_benign: int, n_malignant: int) -> LoadResult:
    recs = [MassRecord(case_id=f"c{i:03d}", dataset="BCDR-F01", patient_id=f"p{i // 2}",
                       label=BENIGN if i < n_benign else MALIGNANT, image_path=f"i{i}.tif", source_file="f.csv",
                       source_row=i + 2, outline=((0, 1, 1), (0, 0, 1)))
            for i in range(n_benign + n_malignant)]
    return LoadResult(records=recs)


# (name, n_benign, n_malignant, exception, message)
DRAW_FAILURES = [
    ("too_few_malignant", 5, 31, ValueError, "only 30 available"),
    ("negative", -1, 2, ValueError, ">= 0"),
]


def test_balanced_draw_counts_and_record():
    pool = _pool(30, 30)
    pool.exclusions.append(Exclusion("f.csv", 99, "earlier"))
    out = balanced_draw(pool, n_benign=5, n_malignant=7, seed=11)
    labels = [r.label for r in out.records]
    assert labels.count(BENIGN) == 5 and labels.count(MALIGNANT) == 7
    assert len(out.records) + len(out.exclusions) == 60 + 1
    assert out.exclusions[0].reason == "earlier"
    assert {e.stage for e in out.exclusions[1:]} == {"balanced_draw"}
    meta = out.records[0].meta
    assert (meta["draw_seed"], meta["draw_n_benign"], meta["draw_n_malignant"], meta["draw_population"]) == (11, 5, 7, 60)
    assert sorted(r.meta["draw_rank"] for r in out.records if r.label == BENIGN) == list(range(5))
    assert pool.records[0].meta == {}  # input untouched


def test_balanced_draw_is_reproducible_and_order_free():
    pool = _pool(30, 30)
    ids = {r.case_id for r in balanced_draw(pool, 5, 5, seed=3).records}
    shuffled = LoadResult(records=[pool.records[i] for i in np.random.default_rng(0).permutation(60)])
    assert {r.case_id for r in balanced_draw(shuffled, 5, 5, seed=3).records} == ids
    assert {r.case_id for r in balanced_draw(pool, 5, 5, seed=4).records} != ids


@pytest.mark.parametrize("name,nb,nm,exc,msg", DRAW_FAILURES, ids=[c[0] for c in DRAW_FAILURES])
def test_balanced_draw_failures(name, nb, nm, exc, msg):
    with pytest.raises(exc, match=msg):
        balanced_draw(_pool(30, 30), n_benign=nb, n_malignant=nm, seed=1)


def test_balanced_draw_seed_must_be_int():
    with pytest.raises(TypeError, match="seed"):
        balanced_draw(_pool(3, 3), 1, 1, seed=np.random.default_rng(0))
