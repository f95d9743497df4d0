"""The proposed Lesion/Background explanation (Sec. 4.2, Fig. 5, Eq. 6)."""
from __future__ import annotations

import json
import math

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from matplotlib.patches import Rectangle
from torch import nn

from mammo_lib.networks.activation import GroupActivations
from mammo_lib.explain.eq6 import (BACKGROUND, BACKGROUND_RULES, DEFAULT_BACKGROUND_RULE, LESION, Explanation,
                               canonical_background_rule, classify_cells, explain_many, explain_roi,
                               lesion_background, lesion_weight, window_grid)
from mammo_lib.explain.glcm import glcm_variance_map
from mammo_lib.networks.densenet import build_model, to_model_input
from mammo_lib.data.records import DataError

# ----------------------------------------------------------------------------- tiny models


class PoolNet(nn.Module):
    """Hand-computable stand-in: "group-4 activation" = (cell mean, 2 * cell mean) on a g x g grid,
    logits = channel means of A. Dropout makes train mode visible; calls records batch sizes."""

    def __init__(self, grid: int):
        super().__init__()
        self.grid = grid
        self.scale = nn.Parameter(torch.tensor([1.0, 2.0]))
        self.drop = nn.Dropout(0.5)
        self.calls: list[int] = []

    def forward(self, grey: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.calls.append(grey.shape[0])
        a = F.adaptive_avg_pool2d(grey[:, None], self.grid) * self.scale.view(1, -1, 1, 1)
        a = self.drop(a)
        return a.mean(dim=(2, 3)), a


class ConstNet(PoolNet):
    """Activations that ignore the input."""

    def forward(self, grey):
        self.calls.append(grey.shape[0])
        a = torch.ones(grey.shape[0], 3, self.grid, self.grid) * self.scale.sum()
        return a.mean(dim=(2, 3))[:, :2], a


def pool_fn(model, grey):
    return model(grey)


# ----------------------------------------------------------------------------- case tables

# Hand case: 4x4 ROI, grid 2 (2x2 windows) with constant cells c, Lesion = 0.75, Background = 0.25.
# Replacing window (p,q) changes only A at (p,q), by (c - v) * (1, 2): ||.|| = sqrt(5) |c - v|,
# and Eq. 6 divides by g^2 = 4.
HAND_CELLS = np.array([[0.125, 0.5], [0.875, 0.25]])
HAND_DIS_L = math.sqrt(5) / 4 * np.array([[0.625, 0.25], [0.125, 0.5]])
HAND_DIS_B = math.sqrt(5) / 4 * np.array([[0.125, 0.25], [0.625, 0.0]])
HAND_LABELS = [[BACKGROUND, BACKGROUND],   # 0.5 is a tie -> Background
               [LESION, BACKGROUND]]

def _disk_roi(size: int = 32, lo: float = 0.0) -> np.ndarray:
    """A bright noisy disk on a darker noisy background, min ``lo`` (0 by default)."""
    rng = np.random.default_rng(size)
    yy, xx = np.mgrid[:size, :size]
    disk = ((yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size / 4) ** 2).astype(np.float64)
    img = 0.2 + 0.5 * disk + 0.2 * rng.random((size, size))
    img = lo + (img - img.min()) / (img.max() - img.min()) * (0.95 - lo)
    return img.astype(np.float32)


# Complementary rules: (name, ROI, kwargs of lesion_background)
COMPLEMENTARY_CASES = [
    ("soft_disk", _disk_roi(32), dict(background_rule="soft")),
    ("soft_disk_p50", _disk_roi(32), dict(background_rule="soft", soft_percentile=50)),
    ("soft_disk_min_0.3", _disk_roi(28, lo=0.3), dict(background_rule="soft")),
    ("otsu_disk", _disk_roi(32), dict(background_rule="otsu")),
    ("otsu_noise", np.random.default_rng(3).random((40, 40)).astype(np.float32), dict(background_rule="otsu")),
    ("soft_constant", np.full((28, 28), 0.4, np.float32), dict(background_rule="soft")),
    ("otsu_constant", np.full((28, 28), 0.4, np.float32), dict(background_rule="otsu")),
    ("soft_p99_explicit", _disk_roi(32), dict(background_rule="soft", soft_percentile=99.0)),
]

# (kwargs of lesion_background on a 16 px ROI, exception, message)
LESION_BACKGROUND_FAIL_CASES = [
    (dict(background_rule="ratio"), ValueError, "background_rule must be one of"),
    (dict(background_rule=None, soft_percentile=0), ValueError, r"soft_percentile must be a number in \(0, 100\]"),
    (dict(soft_percentile=101), ValueError, r"soft_percentile must be a number in \(0, 100\]"),
    (dict(soft_percentile=True), ValueError, "soft_percentile"),
]

# (name, rule given, canonical)
RULE_NAME_CASES = [("soft", "soft", "soft"), ("otsu", "otsu", "otsu"), ("old", "subtract_clip", "subtract_clip"),
                   ("alias", "unit_difference", "subtract_clip"), ("legacy", "difference", "difference"),
                   ("none", None, DEFAULT_BACKGROUND_RULE)]

# (size, grid, windows, window side)
GRID_CASES = [(224, 7, 49, 32), (64, 2, 4, 32), (12, 3, 9, 4), (5, 1, 1, 5), (6, 6, 36, 1)]

# (size, grid, exception, message)
GRID_FAIL_CASES = [
    (225, 7, ValueError, r"not a multiple of the activation grid 7.*224, 231"),
    (5, 7, ValueError, r"multiple of 7 \(e.g. 7\)"),
    (0, 7, ValueError, "size must be a positive int"),
    (224, 0, ValueError, "grid must be a positive int"),
    (224.0, 7, ValueError, "size must be a positive int"),
]

_ROI = np.full((12, 12), 0.5, dtype=np.float32)

# (kwargs for explain_roi with PoolNet(3) + pool_fn, exception, message)
EXPLAIN_FAIL_CASES = [
    (dict(roi=np.full((12, 10), 0.5, np.float32)), ValueError, "square"),
    (dict(roi=np.full((12, 12), 1.5, np.float32)), ValueError, r"\[0, 1\]"),
    (dict(roi=np.full((12, 12), 1, np.uint8)), TypeError, "float"),
    (dict(roi=np.full((10, 10), 0.5, np.float32)), ValueError, "not a multiple of the activation grid 3"),
    (dict(roi=_ROI, lesion=_ROI), ValueError, "both lesion and background"),
    (dict(roi=_ROI, lesion=_ROI[:6, :6], background=_ROI[:6, :6]), ValueError, "shape"),
    (dict(roi=_ROI, batch_size=0), ValueError, "batch_size"),
    (dict(roi=_ROI, label_names=("a", "b", "c")), ValueError, "3 label names"),
    (dict(roi=_ROI, background_rule="ratio"), ValueError, "background_rule"),
]


def make_explanation(**overrides) -> Explanation:
    fields = dict(prediction=1, probabilities=[0.25, 0.75], label_names=("benign", "malignant"),
                  activation_map=np.arange(4.0).reshape(2, 2) / 3, dis_lesion=[[0.1, 0.2], [0.3, 0.4]],
                  dis_background=[[0.2, 0.2], [0.1, 0.5]],
                  cell_labels=[[LESION, BACKGROUND], [BACKGROUND, LESION]], window=3, grid=2,
                  params={"group": 4, "glcm_angle": np.float64(0.5)})
    fields.update(overrides)
    return Explanation(**fields)


def forward_hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


# ----------------------------------------------------------------------------- step 1


@pytest.mark.parametrize("name, roi, kwargs", COMPLEMENTARY_CASES, ids=[c[0] for c in COMPLEMENTARY_CASES])
def test_complementary_rules_split_the_roi(name, roi, kwargs):
    lesion, background = lesion_background(roi, **kwargs)
    assert lesion.dtype == background.dtype == np.float32
    assert lesion.shape == background.shape == roi.shape
    np.testing.assert_allclose(lesion.astype(np.float64) + background, roi, atol=1e-6)  # ROI = L + B
    # each pixel of both lies between 0 and the ROI's pixel: no clipping, the ROI's range [0, max]
    assert (lesion >= 0).all() and (background >= -1e-7).all()
    assert (lesion <= roi + 1e-7).all() and (background <= roi + 1e-7).all()
    if roi.min() == 0:  # then also within [roi.min(), roi.max()] literally
        for img in (lesion, background):
            assert roi.min() - 1e-7 <= img.min() and img.max() <= roi.max() + 1e-7
    if np.ptp(roi) == 0:  # constant ROI -> constant variance map -> w = 0: all Background
        np.testing.assert_array_equal(lesion, 0.0)
        np.testing.assert_array_equal(background, roi)
    else:
        assert lesion.max() > 0 and background.max() > 0  # both hold part of the ROI


def test_soft_and_otsu_weights_by_hand():
    variance = np.array([[0.0, 1.0], [2.0, 4.0]])
    # 100th percentile = 4 -> w = v / 4; 50th = 1.5 -> clip(v / 1.5, 0, 1)
    np.testing.assert_allclose(lesion_weight(variance, "soft", 100), [[0, 0.25], [0.5, 1.0]])
    np.testing.assert_allclose(lesion_weight(variance, "soft", 50), [[0, 1 / 1.5], [1, 1]])
    # a map that is mostly 0: the percentile is 0 -> scale by the maximum
    np.testing.assert_allclose(lesion_weight(np.array([[0.0, 0.0], [0.0, 2.0]]), "soft", 50), [[0, 0], [0, 1]])
    np.testing.assert_array_equal(lesion_weight(np.zeros((2, 2)), "soft"), 0.0)
    np.testing.assert_array_equal(lesion_weight(np.full((2, 2), 3.0), "soft"), 0.0)  # constant: no contrast
    # Otsu between the two modes {0, 0.1} and {3.9, 4}
    np.testing.assert_array_equal(lesion_weight(np.array([[0.0, 0.1], [3.9, 4.0]]), "otsu"), [[0, 0], [1, 1]])
    np.testing.assert_array_equal(lesion_weight(np.full((3, 3), 0.7), "otsu"), 0.0)
    with pytest.raises(ValueError, match="'soft' and 'otsu'"):
        lesion_weight(variance, "subtract_clip")


def test_soft_rule_is_the_weight_times_the_roi():
    roi = _disk_roi(32)
    lesion, background = lesion_background(roi, background_rule="soft", soft_percentile=90)
    w = lesion_weight(glcm_variance_map(roi), "soft", 90)
    np.testing.assert_allclose(lesion, w * roi, atol=1e-6)
    np.testing.assert_allclose(background, (1 - w) * roi, atol=1e-6)
    hard, _ = lesion_background(roi, background_rule="otsu")
    assert set(np.unique(hard[roi > 0] / roi[roi > 0]).round(5)) <= {0.0, 1.0}


@pytest.mark.parametrize("rule", ["subtract_clip", "unit_difference"])
def test_old_rule_keeps_its_numbers(rule):
    """The former default: Lesion = variance stretched to the ROI's range, Background =
    clip(u(ROI) - u(Lesion), 0) with u the min-max rescaling to [0, 1]."""
    rng = np.random.default_rng(0)
    roi = (0.2 + 0.5 * rng.random((16, 16))).astype(np.float32)
    lesion, background = lesion_background(roi, background_rule=rule)
    assert lesion.dtype == background.dtype == np.float32
    assert lesion.shape == background.shape == roi.shape
    assert lesion.min() == pytest.approx(roi.min()) and lesion.max() == pytest.approx(roi.max())
    variance = glcm_variance_map(roi).astype(np.float64).ravel()
    slope, intercept = np.polyfit(variance, lesion.ravel(), 1)
    np.testing.assert_allclose(slope * variance + intercept, lesion.ravel(), atol=1e-6)
    assert slope > 0
    u = lambda x: (x - x.min()) / (x.max() - x.min())  # noqa: E731
    np.testing.assert_allclose(background, np.clip(u(roi) - u(lesion), 0, None), atol=1e-6)
    assert background.min() == 0.0 and background.max() <= 1.0


def test_background_difference_rule_and_constant_roi():
    roi = np.full((8, 8), 0.4, dtype=np.float32)
    lesion, background = lesion_background(roi, background_rule="subtract_clip")
    np.testing.assert_array_equal(lesion, np.float32(0.4))  # constant variance -> ROI minimum
    np.testing.assert_array_equal(background, 0.0)
    rng = np.random.default_rng(1)
    roi = rng.random((8, 8)).astype(np.float32)
    lesion, background = lesion_background(roi, background_rule="difference")
    np.testing.assert_allclose(background, np.clip(roi - lesion, 0, None), atol=1e-7)


@pytest.mark.parametrize("name, rule, canonical", RULE_NAME_CASES, ids=[c[0] for c in RULE_NAME_CASES])
def test_rule_names_and_default(name, rule, canonical):
    assert canonical_background_rule(rule) == canonical
    assert DEFAULT_BACKGROUND_RULE in BACKGROUND_RULES
    roi = _disk_roi(28)
    got = lesion_background(roi, background_rule=rule)
    want = lesion_background(roi, background_rule=canonical)
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("kwargs, exc, match", LESION_BACKGROUND_FAIL_CASES)
def test_lesion_background_bad_input(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        lesion_background(np.full((16, 16), 0.5, np.float32), **kwargs)


# ----------------------------------------------------------------------------- step 2


@pytest.mark.parametrize("size, grid, n_windows, side", GRID_CASES)
def test_windows_tile_the_roi_exactly(size, grid, n_windows, side):
    windows = window_grid(size, grid)
    assert len(windows) == n_windows
    cover = np.zeros((size, size), dtype=int)
    for p, q, rows, cols in windows:
        assert rows.stop - rows.start == side and cols.stop - cols.start == side
        assert (rows.start, cols.start) == (p * side, q * side)
        cover[rows, cols] += 1
    np.testing.assert_array_equal(cover, 1)  # every pixel in exactly one window
    assert [(p, q) for p, q, _, _ in windows] == [(p, q) for p in range(grid) for q in range(grid)]


@pytest.mark.parametrize("size, grid, exc, match", GRID_FAIL_CASES)
def test_window_grid_bad_sizes(size, grid, exc, match):
    with pytest.raises(exc, match=match):
        window_grid(size, grid)


# ----------------------------------------------------------------------------- step 3 (Eq. 6)


def test_eq6_hand_computed():
    roi = np.kron(HAND_CELLS, np.ones((2, 2))).astype(np.float32)
    model = PoolNet(grid=2)
    e = explain_roi(model, roi, lesion=np.full((4, 4), 0.75, np.float32),
                    background=np.full((4, 4), 0.25, np.float32), layer_fn=pool_fn)
    assert (e.grid, e.window) == (2, 2)
    np.testing.assert_allclose(e.dis_lesion, HAND_DIS_L, atol=1e-7)
    np.testing.assert_allclose(e.dis_background, HAND_DIS_B, atol=1e-7)
    assert e.cell_labels.tolist() == HAND_LABELS
    assert e.lesion_fraction == 0.25
    # F^4 (Eq. 3) = mean over channels of A^2 = (c^2 + 4 c^2) / 2
    np.testing.assert_allclose(e.activation_map, 2.5 * HAND_CELLS ** 2, atol=1e-7)
    # logits = channel means (mean c, 2 mean c) with mean c = 0.4375
    p1 = 1 / (1 + math.exp(-0.4375))
    np.testing.assert_allclose(e.probabilities, [1 - p1, p1], atol=1e-7)
    assert e.prediction == 1 and e.predicted_label == "malignant"
    assert e.params["lesion_source"] == "given" and e.params["layer_fn"] == "pool_fn"


def test_forward_samples_and_batch_size_invariance():
    rng = np.random.default_rng(5)
    roi, lesion, background = rng.random((3, 12, 12)).astype(np.float32)
    results = []
    for batch_size in (1, 7, 99):
        model = PoolNet(grid=3)
        e = explain_roi(model, roi, lesion=lesion, background=background, batch_size=batch_size,
                        layer_fn=pool_fn)
        assert sum(model.calls) == 1 + 2 * 3 * 3  # ROI, 9 ROI_L, 9 ROI_B
        assert model.calls[0] == 1 and max(model.calls[1:]) == min(batch_size, 18)
        assert len(model.calls) == 1 + math.ceil(18 / batch_size)
        results.append(e)
    for e in results[1:]:
        np.testing.assert_allclose(e.dis_lesion, results[0].dis_lesion, rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(e.dis_background, results[0].dis_background, rtol=1e-6, atol=1e-9)
    # one-by-one by hand: replace window (1, 2) with Lesion and apply Eq. 6 directly
    x = roi.copy()
    x[4:8, 8:12] = lesion[4:8, 8:12]
    pool = lambda img: img.reshape(3, 4, 3, 4).mean(axis=(1, 3))  # noqa: E731
    diff = (pool(roi) - pool(x))[None] * np.array([1.0, 2.0])[:, None, None]
    assert results[0].dis_lesion[1, 2] == pytest.approx(np.linalg.norm(diff, axis=0).mean(), rel=1e-5)


def test_constant_activations_give_zero_distances_and_tie_label():
    rng = np.random.default_rng(6)
    e = explain_roi(ConstNet(grid=2), rng.random((8, 8)).astype(np.float32), layer_fn=pool_fn)
    np.testing.assert_array_equal(e.dis_lesion, 0.0)
    np.testing.assert_array_equal(e.dis_background, 0.0)
    assert (e.cell_labels == BACKGROUND).all() and e.lesion_fraction == 0.0
    assert classify_cells(np.array([1.0, 2.0, 3.0]), np.array([2.0, 2.0, 1.0])).tolist() == \
        [LESION, BACKGROUND, BACKGROUND]


def test_model_state_restored_and_eval_used():
    rng = np.random.default_rng(7)
    roi = rng.random((12, 12)).astype(np.float32)
    model = PoolNet(grid=3).train()
    model.scale.requires_grad_(False)
    first = explain_roi(model, roi, layer_fn=pool_fn)
    second = explain_roi(model, roi, layer_fn=pool_fn)
    # dropout (p = 0.5) would make the two runs differ if the model were not in eval mode
    np.testing.assert_array_equal(first.dis_lesion, second.dis_lesion)
    assert model.training and model.drop.training
    assert model.scale.requires_grad is False
    model.eval()
    explain_roi(model, roi, layer_fn=pool_fn)
    assert not model.training and not model.drop.training


@pytest.mark.parametrize("kwargs, exc, match", EXPLAIN_FAIL_CASES)
def test_explain_roi_bad_input(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        explain_roi(PoolNet(grid=3), layer_fn=pool_fn, **kwargs)


def test_layer_fn_with_bad_activation_shape():
    def flat_fn(model, grey):
        logits, a = model(grey)
        return logits, a.flatten(2)
    with pytest.raises(ValueError, match=r"\(N, C, g, g\)"):
        explain_roi(PoolNet(grid=3), _ROI, layer_fn=flat_fn)


def test_small_densenet_default_path():
    """build_model("small") at 64 px: grid 2 from the model; one Eq. 6 value rechecked by hand."""
    model = build_model("small", seed=0).train()
    model.features.conv0.weight.requires_grad_(False)
    counted: list[int] = []
    counter = model.register_forward_pre_hook(lambda _m, args: counted.append(args[0].shape[0]))
    hooks_before = forward_hook_count(model)
    rng = np.random.default_rng(8)
    roi = rng.random((64, 64)).astype(np.float32)
    e = explain_roi(model, roi, batch_size=3)
    assert (e.grid, e.window) == (2, 32)
    assert sum(counted) == 1 + 2 * 2 * 2
    assert forward_hook_count(model) == hooks_before
    assert model.training and all(m.training for m in model.modules())
    assert model.features.conv0.weight.requires_grad is False
    assert e.params["lesion_source"] == "glcm" and e.params["glcm_mean"] == "paper"
    counter.remove()

    lesion, background = lesion_background(roi)
    x = np.stack([roi, roi])
    x[1, 32:64, 0:32] = background[32:64, 0:32]  # ROI_B(1, 0)
    with GroupActivations(model, groups=(4,), mode="eval") as acts, torch.no_grad():
        logits = model(to_model_input(torch.from_numpy(x)))
        a = acts[4].double().numpy()
    want = np.linalg.norm(a[0] - a[1], axis=0).mean()
    assert e.dis_background[1, 0] == pytest.approx(want, rel=1e-5)
    np.testing.assert_allclose(e.probabilities, torch.softmax(logits[0].double(), 0).numpy(), rtol=1e-5)
    np.testing.assert_allclose(e.activation_map, (a[0] ** 2).mean(axis=0), rtol=1e-5)
    assert e.dis_lesion.shape == (2, 2) and (e.dis_lesion > 0).all()


def test_explain_many_matches_explain_roi():
    rng = np.random.default_rng(9)
    rois = rng.random((3, 12, 12)).astype(np.float32)
    many = explain_many(PoolNet(grid=3), rois, layer_fn=pool_fn, progress=False)
    assert len(many) == 3
    for roi, e in zip(rois, many):
        np.testing.assert_array_equal(e.dis_lesion, explain_roi(PoolNet(grid=3), roi, layer_fn=pool_fn).dis_lesion)
    with pytest.raises(TypeError, match="per ROI"):
        explain_many(PoolNet(grid=3), rois, lesion=rois[0], layer_fn=pool_fn)


# ----------------------------------------------------------------------------- Explanation


def test_json_round_trip(tmp_path):
    e = make_explanation()
    path = e.to_json(tmp_path / "new_dir" / "expl.json")  # missing folders are created
    assert [p.name for p in path.parent.iterdir()] == ["expl.json"]  # no temp file left
    back = Explanation.from_json(path)
    for name in ("activation_map", "dis_lesion", "dis_background", "probabilities", "cell_labels"):
        np.testing.assert_array_equal(getattr(back, name), getattr(e, name))
    assert (back.prediction, back.label_names, back.window, back.grid) == \
        (1, ("benign", "malignant"), 3, 2)
    assert back.params == {"group": 4, "glcm_angle": 0.5}
    assert back.lesion_fraction == 0.5
    assert json.loads(path.read_text())["cell_labels"] == [[LESION, BACKGROUND], [BACKGROUND, LESION]]


@pytest.mark.parametrize("content, match", [
    ("{not json", "cannot read"),
    ('{"prediction": 1}', "missing keys"),
    ("[1, 2]", "JSON object"),
])
def test_from_json_bad_file(tmp_path, content, match):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(DataError, match=match) as info:
        Explanation.from_json(path)
    assert info.value.file == str(path)


@pytest.mark.parametrize("overrides, match", [
    (dict(dis_lesion=np.zeros((3, 3))), r"dis_lesion must have shape \(2, 2\)"),
    (dict(cell_labels=[["Lesion", "Mass"], ["Lesion", "Lesion"]]), "only 'Lesion' and 'Background'"),
    (dict(probabilities=[0.2, 0.3, 0.5]), "2 label names"),
    (dict(prediction=2), "not a class index"),
])
def test_explanation_validation(overrides, match):
    with pytest.raises(ValueError, match=match):
        make_explanation(**overrides)


def test_plot_agg():
    from mammo_lib.visualize import plot_explanation

    e = make_explanation()
    rng = np.random.default_rng(10)
    roi = rng.random((6, 6)).astype(np.float32)
    mask = np.zeros((6, 6), np.uint8)
    mask[1:5, 1:5] = 1
    fig = plot_explanation(e, roi, mask=mask)
    ax_map, ax_cells = fig.axes[:2]
    cells = [p for p in ax_cells.patches if isinstance(p, Rectangle)]
    assert len(cells) == 4
    assert len(ax_cells.texts) == 4 and "L 0.1" in ax_cells.texts[0].get_text()
    assert "malignant" in fig._suptitle.get_text() and "0.750" in fig._suptitle.get_text()
    assert ax_map.images[1].get_array().shape == (6, 6)  # F^4 resized to the ROI
    fig.canvas.draw()
    fig2 = matplotlib.figure.Figure()
    axes = fig2.subplots(1, 2)
    assert plot_explanation(e, roi, axes=axes) is fig2
    with pytest.raises(ValueError, match="6x6"):
        plot_explanation(e, roi[:4, :4])


@pytest.mark.slow
def test_full_densenet121_at_224_uses_the_papers_7x7_grid():
    """The paper's setting: DenseNet121 at 224 px -> F^4 is 7x7, windows 32x32, 1 + 2*49 = 99 passes."""
    model = build_model("densenet121", seed=0).eval()
    counted: list[int] = []
    counter = model.register_forward_pre_hook(lambda _m, args: counted.append(args[0].shape[0]))
    roi = np.random.default_rng(0).random((224, 224)).astype(np.float32)
    e = explain_roi(model, roi, batch_size=50)
    counter.remove()
    assert (e.grid, e.window) == (7, 32)
    assert sum(counted) == 99 and counted == [1, 50, 48]  # ROI alone (grid read from it), then batches
    assert e.activation_map.shape == e.dis_lesion.shape == e.dis_background.shape == (7, 7)
    assert np.all(e.dis_lesion >= 0) and np.all(e.dis_background >= 0)
    assert set(np.unique(e.cell_labels)) <= {LESION, BACKGROUND}


# (mask builder, expected p_lesion_on_mass, p_lesion_off_mass); labels [[L, B], [B, L]], window 3
AGREEMENT_CASES = [
    ("top_left_full", lambda m: m.__setitem__((slice(0, 3), slice(0, 3)), 1), 1.0, 1 / 3),
    ("top_right_full", lambda m: m.__setitem__((slice(0, 3), slice(3, 6)), 1), 0.0, 2 / 3),
    ("two_pixels_too_few", lambda m: m.__setitem__((slice(0, 1), slice(0, 2)), 1), math.nan, 0.5),
    ("diagonal_cells", lambda m: (m.__setitem__((slice(0, 3), slice(0, 3)), 1),
                                  m.__setitem__((slice(3, 6), slice(3, 6)), 1)), 1.0, 0.0),
]


@pytest.mark.parametrize("name, fill, on, off", AGREEMENT_CASES, ids=[c[0] for c in AGREEMENT_CASES])
def test_lesion_agreement_by_hand(name, fill, on, off):
    from mammo_lib.explain.eq6 import lesion_agreement

    mask = np.zeros((6, 6), np.uint8)
    fill(mask)
    r = lesion_agreement(make_explanation(), mask)   # 2 of 9 pixels < 0.25 cover: not a mass cell
    assert (math.isnan(r["p_lesion_on_mass"]) if math.isnan(on) else r["p_lesion_on_mass"] == pytest.approx(on))
    assert r["p_lesion_off_mass"] == pytest.approx(off)
    assert r["lesion_fraction"] == 0.5 and r["mass_cells"] + r["other_cells"] == 4


@pytest.mark.parametrize("mask, kw, match", [
    (np.zeros((5, 5)), {}, "does not match"),
    (np.zeros((6, 6)), {"min_cover": 0.0}, "min_cover"),
])
def test_lesion_agreement_bad_input(mask, kw, match):
    from mammo_lib.explain.eq6 import lesion_agreement

    with pytest.raises(ValueError, match=match):
        lesion_agreement(make_explanation(), mask, **kw)


# ----------------------------------------------------------------------------- background rule and sanity record

# (name, explain_roi kwargs besides roi/layer_fn, recorded background_rule)
RULE_RECORD_CASES = [
    ("default", dict(), DEFAULT_BACKGROUND_RULE),
    ("otsu", dict(background_rule="otsu"), "otsu"),
    ("alias", dict(background_rule="unit_difference"), "subtract_clip"),
    ("given", dict(lesion=np.full((12, 12), 0.2, np.float32), background=np.full((12, 12), 0.3, np.float32)),
     "given"),
]


@pytest.mark.parametrize("name, kwargs, recorded", RULE_RECORD_CASES, ids=[c[0] for c in RULE_RECORD_CASES])
def test_rule_and_pixel_change_agreement_always_recorded(name, kwargs, recorded, tmp_path):
    roi = _disk_roi(12)
    e = explain_roi(PoolNet(grid=3), roi, layer_fn=pool_fn, **kwargs)
    assert e.params["background_rule"] == recorded
    assert ("soft_percentile" in e.params) == (recorded == "soft")
    agreement = e.sanity["pixel_change_agreement"]
    assert 0.0 <= agreement <= 1.0 and agreement * 9 == pytest.approx(round(agreement * 9))
    back = Explanation.from_json(e.to_json(tmp_path / "e.json"))
    assert back.params["background_rule"] == recorded
    assert back.sanity == {"pixel_change_agreement": agreement}


def test_recorded_agreement_is_the_share_of_pixel_change_labels():
    rng = np.random.default_rng(11)
    roi, lesion, background = rng.random((3, 12, 12)).astype(np.float32)
    e = explain_roi(PoolNet(grid=3), roi, lesion=lesion, background=background, layer_fn=pool_fn)
    from mammo_lib.explain.sanity import pixel_change_labels

    trivial = pixel_change_labels(roi, lesion, background, 3)
    assert e.sanity["pixel_change_agreement"] == float(np.mean(e.cell_labels == trivial))


def test_old_json_without_sanity_still_reads(tmp_path):
    d = make_explanation(sanity={"pixel_change_agreement": 0.25}).to_dict()
    assert d["sanity"] == {"pixel_change_agreement": 0.25}
    del d["sanity"]
    path = tmp_path / "old.json"
    path.write_text(json.dumps(d))
    back = Explanation.from_json(path)
    assert back.sanity == {} and back.params == {"group": 4, "glcm_angle": 0.5}


def test_cli_explain_background_rule(tmp_path, capsys):
    from PIL import Image

    from mammo_lib.cli import build_parser, main

    assert build_parser().parse_args(["explain", "--checkpoint", "c", "--image", "i", "--out", "o"]
                                     ).background_rule == DEFAULT_BACKGROUND_RULE
    ckpt = tmp_path / "model.pt"
    torch.save({"model_state": build_model("small", seed=0).state_dict()}, ckpt)
    img = tmp_path / "roi.png"
    Image.fromarray((255 * _disk_roi(64)).astype(np.uint8)).save(img)
    out = tmp_path / "expl"
    rc = main(["explain", "--checkpoint", str(ckpt), "--arch", "small", "--image", str(img), "--size", "64",
               "--background-rule", "otsu", "--out", str(out)])
    assert rc == 0
    d = json.loads((out / "explanation.json").read_text())
    assert d["params"]["background_rule"] == "otsu"
    agreement = d["sanity"]["pixel_change_agreement"]
    assert f"pixel-change agreement: {100 * agreement:.0f}%" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        build_parser().parse_args(["explain", "--checkpoint", "c", "--image", "i", "--out", "o",
                                   "--background-rule", "ratio"])


def test_fig5_shared_scale_titles_and_labels():
    from mammo_lib.repro import figures

    roi = _disk_roi(32)
    lesion, background = lesion_background(roi, background_rule="soft")
    mask = (roi > 0.6).astype(np.uint8)
    fig = figures.fig5_lesion_background(roi, lesion, background, make_explanation(grid=4, window=8,
                                         activation_map=np.zeros((4, 4)), dis_lesion=np.zeros((4, 4)),
                                         dis_background=np.ones((4, 4)), cell_labels=np.full((4, 4), LESION),
                                         params={"background_rule": "soft"}), mask, true_label="benign")
    axes = fig.get_axes()
    assert len(axes) == 7  # 3 images + shared colourbar + the explanation's 2 panels + its colourbar
    images = [ax.images[0] for ax in axes[:3]]
    assert len({im.get_clim() for im in images}) == 1  # one grey scale for ROI, Lesion, Background
    assert images[0].get_clim() == pytest.approx((0.0, float(roi.max())), abs=1e-6)
    title = fig._suptitle.get_text()
    assert "true: benign" in title and "predicted: malignant (probability 0.750)" in title
    sizes = {ax.title.get_fontsize() for ax in (*axes[:3], *axes[4:6])}
    assert len(sizes) == 1 and {ax.title.get_horizontalalignment() for ax in axes[:3]} == {"center"}
    assert "(1 \u2212 w)" in axes[2].get_title()
    # backward compatible: the old positional call, no explanation, no title
    fig = figures.fig5_lesion_background(roi, lesion, background)
    assert len(fig.get_axes()) == 4 and fig._suptitle is None
    fig.canvas.draw()
