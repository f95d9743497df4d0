"""Tests for mammo_lib.data.roi: crop geometry, zero padding and resizing worked out by hand."""
from __future__ import annotations

import re

import numpy as np
import pytest

from mammo_lib.data.roi import (TABLE1_CONFIGS, VARIANTS, Box, box_iou, crop_box, extract_roi,
                           mask_bbox)

H, W = 500, 600  # test image shape

# (name, mask rows [r0, r1), mask cols [c0, c1), expected crop Box, expected pad (t, b, l, r))
# mass_centred, min_context 224: start = y0 + (h - 224) // 2 (floor), width exactly 224.
MASS_CENTRED_CASES = [
    ("centre", (240, 260), (290, 310), Box(138, 188, 362, 412), (0, 0, 0, 0)),
    ("top", (0, 10), (290, 310), Box(-107, 188, 117, 412), (107, 0, 0, 0)),
    ("bottom", (490, 500), (290, 310), Box(383, 188, 607, 412), (0, 107, 0, 0)),
    ("left", (240, 260), (0, 10), Box(138, -107, 362, 117), (0, 0, 107, 0)),
    ("right", (240, 260), (590, 600), Box(138, 483, 362, 707), (0, 0, 0, 107)),
    ("top_left", (0, 10), (0, 10), Box(-107, -107, 117, 117), (107, 0, 107, 0)),
    ("top_right", (0, 10), (590, 600), Box(-107, 483, 117, 707), (107, 0, 0, 107)),
    ("bottom_left", (490, 500), (0, 10), Box(383, -107, 607, 117), (0, 107, 107, 0)),
    ("bottom_right", (490, 500), (590, 600), Box(383, 483, 607, 707), (0, 107, 0, 107)),
    # odd difference 224 - 11 = 213: 107 context pixels above, 106 below
    ("odd_height", (200, 211), (290, 310), Box(93, 188, 317, 412), (0, 0, 0, 0)),
    # one pixel at (250, 300): (1 - 224) // 2 = -112
    ("one_pixel", (250, 251), (300, 301), Box(138, 188, 362, 412), (0, 0, 0, 0)),
    # larger than 224 on both sides: the crop is the bounding box
    ("large", (100, 400), (150, 410), Box(100, 150, 400, 410), (0, 0, 0, 0)),
    # tall and thin: height from the box, width 224; (20 - 224) // 2 = -102
    ("tall", (100, 400), (290, 310), Box(100, 188, 400, 412), (0, 0, 0, 0)),
]

# (variant, bbox, expected crop)
VARIANT_CASES = [
    ("original", Box(100, 200, 130, 250), Box(100, 200, 130, 250)),
    # side 2 * 50 = 100; y: 100 + (30 - 100) // 2 = 65; x: 200 + (50 - 100) // 2 = 175
    ("double_box", Box(100, 200, 130, 250), Box(65, 175, 165, 275)),
    # odd: (31 - 100) // 2 = -35
    ("double_box", Box(100, 200, 131, 250), Box(65, 175, 165, 275)),
    ("mass_centred", Box(100, 200, 130, 250), Box(3, 113, 227, 337)),
]

# (description, image, mask, kwargs, exception, message fragment)
_img = np.full((20, 20), 0.5, np.float32)
_mask = np.zeros((20, 20), np.uint8)
_mask[5:8, 5:8] = 1
FAIL_CASES = [
    ("empty mask", _img, np.zeros((20, 20), np.uint8), {}, ValueError, "empty mask"),
    ("shape mismatch", _img, np.zeros((20, 21), np.uint8), {}, ValueError, "differs from image shape"),
    ("3-D image", np.zeros((2, 20, 20)), np.zeros((2, 20, 20)), {}, ValueError, "2-D"),
    ("non-binary mask", _img, _mask * 255, {}, ValueError, "binary"),
    ("image out of range", _img * 300, _mask, {}, ValueError, "[0, 1]"),
    ("image with NaN", np.where(_mask > 0, np.nan, _img), _mask, {}, ValueError, "finite"),
    ("unknown variant", _img, _mask, {"variant": "tight"}, ValueError, "unknown ROI variant"),
    ("random variant without rng", _img, _mask, {"variant": "overlap_0.9"}, ValueError, "is random"),
    ("size 0", _img, _mask, {"size": 0}, ValueError, "size must be >= 1"),
    ("aux shape", _img, _mask, {"aux": {"c": np.zeros((3, 3))}}, ValueError, "aux map 'c'"),
]


