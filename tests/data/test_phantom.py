"""Tests of the synthetic mammography phantom (docs/DECISIONS.md), tiny images throughout."""
from __future__ import annotations

import csv
import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from scipy.ndimage import distance_transform_edt
from scipy.stats import binomtest
from skimage.io import imread
from skimage.measure import regionprops

from mammo_lib.data.phantom import (CASE_COLUMNS, MARKER, MassSpec, PhantomConfig, add_confounders,
                               generate_phantom, plan_cases, power_law_texture, render_mass,
                               simulate_anatomy, write_cbis_tree)
from mammo_lib.data.records import BENIGN, MALIGNANT

# Small images and masses, same structure as the defaults (640 x 512, roi 224).
TINY = dict(image_shape=(192, 160), roi_size=64, benign_radius_px=(9.0, 18.0),
            malignant_radius_px=(9.0, 20.0), calcification_cluster_radius_px=(4.0, 8.0),
            calcification_dot_radius_px=(1.0, 2.0), dense_radius_px=(6.0, 12.0), spicule_count=(4, 8))

# --- tables of cases (MONAI style) ----------------------------------------------------------
CONFIG_ERRORS = [
    ({"seed": -1}, ValueError, "seed must be >= 0"),
    ({"seed": 1.5}, TypeError, "seed must be an int"),
    ({"image_shape": (32, 512)}, ValueError, "image_shape must be at least 64"),
    ({"image_shape": (640,)}, TypeError, "image_shape must be two ints"),
    ({"n_benign": -1}, ValueError, "n_benign must be >= 0"),
    ({"n_test": 2.0}, TypeError, "n_test must be an int"),
    ({"benign_radius_px": (30.0, 10.0)}, ValueError, "benign_radius_px must satisfy"),
    ({"dense_radius_px": 20.0}, TypeError, "dense_radius_px must be a pair"),
    ({"spicule_count": (6.5, 16)}, TypeError, "spicule_count must be a pair of ints"),
    ({"paired_patient_prob": 1.5}, ValueError, "paired_patient_prob must lie in"),
    ({"calcification_prob": {"train": {0: 0.2, 1: 1.2}, "test": {0: 0.5, 1: 0.5}}}, ValueError,
     r"calcification_prob\['train'\]\[1\] must lie in"),
    ({"dense_prob": {"train": {0: 0.5, 1: 0.5}}}, ValueError, "dense_prob must map 'train', 'test'"),
    ({"calcification_prob": {"train": {0: 0.5, 1: 0.5}, "test": {0: 0.5, 1: 0.5}, "shifted": {0: 1, 1: 0}}},
     ValueError, "other than 'shifted'"),
    ({"dense_prob": {"train": {0: 0.5}, "test": {0: 0.5, 1: 0.5}}}, ValueError,
     r"dense_prob\['train'\] must map labels 0 and 1"),
    ({"roi_size": 4}, ValueError, "roi_size must be an int >= 8"),
]

GENERATE_ERRORS = [
    ({"kind": "omi_like"}, None, ValueError, "kind must be 'bcdr_like' or 'ddsm_like'"),
    ({}, "not a config", TypeError, "config must be a PhantomConfig"),
    ({}, dict(n_benign=0, n_malignant=0), ValueError, "bcdr_like phantom with no cases"),
]

# roi_window (Sec. 3.2 mass-centred crop, now roi.crop_box): (mask box rows, cols (end-exclusive),
# roi_size, hand-computed (top, left, height, width)); starts y0 + (h - H) // 2 (floor).
ROI_WINDOWS = [
    ((2, 5), (5, 9), 6, (0, 4, 6, 6)),        # 3 x 4 box: (3-6)//2 = -2, (4-6)//2 = -1
    ((10, 18), (1, 3), 6, (10, -1, 8, 6)),    # taller than the window: height 8, start y0
    ((0, 4), (0, 4), 7, (-2, -2, 7, 7)),      # (4-7)//2 = -2: extends past the image
    ((3, 4), (7, 8), 1, (3, 7, 1, 1)),        # one pixel, window 1
    ((5, 20), (2, 30), 8, (5, 2, 15, 28)),    # larger than the window both ways
]

# Hand-built benign ellipses: (semi-axis a, semi-axis b, orientation) -> area pi * a * b.
ELLIPSES = [(20.0, 20.0, 0.0), (30.0, 15.0, 0.3), (24.0, 12.0, 1.2), (40.0, 28.0, 2.5)]

