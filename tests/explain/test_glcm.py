"""GLCM variance map (Eq. 1-2) and whole-image GLCM features (Fig. 8b)."""
from __future__ import annotations

import time
import zlib
from fractions import Fraction

import numpy as np
import pandas as pd
import pytest
from skimage.feature import graycomatrix, graycoprops

from mammo_lib.explain.glcm import (FEATURE_NAMES, glcm_feature_table, glcm_features, glcm_offset,
                            glcm_variance_map, quantize)

PI = np.pi

# ----------------------------------------------------------------------------- case tables

# (values in [0, 1], levels, expected bins): floor(img * L) clipped to L - 1
QUANTIZE_CASES = [
    ([0.0, 0.124, 0.125, 0.5, 0.999, 1.0], 8, [0, 0, 1, 4, 7, 7]),
    ([0.0, 0.49, 0.5, 1.0], 2, [0, 0, 1, 1]),
    ([0.0, 1 / 32, 0.99], 32, [0, 1, 31]),
]

# skimage's offset convention: (round(sin a * d), round(cos a * d))
OFFSET_CASES = [
    (1, 0.0, (0, 1)),
    (1, PI / 4, (1, 1)),
    (1, PI / 2, (1, 0)),
    (1, 3 * PI / 4, (1, -1)),
    (2, 3 * PI / 4, (1, -1)),
    (3, PI / 2, (3, 0)),
]

# (levels, window, distance, angle) combinations checked against graycomatrix on every window
REFERENCE_CASES = [
    (8, 5, 1, 0.0),
    (4, 3, 1, PI / 4),
    (8, 7, 2, PI / 2),
    (16, 5, 2, 3 * PI / 4),
    (8, 5, 3, PI / 4),
    (2, 3, 1, 3 * PI / 4),
]

_IMG = np.full((6, 6), 0.5, dtype=np.float32)

# (function, kwargs, exception, message fragment)
FAIL_CASES = [
    (quantize, dict(img=np.zeros(5, np.float32)), ValueError, "2-D"),
    (quantize, dict(img=np.zeros((3, 3), np.uint8)), TypeError, "float image"),
    (quantize, dict(img=np.full((3, 3), 1.5, np.float32)), ValueError, r"\[0, 1\]"),
    (quantize, dict(img=np.full((3, 3), np.nan, np.float32)), ValueError, "NaN"),
    (quantize, dict(img=[[0.1, 0.2]]), TypeError, "numpy array"),
    (quantize, dict(img=_IMG, levels=1), ValueError, "levels"),
    (glcm_variance_map, dict(img=_IMG, window=4), ValueError, "odd"),
    (glcm_variance_map, dict(img=_IMG, window=0), ValueError, "odd"),
    (glcm_variance_map, dict(img=_IMG, distance=0), ValueError, "distance"),
    (glcm_variance_map, dict(img=_IMG, mean="median"), ValueError, "'paper' or 'haralick'"),
    (glcm_variance_map, dict(img=_IMG, window=3, distance=3), ValueError, "does not fit"),
    (glcm_variance_map, dict(img=_IMG, pad_mode="wrap"), ValueError, "pad_mode"),
    (glcm_variance_map, dict(img=np.full((2, 2), 0.5, np.float32), window=5), ValueError, "too small"),
    (glcm_features, dict(img=_IMG, distances=()), ValueError, "non-empty"),
    (glcm_features, dict(img=_IMG, distances=(0,)), ValueError, "positive"),
    (glcm_features, dict(img=_IMG, distances=(6,)), ValueError, "no pixel pairs"),
    (glcm_features, dict(img=_IMG, mask=np.zeros((6, 6), np.uint8)), ValueError, "empty"),
    (glcm_features, dict(img=_IMG, mask=np.ones((5, 6), np.uint8)), ValueError, "shape"),
    (glcm_features, dict(img=_IMG, mask=np.full((6, 6), 2, np.uint8)), ValueError, "0 and 1"),
]


# ----------------------------------------------------------------------------- helpers