def _mask_at(rows: tuple[int, int], cols: tuple[int, int], shape=(H, W)) -> np.ndarray:
    m = np.zeros(shape, np.uint8)
    m[rows[0]:rows[1], cols[0]:cols[1]] = 1
    return m


def _ramp(shape=(H, W)) -> np.ndarray:
    """0.1 + 0.8 * (row-major pixel number) / n: every pixel distinct and > 0."""
    n = shape[0] * shape[1]
    return (0.1 + 0.8 * np.arange(n, dtype=np.float64).reshape(shape) / n).astype(np.float32)


def test_box_properties_and_validation():
    b = Box(2, 3, 12, 8)
    assert (b.h, b.w) == (10, 5)
    assert b.centre == (7.0, 5.5)
    with pytest.raises(ValueError, match="positive size"):
        Box(5, 5, 5, 9)
    with pytest.raises(TypeError, match="must be an int"):
        Box(0.5, 0, 3, 3)


def test_mask_bbox_by_hand():
    m = np.zeros((10, 12), np.uint8)
    m[2, 7] = 1
    m[5, 3] = 1
    assert mask_bbox(m) == Box(2, 3, 6, 8)
    with pytest.raises(ValueError, match="empty mask"):
        mask_bbox(np.zeros((4, 4)))
    with pytest.raises(ValueError, match="2-D"):
        mask_bbox(np.ones(4))


@pytest.mark.parametrize("name,rows,cols,box,pad", MASS_CENTRED_CASES, ids=[c[0] for c in MASS_CENTRED_CASES])
def test_mass_centred_crop_and_pad(name, rows, cols, box, pad):
    img = np.full((H, W), 0.5, np.float32)
    roi = extract_roi(img, _mask_at(rows, cols))
    assert roi.bbox == Box(rows[0], cols[0], rows[1], cols[1])
    assert roi.box == box
    assert roi.pad == pad
    assert roi.padded == any(pad)
    assert roi.image.shape == roi.mask.shape == (224, 224)
    assert roi.image.dtype == np.float32 and roi.mask.dtype == np.uint8
    # padding is zero, the image is 0.5: the zero fraction of a no-resize crop equals the pad area
    if box.h == 224 and box.w == 224:
        t, b, l, r = pad
        expected_zeros = 224 * 224 - (224 - t - b) * (224 - l - r)
        assert int((roi.image == 0).sum()) == expected_zeros


def test_crop_of_ramp_gives_expected_pixels():
    ramp = _ramp()
    # top-left corner mass: pad 107 above and left, crop needs no resize (224 x 224)
    roi = extract_roi(ramp, _mask_at((0, 10), (0, 10)))
    np.testing.assert_array_equal(roi.image[:107], 0.0)
    np.testing.assert_array_equal(roi.image[:, :107], 0.0)
    np.testing.assert_array_equal(roi.image[107:, 107:], ramp[:117, :117])
    # centre mass: pixel (i, j) of the ROI is ramp[138 + i, 188 + j]
    roi = extract_roi(ramp, _mask_at((240, 260), (290, 310)))
    assert roi.image[0, 0] == ramp[138, 188]
    assert roi.image[223, 223] == ramp[361, 411]
    np.testing.assert_array_equal(roi.mask[102:122, 102:122], 1)
    assert int(roi.mask.sum()) == 400


def test_bicubic_shrink_of_linear_ramp():
    # f(x) = 0.1 + 0.01 x; a 32 x 32 box shrunk to 16 x 16 (factor 2): output column j samples
    # input column x0 + 2 j + 0.5, and bicubic + Gaussian anti-aliasing reproduce a linear ramp.
    img = np.tile((0.1 + 0.01 * np.arange(64)).astype(np.float32), (64, 1))
    roi = extract_roi(img, _mask_at((10, 42), (20, 52), (64, 64)), size=16, min_context=16)
    assert roi.box == Box(10, 20, 42, 52)
    j = np.arange(16)
    expected = 0.1 + 0.01 * (20 + 2 * j + 0.5)
    np.testing.assert_allclose(roi.image[8, 3:13], expected[3:13], atol=1e-4)


def test_constant_image_with_resize_stays_constant():
    img = np.full((H, W), 0.5, np.float32)
    roi = extract_roi(img, _mask_at((100, 400), (150, 410)))
    np.testing.assert_allclose(roi.image, 0.5, atol=1e-5)
    assert roi.image.min() >= 0.0 and roi.image.max() <= 1.0