# Malignant circle R = 20 at (60, 60) with one spicule along +col (angle 0), length 10, hw 1:
# the segment runs from col 60 + 14 to col 60 + 30; its core reaches col 91 (cap), not 92.
SPICULE_PIXELS = [((60, 60 + 26), True), ((60, 60 + 31), True), ((60, 60 + 32), False),
                  ((62, 60 + 26), False), ((60 - 26, 60), False)]


def tiny(**kw) -> PhantomConfig:
    return PhantomConfig(**{**TINY, **kw})


@pytest.mark.parametrize("kwargs,exc,msg", CONFIG_ERRORS)
def test_config_rejects_bad_values(kwargs, exc, msg):
    with pytest.raises(exc, match=msg):
        PhantomConfig(**kwargs)


@pytest.mark.parametrize("kwargs,config,exc,msg", GENERATE_ERRORS)
def test_generate_rejects_bad_input(tmp_path, kwargs, config, exc, msg):
    cfg = tiny(**config) if isinstance(config, dict) else (tiny() if config is None else config)
    with pytest.raises(exc, match=msg):
        generate_phantom(tmp_path / "out", cfg, progress=False, **kwargs)


def test_refuses_to_overwrite_a_foreign_folder(tmp_path):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("precious")
    with pytest.raises(FileExistsError, match="not a phantom folder"):
        generate_phantom(foreign, tiny(n_benign=1, n_malignant=1), progress=False)
    assert (foreign / "thesis.tex").read_text() == "precious"


@pytest.mark.parametrize("bad,exc", [({"n_cases": 3}, ValueError), ({"seed": -1}, ValueError)])
def test_cbis_tree_rejects_bad_input(tmp_path, bad, exc):
    with pytest.raises(exc, match="n_cases|seed"):
        write_cbis_tree(tmp_path / "cbis", tiny(), **bad)


# --- rendering pieces, hand-computed answers ---------------------------------------------------
@pytest.mark.parametrize("a,b,phi", ELLIPSES)
def test_benign_mask_is_the_drawn_ellipse(a, b, phi):
    spec = MassSpec(label=BENIGN, radius=math.sqrt(a * b), contrast=0.2, margin_width=0.8,
                    shape="OVAL", margin="CIRCUMSCRIBED", axes=(a, b), orientation=phi)
    layer = render_mass(spec, (100.3, 90.6), (200, 190))
    area = layer.mask.sum()
    assert abs(area - math.pi * a * b) / (math.pi * a * b) < 0.03
    props = regionprops(layer.mask.astype(np.uint8))[0]
    assert np.allclose(props.centroid, (100.3, 90.6), atol=0.3)
    # The mask is the 50 % level of the sigmoid margin (dome >= 0.85): signal >= 0.425 contrast.
    assert np.array_equal(layer.mask, layer.signal >= 0.425 * spec.contrast)
    assert props.solidity > 0.97


@pytest.mark.parametrize("pixel,in_mask", SPICULE_PIXELS)
def test_spicule_core_is_in_the_mask(pixel, in_mask):
    spec = MassSpec(label=MALIGNANT, radius=20.0, contrast=0.2, margin_width=1.0, shape="IRREGULAR",
                    margin="SPICULATED", axes=(20.0, 20.0), harmonics=np.zeros((3, 2)),
                    spicules=np.array([[0.0, 10.0, 1.0, 0.8]]))
    with_sp = render_mass(spec, (60.0, 60.0), (128, 128))
    without = render_mass(spec, (60.0, 60.0), (128, 128), spicules_in_mask=False)
    assert bool(with_sp.mask[pixel]) is in_mask
    assert not without.mask[60, 60 + 26]  # body only
    assert abs(without.mask.sum() - math.pi * 400) / (math.pi * 400) < 0.03
    assert without.footprint[60, 60 + 26]  # confounders avoid the spicule either way