def reference_variance_map(img, levels, window, distance, angle, mean, symmetric, normed):
    """Eq. 1-2 from skimage's graycomatrix on every (reflect-padded) window crop: the slow way."""
    q = quantize(img, levels)
    half = window // 2
    padded = np.pad(q, half, mode="reflect")
    m = np.arange(levels, dtype=np.float64)[:, None] * np.ones((1, levels))
    out = np.empty(img.shape, dtype=np.float64)
    for r in range(img.shape[0]):
        for c in range(img.shape[1]):
            crop = padded[r:r + window, c:c + window]
            p = graycomatrix(crop, [distance], [angle], levels=levels, symmetric=symmetric,
                             normed=normed)[:, :, 0, 0].astype(np.float64)
            mu = (m * p).sum() / (levels ** 2 if mean == "paper" else 1)
            out[r, c] = ((m - mu) ** 2 * p).sum()
    return out


# ----------------------------------------------------------------------------- quantize


@pytest.mark.parametrize("values, levels, expected", QUANTIZE_CASES)
def test_quantize_bins(values, levels, expected):
    q = quantize(np.asarray([values], dtype=np.float32), levels)
    assert q.dtype == np.uint8
    np.testing.assert_array_equal(q[0], expected)


@pytest.mark.parametrize("distance, angle, expected", OFFSET_CASES)
def test_offset_matches_skimage_convention(distance, angle, expected):
    assert glcm_offset(distance, angle) == expected
    # and skimage really pairs (r, c) with (r + dr, c + dc): one pair in a 4x4 image of distinct levels
    img = np.arange(16, dtype=np.uint8).reshape(4, 4)
    pairs = np.argwhere(graycomatrix(img, [distance], [angle], levels=16)[:, :, 0, 0])
    first, second = pairs[0]
    assert (second // 4 - first // 4, second % 4 - first % 4) == expected


@pytest.mark.parametrize("func, kwargs, exc, match", FAIL_CASES)
def test_bad_input_raises(func, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        func(**kwargs)


# ----------------------------------------------------------------------------- variance map


@pytest.mark.parametrize("levels, window, distance, angle", REFERENCE_CASES)
@pytest.mark.parametrize("mean", ["paper", "haralick"])
@pytest.mark.parametrize("symmetric", [False, True])
def test_variance_map_matches_per_window_graycomatrix(levels, window, distance, angle, mean, symmetric):
    seed = zlib.crc32(repr((levels, window, distance, round(angle, 3), mean, symmetric)).encode())
    img = np.random.default_rng(seed).random((9, 11)).astype(np.float32)
    for normed in (True, False):
        got = glcm_variance_map(img, levels=levels, window=window, distance=distance, angle=angle,
                                mean=mean, symmetric=symmetric, normed=normed)
        want = reference_variance_map(img, levels, window, distance, angle, mean, symmetric, normed)
        assert got.dtype == np.float32 and got.shape == img.shape
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_haralick_mean_equals_skimage_graycoprops_variance():
    """An independent reference for mean="haralick": skimage's own 'variance' property."""
    img = np.random.default_rng(3).random((7, 8)).astype(np.float32)
    got = glcm_variance_map(img, levels=8, window=5, mean="haralick", symmetric=True)
    padded = np.pad(quantize(img, 8), 2, mode="reflect")
    for r in range(img.shape[0]):
        for c in range(img.shape[1]):
            p = graycomatrix(padded[r:r + 5, c:c + 5], [1], [0.0], levels=8, symmetric=True, normed=True)
            assert got[r, c] == pytest.approx(graycoprops(p, "variance")[0, 0], rel=1e-6, abs=1e-6)


def test_variance_map_hand_values_constant_image():
    """All pairs (4, 4) of L = 8 levels: paper mu = 4/64, variance (4 - 1/16)^2; Haralick 0."""
    img = np.full((6, 7), 0.5, dtype=np.float32)  # level floor(0.5 * 8) = 4
    paper = glcm_variance_map(img)
    np.testing.assert_array_equal(paper, np.float32((4 - 4 / 64) ** 2))
    np.testing.assert_array_equal(glcm_variance_map(img, mean="haralick"), 0.0)


def test_variance_map_hand_values_stripes():
    """Columns alternate levels 0 and 7; vertical pairs (pi/2) in a 3x3 window: 2 rows x 3 cols of
    first pixels. Window on a level-0 column: levels (7, 0, 7) -> four 7s and two 0s; on a 7:
    two 7s and four 0s."""
    img = np.zeros((5, 6), dtype=np.float32)
    img[:, 1::2] = 1.0  # level 7
    got_h = glcm_variance_map(img, levels=8, window=3, angle=PI / 2, mean="haralick")
    got_p = glcm_variance_map(img, levels=8, window=3, angle=PI / 2, mean="paper")

    def variances(n_sevens: int) -> tuple[float, float]:
        e1 = Fraction(7 * n_sevens, 6)       # sum m p
        e2 = Fraction(49 * n_sevens, 6)      # sum m^2 p
        haralick = e2 - e1 ** 2
        mu = e1 / 64
        paper = e2 - 2 * mu * e1 + mu ** 2
        return float(haralick), float(paper)

    h0, p0 = variances(4)  # centred on a level-0 column
    h7, p7 = variances(2)
    assert h0 == h7 == pytest.approx(98 / 9)
    np.testing.assert_allclose(got_h, 98 / 9, rtol=1e-6)
    expected_p = np.where(np.arange(6) % 2 == 0, p0, p7)[None, :].repeat(5, axis=0)
    np.testing.assert_allclose(got_p, expected_p, rtol=1e-6)
    # the paper's mean (unlike Haralick's) tells the two column types apart
    assert not np.allclose(got_p[:, 0], got_p[:, 1])


def test_variance_map_is_vectorised():
    img = np.random.default_rng(0).random((224, 224)).astype(np.float32)
    start = time.perf_counter()
    out = glcm_variance_map(img)
    assert time.perf_counter() - start < 1.0  # a per-pixel loop of graycomatrix takes ~10 s
    assert out.shape == (224, 224) and np.isfinite(out).all()


# ----------------------------------------------------------------------------- features


def test_features_constant_image_hand_values():
    f = glcm_features(np.full((8, 8), 0.3, dtype=np.float32), levels=8)
    assert set(f) == set(FEATURE_NAMES)
    expected = dict(contrast=0.0, dissimilarity=0.0, homogeneity=1.0, energy=1.0, ASM=1.0,
                    entropy=0.0, correlation=1.0)
    for name, value in expected.items():
        assert f[name] == pytest.approx(value, abs=1e-12), name


def test_features_stripes_hand_values():
    """Columns 0,1,0,1 with 2 levels, horizontal pairs only, symmetric: p = [[0, .5], [.5, 0]]."""
    img = np.zeros((4, 6), dtype=np.float32)
    img[:, 1::2] = 1.0
    f = glcm_features(img, levels=2, angles=(0.0,))
    expected = dict(contrast=1.0, dissimilarity=1.0, homogeneity=0.5, ASM=0.5, energy=np.sqrt(0.5),
                    entropy=np.log(2.0), correlation=-1.0)
    for name, value in expected.items():
        assert f[name] == pytest.approx(value, abs=1e-12), name


def test_features_average_over_angles():
    """Horizontal stripes have contrast 1 at 0 rad, 0 at pi/2, 1 at pi/4 and 3pi/4: mean 3/4."""
    img = np.zeros((6, 6), dtype=np.float32)
    img[:, 1::2] = 1.0
    assert glcm_features(img, levels=2)["contrast"] == pytest.approx(0.75)


def test_features_mask_ignores_outside_pairs():
    img = np.random.default_rng(1).random((8, 8)).astype(np.float32)
    img[:, :4] = 0.5
    mask = np.zeros((8, 8), np.uint8)
    mask[:, :4] = 1
    f = glcm_features(img, levels=8, mask=mask)
    assert f["contrast"] == pytest.approx(0.0) and f["energy"] == pytest.approx(1.0)
    assert glcm_features(img, levels=8)["contrast"] > 0.5


def test_feature_table_rows_and_ids():
    rng = np.random.default_rng(2)
    images = rng.random((3, 8, 8)).astype(np.float32)
    table = glcm_feature_table(images, ids=["a", "b", "c"], levels=8)
    assert isinstance(table, pd.DataFrame)
    assert list(table.columns) == list(FEATURE_NAMES) and list(table.index) == ["a", "b", "c"]
    assert table.loc["b", "contrast"] == pytest.approx(glcm_features(images[1], levels=8)["contrast"])
    with pytest.raises(ValueError, match="2 ids for 3 images"):
        glcm_feature_table(images, ids=["a", "b"])
    bad = [images[0], np.full((8, 8), 2.0, np.float32)]
    with pytest.raises(ValueError, match=r"image y: .*\[0, 1\]"):
        glcm_feature_table(bad, ids=["x", "y"])
