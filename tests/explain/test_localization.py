"""Tests for mammo_lib.explain.localization: hand-computed bilinear upsampling, energy shares, pointing game."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from mammo_lib.explain.localization import (energy_share, localization_table, pointing_game,
                                    summarize_localization, upsample_map)

# 2x2 map [[0, 1], [2, 3]] = x + 2y. Bilinear with half-pixel centres to 4x4 samples the source at
# (i + 0.5) / 2 - 0.5 = -0.25, 0.25, 0.75, 1.25, clamped to 0, 0.25, 0.75, 1.
M2 = np.array([[0.0, 1.0], [2.0, 3.0]])
C4 = np.array([0.0, 0.25, 0.75, 1.0])
UP4 = C4[None, :] + 2 * C4[:, None]
# To 3x3: (i + 0.5) * 2 / 3 - 0.5 = -1/6, 0.5, 7/6 -> 0, 0.5, 1.
C3 = np.array([0.0, 0.5, 1.0])
UP3 = C3[None, :] + 2 * C3[:, None]


def quarter(where: str, size: int = 4) -> np.ndarray:
    m = np.zeros((size, size), np.uint8)
    h = size // 2
    rs = slice(0, h) if where[0] == "t" else slice(h, size)
    cs = slice(0, h) if where[1] == "l" else slice(h, size)
    m[rs, cs] = 1
    return m


# total = 4 * sum(C4) + 8 * sum(C4) = 24; top-left quarter: 2 * 0.25 + 4 * 0.25 = 1.5;
# bottom-right: 2 * 1.75 + 4 * 1.75 = 10.5.
ENERGY_CASES = [
    ("top-left quarter", M2, quarter("tl"), 1.5 / 24),
    ("bottom-right quarter", M2, quarter("br"), 10.5 / 24),
    ("uniform map = area share", np.ones((7, 7)), quarter("tl", 8), 0.25),
    ("empty region", M2, np.zeros((4, 4), np.uint8), 0.0),
    ("whole image", M2, np.ones((4, 4), bool), 1.0),
    ("all-zero map", np.zeros((2, 2)), quarter("tl"), math.nan),
]

# Maximum of UP4 is 3 at (3, 3) only; the nearest top-left quarter pixel (1, 1) is sqrt(8) away.
POINTING_CASES = [
    ("max in region", M2, quarter("br"), 0, True),
    ("max outside", M2, quarter("tl"), 0, False),
    ("tolerance short", M2, quarter("tl"), 2.8, False),
    ("tolerance enough", M2, quarter("tl"), 2.9, True),
    ("empty region", M2, np.zeros((4, 4)), 10, False),
]

ERROR_CASES = [
    ("negative map", lambda: energy_share(-M2, quarter("tl")), ValueError, "non-negative"),
    ("non-binary region", lambda: energy_share(M2, np.full((4, 4), 2)), ValueError, "binary"),
    ("3-D map to energy_share", lambda: energy_share(np.ones((1, 2, 2)), quarter("tl")), ValueError, "2-D"),
    ("NaN map", lambda: upsample_map(np.full((2, 2), np.nan), 4), ValueError, "NaN"),
    ("bad size", lambda: upsample_map(M2, 4.0), TypeError, "size"),
    ("zero size", lambda: upsample_map(M2, 0), ValueError, "positive"),
    ("complex map", lambda: upsample_map(M2 * 1j, 4), TypeError, "real"),
    ("negative tolerance", lambda: pointing_game(M2, quarter("tl"), -1), ValueError, "tolerance_px"),
    ("all-zero map pointing", lambda: pointing_game(np.zeros((2, 2)), quarter("tl")), ValueError, "all-zero"),
    ("N mismatch", lambda: localization_table(np.ones((2, 2, 2)), np.ones((3, 4, 4))), ValueError, "N = 2"),
    ("confounder shape", lambda: localization_table(np.ones((1, 2, 2)), np.ones((1, 4, 4)),
                                                    np.zeros((1, 5, 5), np.uint8)), ValueError, "confounders shape"),
    ("float confounders", lambda: localization_table(np.ones((1, 2, 2)), np.ones((1, 4, 4)),
                                                     np.zeros((1, 4, 4))), TypeError, "integer"),
    ("ids length", lambda: localization_table(np.ones((1, 2, 2)), np.ones((1, 4, 4)), ids=["a", "b"]),
     ValueError, "ids"),
    ("summary of other table", lambda: summarize_localization(pd.DataFrame({"x": [1]})), ValueError, "lacks"),
    ("summary group missing", lambda: summarize_localization(
        pd.DataFrame({"share_mass": [0.5], "hit_mass": [True]}), by="method"), ValueError, "method"),
]


def test_upsample_hand_values() -> None:
    np.testing.assert_allclose(upsample_map(M2, 4), UP4, atol=1e-12)
    np.testing.assert_allclose(upsample_map(M2, (3, 3)), UP3, atol=1e-12)


def test_upsample_batch_equals_one_by_one() -> None:
    rng = np.random.default_rng(0)
    maps = rng.random((3, 7, 7))
    batch = upsample_map(maps, (20, 24))
    assert batch.shape == (3, 20, 24)
    for i in range(3):
        np.testing.assert_allclose(batch[i], upsample_map(maps[i], (20, 24)), atol=1e-12)


@pytest.mark.parametrize("name,fmap,region,expected", ENERGY_CASES, ids=[c[0] for c in ENERGY_CASES])
def test_energy_share(name: str, fmap: np.ndarray, region: np.ndarray, expected: float) -> None:
    got = energy_share(fmap, region)
    if math.isnan(expected):
        assert math.isnan(got)
    else:
        assert got == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("name,fmap,region,tol,expected", POINTING_CASES, ids=[c[0] for c in POINTING_CASES])
def test_pointing_game(name: str, fmap: np.ndarray, region: np.ndarray, tol: float, expected: bool) -> None:
    assert pointing_game(fmap, region, tolerance_px=tol) is expected


@pytest.mark.parametrize("name,call,exc,match", ERROR_CASES, ids=[c[0] for c in ERROR_CASES])
def test_errors(name: str, call, exc: type, match: str) -> None:
    with pytest.raises(exc, match=match):
        call()


def _table_inputs() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    maps = np.stack([M2, np.zeros((2, 2)), M2[::-1, ::-1].copy()])
    masks = np.stack([quarter("tl"), quarter("tl"), quarter("tl")])
    conf = np.zeros((3, 4, 4), np.uint8)
    conf[0][quarter("br").astype(bool)] = 2          # case 0: dense tissue only
    conf[2, 3, 0] = 1                                # case 2: one calcification pixel (value 0.75 + 2 * 1)
    conf[2][quarter("br").astype(bool)] = 2
    return maps, masks, conf


def test_localization_table_hand_values() -> None:
    maps, masks, conf = _table_inputs()
    df = localization_table(maps, masks, conf, ids=["a", "b", "c"])
    assert list(df.columns) == ["case_id", "share_mass", "share_calcification", "share_dense", "hit_mass"]
    assert df["case_id"].tolist() == ["a", "b", "c"]
    # case a: mass 1.5/24, dense 10.5/24, no calcification, max at (3, 3) outside the mass.
    assert df.loc[0, "share_mass"] == pytest.approx(1.5 / 24)
    assert math.isnan(df.loc[0, "share_calcification"])
    assert df.loc[0, "share_dense"] == pytest.approx(10.5 / 24)
    assert bool(df.loc[0, "hit_mass"]) is False
    # case b: all-zero map -> NaN shares, NA pointing game.
    assert math.isnan(df.loc[1, "share_mass"]) and math.isnan(df.loc[1, "share_dense"])
    assert df["hit_mass"].isna().tolist() == [False, True, False]
    # case c: the flipped map upsamples to UP4[::-1, ::-1]: maximum at (0, 0) in the mass, mass
    # share 10.5 / 24, the calcification pixel (3, 0) holds UP4[0, 3] = 1, dense quarter 1.5 / 24.
    assert df.loc[2, "share_mass"] == pytest.approx(10.5 / 24)
    assert df.loc[2, "share_calcification"] == pytest.approx(1.0 / 24)
    assert df.loc[2, "share_dense"] == pytest.approx(1.5 / 24)
    assert bool(df.loc[2, "hit_mass"]) is True


def test_localization_table_matches_single_case_functions() -> None:
    rng = np.random.default_rng(1)
    maps = rng.random((4, 7, 7)) ** 3
    masks = np.zeros((4, 32, 32), np.uint8)
    masks[:, 8:20, 10:24] = 1
    conf = rng.integers(0, 3, size=(4, 32, 32)).astype(np.uint8)
    for tol in (0, 5):
        df = localization_table(maps, masks, conf, tolerance_px=tol)
        for i in range(4):
            assert df.loc[i, "share_mass"] == pytest.approx(energy_share(maps[i], masks[i]))
            assert df.loc[i, "share_dense"] == pytest.approx(energy_share(maps[i], conf[i] == 2))
            assert bool(df.loc[i, "hit_mass"]) == pointing_game(maps[i], masks[i], tolerance_px=tol)


def test_localization_table_without_confounders() -> None:
    df = localization_table(np.stack([M2]), quarter("tl")[None])
    assert df["case_id"].tolist() == ["0"]
    assert df[["share_calcification", "share_dense"]].isna().all().all()


def test_summarize_hand_values() -> None:
    maps, masks, conf = _table_inputs()
    df = localization_table(maps, masks, conf, ids=["a", "b", "c"])
    s = summarize_localization(df)
    row = s.loc["all"]
    assert row["n_cases"] == 3
    assert row["mean_share_mass"] == pytest.approx((1.5 + 10.5) / 24 / 2)
    assert row["n_mass"] == 2 and row["n_calcification"] == 1 and row["n_dense"] == 2
    assert row["mean_share_dense"] == pytest.approx((10.5 + 1.5) / 24 / 2)
    assert row["pointing_accuracy"] == pytest.approx(0.5) and row["n_pointing"] == 2


def test_summarize_by_group() -> None:
    maps, masks, conf = _table_inputs()
    df = localization_table(maps, masks, conf)
    df["method"] = ["ft", "ft", "kt"]
    s = summarize_localization(df, by="method")
    assert list(s.index) == ["ft", "kt"]
    assert s.loc["kt", "pointing_accuracy"] == 1.0 and s.loc["ft", "pointing_accuracy"] == 0.0
    assert s.loc["ft", "n_cases"] == 2 and s.loc["ft", "n_pointing"] == 1