@pytest.mark.parametrize("beta", [2.0, 3.0])
def test_texture_power_spectrum_slope(beta):
    n = 128
    fy = np.fft.fftfreq(n)[:, None]
    fx = np.fft.fftfreq(n)[None, :]
    f = np.hypot(fy, fx)
    power = np.mean([np.abs(np.fft.fft2(power_law_texture((n, n), beta, np.random.default_rng(s)))) ** 2
                     for s in range(4)], axis=0)
    band = (f > 0.02) & (f < 0.3)
    slope = np.polyfit(np.log(f[band]), np.log(power[band]), 1)[0]
    assert abs(slope + beta) < 0.3
    field = power_law_texture((n, n), beta, np.random.default_rng(0))
    assert abs(field.mean()) < 1e-9 and abs(field.std() - 1) < 1e-9


def test_default_size_masses_exceed_the_roi_and_still_get_confounders():
    cfg = PhantomConfig(malignant_radius_px=(92.0, 100.0), spiculated_prob=1.0,
                        calcification_prob={"train": {0: 1.0, 1: 1.0}, "test": {0: 1.0, 1: 1.0}},
                        dense_prob={"train": {0: 1.0, 1: 1.0}, "test": {0: 1.0, 1: 1.0}})
    case = simulate_anatomy(cfg, MALIGNANT, np.random.default_rng(7))
    cols = np.flatnonzero(case.mass.mask.any(0))
    rows = np.flatnonzero(case.mass.mask.any(1))
    assert max(cols[-1] - cols[0], rows[-1] - rows[0]) + 1 > 224
    out = add_confounders(case, cfg, "train", np.random.default_rng(8))
    assert out.has_calcification and out.has_dense_tissue
    assert not (out.confounder_map.astype(bool) & case.mass.mask).any()


# --- a generated set, shared by the statistical tests -----------------------------------------
N_PER_CLASS = 120


@pytest.fixture(scope="module")
def bcdr_set(tmp_path_factory) -> Path:
    return generate_phantom(tmp_path_factory.mktemp("ph") / "bcdr",
                            tiny(n_benign=N_PER_CLASS, n_malignant=N_PER_CLASS), progress=False)


@pytest.fixture(scope="module")
def tables(bcdr_set) -> dict[str, pd.DataFrame]:
    return {"train": pd.read_csv(bcdr_set / "cases.csv", keep_default_na=False),
            "shifted": pd.read_csv(bcdr_set / "cases_shifted.csv", keep_default_na=False)}


def test_files_columns_and_counts(bcdr_set, tables):
    for name, df in tables.items():
        assert tuple(df.columns) == CASE_COLUMNS
        assert (df.label == "benign").sum() == N_PER_CLASS and (df.label == "malignant").sum() == N_PER_CLASS
        assert set(df.rendering) == {name} and set(df.split) == {""}
        for col in ("image_path", "mask_path", "confounder_mask_path"):
            assert all((bcdr_set / p).is_file() for p in df[col])
    a, b = tables["train"], tables["shifted"]
    assert list(a.case_id) == list(b.case_id) and list(a.mask_path) == list(b.mask_path)
    assert not set(a.image_path) & set(b.image_path)
    marker = json.loads((bcdr_set / MARKER).read_text())
    assert marker["kind"] == "bcdr_like" and marker["n_cases"] == 2 * N_PER_CLASS
    img = imread(bcdr_set / a.image_path[0])
    assert img.dtype == np.uint16 and img.shape == TINY["image_shape"]
    assert set(np.unique(imread(bcdr_set / a.mask_path[0]))) == {0, 255}


@pytest.mark.parametrize("column,rendering,label,p,p_reversed", [
    ("has_calcification", "train", "malignant", 0.8, 0.2),
    ("has_calcification", "shifted", "malignant", 0.2, 0.8),
    ("has_calcification", "train", "benign", 0.2, 0.8),
    ("has_calcification", "shifted", "benign", 0.8, 0.2),
    ("has_dense_tissue", "train", "benign", 0.6, 0.3),
    ("has_dense_tissue", "shifted", "malignant", 0.6, 0.3),
])
def test_confounder_rates_follow_the_split_probabilities(tables, column, rendering, label, p, p_reversed):
    x = tables[rendering].loc[lambda d: d.label == label, column]
    k, n = int(x.sum()), len(x)
    assert binomtest(k, n, p).pvalue > 1e-3  # consistent with the configured probability
    assert binomtest(k, n, p_reversed).pvalue < 1e-3  # and not with the reversed one