def test_mask_stays_binary_and_area_ratio_is_kept():
    yy, xx = np.mgrid[:600, :600]
    mask = (((yy - 300) / 150.0) ** 2 + ((xx - 280) / 100.0) ** 2 <= 1).astype(np.uint8)
    rng = np.random.default_rng(0)
    img = rng.random((600, 600)).astype(np.float32)
    roi = extract_roi(img, mask)
    bbox = mask_bbox(mask)
    assert (bbox.h, bbox.w) == (301, 201)
    assert (roi.box.h, roi.box.w) == (301, 224)
    assert set(np.unique(roi.mask)) == {0, 1}
    ratio_in = mask.sum() / (roi.box.h * roi.box.w)
    ratio_out = roi.mask.sum() / 224 ** 2
    assert abs(ratio_out - ratio_in) / ratio_in < 0.02


def test_aux_labels_follow_the_mask():
    ramp = _ramp()
    labels = (np.arange(H * W).reshape(H, W) % 4).astype(np.uint8)
    mask = _mask_at((100, 400), (150, 410))  # crop 300 x 260 -> resized
    roi = extract_roi(ramp, mask, aux={"conf": labels, "mass": mask})
    assert roi.aux["conf"].dtype == np.uint8
    assert set(np.unique(roi.aux["conf"])) <= {0, 1, 2, 3}
    np.testing.assert_array_equal(roi.aux["mass"], roi.mask)
    small = extract_roi(ramp, _mask_at((240, 260), (290, 310)), aux={"conf": labels})
    np.testing.assert_array_equal(small.aux["conf"], labels[138:362, 188:412])
    assert extract_roi(ramp, mask).aux is None


@pytest.mark.parametrize("variant,bbox,expected", VARIANT_CASES)
def test_variant_boxes_by_hand(variant, bbox, expected):
    assert crop_box(bbox, variant) == expected


def test_double_box_extract():
    roi = extract_roi(np.full((H, W), 0.5, np.float32), _mask_at((100, 130), (200, 250)), variant="double_box")
    assert roi.box == Box(65, 175, 165, 275) and roi.variant == "double_box"


@pytest.mark.parametrize("shape", [(100, 100), (37, 80), (1, 1), (224, 10)])
def test_overlap_variant_reaches_iou(shape):
    bbox = Box(300, 400, 300 + shape[0], 400 + shape[1])
    rng = np.random.default_rng(123)
    boxes = [crop_box(bbox, "overlap_0.9", rng=rng) for _ in range(400)]
    assert all((b.h, b.w) == shape for b in boxes)
    ious = np.array([box_iou(b, bbox) for b in boxes])
    assert ious.min() >= 0.9
    # IoU >= 0.9 bounds each shift by floor(side * 0.1 / 1.9)
    dmax = [int(np.floor(s * 0.1 / 1.9)) for s in shape]
    dy = np.array([b.y0 - bbox.y0 for b in boxes])
    dx = np.array([b.x0 - bbox.x0 for b in boxes])
    assert np.abs(dy).max() <= dmax[0] and np.abs(dx).max() <= dmax[1]
    n_distinct = len(set(boxes))
    assert (n_distinct == 1) if max(dmax) == 0 else (n_distinct > 1)


def test_overlap_variant_reproducible_and_validated():
    bbox = Box(0, 0, 100, 100)
    a = [crop_box(bbox, "overlap_0.9", rng=np.random.default_rng(7)) for _ in range(3)]
    assert a[0] == a[1] == a[2]
    assert box_iou(Box(0, 0, 10, 10), Box(0, 5, 10, 15)) == pytest.approx(50 / 150)
    with pytest.raises(ValueError, match="overlap must lie"):
        crop_box(bbox, "overlap_0.9", rng=np.random.default_rng(0), overlap=1.5)


@pytest.mark.parametrize("desc,image,mask,kwargs,exc,msg", FAIL_CASES, ids=[c[0] for c in FAIL_CASES])
def test_extract_roi_rejects_bad_input(desc, image, mask, kwargs, exc, msg):
    with pytest.raises(exc, match=re.escape(msg)):
        extract_roi(image, mask, **kwargs)


def test_table1_configs_run():
    assert list(TABLE1_CONFIGS) == ["original_roi", "double_box", "double_box_flip", "overlap_0.9", "proposed"]
    img = np.full((H, W), 0.5, np.float32)
    mask = _mask_at((240, 260), (290, 310))
    for name, (variant, augs) in TABLE1_CONFIGS.items():
        assert variant in VARIANTS
        assert set(augs) <= {"hflip", "vflip", "rotate"}
        roi = extract_roi(img, mask, variant=variant, rng=np.random.default_rng(0))
        assert roi.image.shape == (224, 224) and roi.mask.sum() > 0