def test_confounders_lie_outside_the_mask_inside_the_roi_window(bcdr_set, tables):
    cfg = tiny()
    records = json.loads((bcdr_set / "confounders.json").read_text())
    by_case: dict[tuple[str, str], list[dict]] = {}
    for r in records:
        by_case.setdefault((r["case_id"], r["rendering"]), []).append(r)
    n_checked = 0
    for rendering, df in tables.items():
        for row in df.itertuples():
            mask = imread(bcdr_set / row.mask_path) > 0
            cmap = imread(bcdr_set / row.confounder_mask_path)
            # Sec. 3.2 window: max(224, h) x max(224, w) around the box, floor rounding.
            rr, cc = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
            h, w = rr[-1] - rr[0] + 1, cc[-1] - cc[0] + 1
            big_h, big_w = max(cfg.roi_size, h), max(cfg.roi_size, w)
            top, left = rr[0] + (h - big_h) // 2, cc[0] + (w - big_w) // 2
            gap = distance_transform_edt(~mask)
            confs = by_case.get((row.case_id, rendering), [])
            assert sorted(c["type"] for c in confs) == sorted(
                (["calcification"] if row.has_calcification else []) + (["dense_tissue"] if row.has_dense_tissue else []))
            assert set(np.unique(cmap)) <= {0, 1, 2}
            assert (1 in cmap) == bool(row.has_calcification) and (2 in cmap) == bool(row.has_dense_tissue)
            assert not (cmap.astype(bool) & mask).any()
            for c in confs:
                (y, x), r = c["centre"], c["radius"]
                assert top <= y - r and y + r <= top + big_h - 1 and left <= x - r and x + r <= left + big_w - 1
                assert gap[int(round(y)), int(round(x))] >= r + cfg.confounder_gap_px - 1
                value = 1 if c["type"] == "calcification" else 2
                yy, xx = np.nonzero(cmap == value)
                assert np.hypot(yy - y, xx - x).max() <= r + 0.5
                n_checked += 1
    assert n_checked > N_PER_CLASS  # the loop saw plenty of confounders


def test_shape_is_the_signal_size_and_contrast_overlap(bcdr_set, tables):
    df = tables["train"]
    solidity = {lab: [] for lab in ("benign", "malignant")}
    for row in df.itertuples():
        mask = (imread(bcdr_set / row.mask_path) > 0).astype(np.uint8)
        solidity[row.label].append(regionprops(mask)[0].solidity)
    assert min(solidity["benign"]) > 0.95
    assert np.mean(solidity["malignant"]) < np.mean(solidity["benign"]) - 0.1
    for col in ("mass_radius_px", "mass_contrast"):
        b, m = df.loc[df.label == "benign", col], df.loc[df.label == "malignant", col]
        lo, hi = max(b.min(), m.min()), min(b.max(), m.max())
        assert lo < hi
        # Most masses of each class lie in the common range: size/contrast do not tell the class.
        assert b.between(lo, hi).mean() > 0.6 and m.between(lo, hi).mean() > 0.6


def test_mass_and_tissue_identical_across_renderings(bcdr_set, tables):
    a, b = tables["train"], tables["shifted"]
    for i in range(6):
        ia = imread(bcdr_set / a.image_path[i]).astype(int)
        ib = imread(bcdr_set / b.image_path[i]).astype(int)
        ca = imread(bcdr_set / a.confounder_mask_path[i])
        cb = imread(bcdr_set / b.confounder_mask_path[i])
        # Away from every confounder (and its soft edge), the two renderings agree exactly.
        far = distance_transform_edt((ca == 0) & (cb == 0)) > 2
        assert np.array_equal(ia[far], ib[far])


# --- determinism, independence, caching --------------------------------------------------------
def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    cfg = tiny(n_benign=2, n_malignant=2)
    one = generate_phantom(tmp_path / "a", cfg, progress=False)
    two = generate_phantom(tmp_path / "b", cfg, progress=False)
    other = generate_phantom(tmp_path / "c", replace(cfg, seed=cfg.seed + 1), progress=False)
    for name in ("cases.csv", "cases_shifted.csv", "confounders.json"):
        assert (one / name).read_bytes() == (two / name).read_bytes()
        assert (one / name).read_bytes() != (other / name).read_bytes()
    pngs = sorted(p.relative_to(one) for p in one.rglob("*.png"))
    assert len(pngs) == 4 * 5
    for rel in pngs:
        assert (one / rel).read_bytes() == (two / rel).read_bytes()
    assert (one / pngs[0]).read_bytes() != (other / pngs[0]).read_bytes()


def test_case_content_does_not_depend_on_the_number_of_cases(tmp_path):
    small = generate_phantom(tmp_path / "s", tiny(n_benign=2, n_malignant=1), progress=False)
    large = generate_phantom(tmp_path / "l", tiny(n_benign=4, n_malignant=3), progress=False)
    for rel in ("images/train/B0000.png", "images/shifted/B0001.png", "masks/M0000.png",
                "confounders/train/M0000.png"):
        assert (small / rel).read_bytes() == (large / rel).read_bytes()


@pytest.mark.parametrize("rows,cols,roi_size,want", ROI_WINDOWS)
def test_roi_window_by_hand(rows, cols, roi_size, want):
    from mammo_lib.data.phantom.anatomy import roi_window

    mask = np.zeros((32, 32), np.uint8)
    mask[rows[0]:rows[1], cols[0]:cols[1]] = 1
    assert roi_window(mask, roi_size) == want


def test_roi_window_matches_the_former_phantom_formula_on_random_masks():
    """roi_window now calls roi.crop_box; on random masks it equals the formula the phantom
    used before (bbox, max(roi_size, side), start y0 + (h - H) // 2)."""
    from mammo_lib.data.phantom.anatomy import roi_window

    rng = np.random.default_rng(0)
    for _ in range(50):
        mask = (rng.random((40, 36)) < rng.uniform(0.002, 0.2)).astype(np.uint8)
        mask[rng.integers(40), rng.integers(36)] = 1
        size = int(rng.integers(1, 50))
        r, c = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        h, w = int(r[-1] - r[0] + 1), int(c[-1] - c[0] + 1)
        big_h, big_w = max(size, h), max(size, w)
        assert roi_window(mask, size) == (int(r[0]) + (h - big_h) // 2, int(c[0]) + (w - big_w) // 2, big_h, big_w)


def test_roi_window_empty_mask_is_an_error():
    from mammo_lib.data.phantom.anatomy import roi_window

    with pytest.raises(ValueError, match="empty mask"):
        roi_window(np.zeros((8, 8), np.uint8), 4)


def test_same_config_is_kept_other_config_regenerates(tmp_path, monkeypatch):
    import mammo_lib.data.phantom.build as ph

    cfg = tiny(n_benign=1, n_malignant=1)
    out = generate_phantom(tmp_path / "p", cfg, progress=False)
    stamp = (out / MARKER).read_text()

    def fail(*a, **k):
        raise AssertionError("regenerated although the folder is complete")

    monkeypatch.setattr(ph, "_case_rows", fail)
    assert generate_phantom(tmp_path / "p", replace(cfg, n_train=7), progress=False) == out  # unused field
    monkeypatch.undo()
    generate_phantom(tmp_path / "p", replace(cfg, n_malignant=2), progress=False)
    assert (out / MARKER).read_text() != stamp
    assert len(pd.read_csv(out / "cases.csv")) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p"]  # no temp folders left


def test_ddsm_like_split_patients_and_renderings(tmp_path):
    cfg = tiny(n_train=10, n_test=6, paired_patient_prob=1.0, two_view_fraction=0.5)
    out = generate_phantom(tmp_path / "d", cfg, kind="ddsm_like", progress=False)
    df = pd.read_csv(out / "cases.csv")
    counts = df.groupby(["split", "label"]).size().to_dict()
    assert counts == {("test", "benign"): 3, ("test", "malignant"): 3,
                      ("train", "benign"): 5, ("train", "malignant"): 5}
    assert (df.rendering == np.where(df.split == "train", "train", "shifted")).all()
    assert df.groupby("patient_id").split.nunique().max() == 1  # no patient straddles the split
    sizes = df.patient_id.value_counts()
    assert sizes.max() == 2 and (sizes == 2).sum() >= 4
    for _, pair in df.groupby("patient_id"):
        if len(pair) == 2:
            a, b = pair.iloc[0], pair.iloc[1]
            if (a.side, a.view, b.view) == (b.side, "CC", "MLO"):  # two views of one mass
                assert a.mass_contrast == b.mass_contrast and a.n_spicules == b.n_spicules
            else:  # two masses, one per breast
                assert a.side != b.side and a.mass_contrast != b.mass_contrast
    plans = {p.case_id: p for p in plan_cases("ddsm_like", cfg)}
    assert set(plans) == set(df.case_id)


# --- CBIS-DDSM style tree ----------------------------------------------------------------------
def _csv_rows(path: Path) -> list[list[str]]:
    with open(path, newline="") as fh:
        return list(csv.reader(fh))


@pytest.mark.parametrize("renamed", [True, False])
def test_cbis_tree_format_headers_and_sizes(tmp_path, fixtures_dir, renamed):
    cfg = tiny()
    root = write_cbis_tree(tmp_path / "cbis", cfg, n_cases=7, renamed=renamed, seed=3)
    real = fixtures_dir / "cbis_ddsm" / "mass_case_description_train_set.csv"
    truth = json.loads((root / "phantom_cbis_tree.json").read_text())["rows"]
    uids_in_csv: set[str] = set()
    n_rows = 0
    for split in ("train", "test"):
        path = root / f"mass_case_description_{split}_set.csv"
        raw = path.read_bytes()
        assert raw.splitlines(keepends=True)[0] == real.read_bytes().splitlines(keepends=True)[0]
        assert raw.count(b'.dcm\n"\r\n') == raw.count(b"\r\n") - 1  # every row, like the real file
        rows = _csv_rows(path)
        assert rows[0] == _csv_rows(real)[0]
        for row in rows[1:]:
            assert row[13].endswith(".dcm\n") and not row[11].endswith("\n")
            for p in row[11:]:
                uids_in_csv.update(p.strip().split("/")[1:3])
        n_rows += len(rows) - 1
    assert n_rows == 7 and len(truth) == 7
    headers = {}
    for f in root.rglob("*.dcm"):
        ds = pydicom.dcmread(f)
        headers[str(f.relative_to(root))] = ds
        if renamed:  # TCIA names: the UIDs are only in the headers (and the CSVs)
            assert not any(part.startswith("1.3.6.1.4.1.9590") for part in f.relative_to(root).parts)
    found = {ds.StudyInstanceUID for ds in headers.values()} | {ds.SeriesInstanceUID for ds in headers.values()}
    assert uids_in_csv == found
    shapes = []
    for t in truth:
        full, crop, mask = (headers[t[k]] for k in ("full", "cropped", "mask"))
        assert full.SeriesInstanceUID == t["full_series_uid"] and mask.SeriesInstanceUID == t["mask_series_uid"]
        assert full.pixel_array.shape == cfg.image_shape and full.pixel_array.dtype == np.uint16
        assert full.PhotometricInterpretation == "MONOCHROME2"
        m = mask.pixel_array
        assert set(np.unique(m)) == {0, 255}
        shapes.append(m.shape)
        # The cropped image is the full image around the mask.
        rr, cc = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
        c = crop.pixel_array
        assert c.shape[0] >= rr[-1] - rr[0] + 1 and c.shape[1] >= cc[-1] - cc[0] + 1
        fa = full.pixel_array
        y0 = max(rr[0] - (c.shape[0] - (rr[-1] - rr[0] + 1)), 0)
        hits = [(y, x) for y in range(y0, rr[0] + 1) for x in range(max(cc[0] - c.shape[1], 0), cc[0] + 1)
                if np.array_equal(fa[y:y + c.shape[0], x:x + c.shape[1]], c)]
        assert hits
    assert sorted(set(shapes)) == sorted({cfg.image_shape, (cfg.image_shape[0] + 3, cfg.image_shape[1] + 2)})
    assert shapes.count((cfg.image_shape[0] + 3, cfg.image_shape[1] + 2)) == 1
    assert sum(t["mask_separate_series"] for t in truth) == 2
    assert {t["abnormality_id"] for t in truth if t["full"] == truth[0]["full"]} == {1, 2}
    syntaxes = {headers[t["full"]].file_meta.TransferSyntaxUID.name for t in truth}
    assert syntaxes == {"RLE Lossless", "Explicit VR Little Endian"}
    assert {t["pathology"] for t in truth} == {"MALIGNANT", "BENIGN", "BENIGN_WITHOUT_CALLBACK"}
    if not renamed:  # literal CSV paths
        for t in truth:
            assert t["mask"].endswith("000000.dcm" if t["mask_separate_series"] else "000001.dcm")
