"""Tests for mammo_lib.figures: every figure builds from tiny synthetic inputs; save_figure writes a PNG."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.image as mpimg  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from mammo_lib import figures  # noqa: E402
from mammo_lib.explain import BACKGROUND, LESION, Explanation  # noqa: E402
from mammo_lib.localization import upsample_map  # noqa: E402

S, G = 32, 4   # ROI side and activation grid (window 8)
RNG = np.random.default_rng(0)


def disk(size: int, cy: float, cx: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    return (((yy - cy) ** 2 + (xx - cx) ** 2) <= r ** 2).astype(np.uint8)


ROI = (0.3 + 0.5 * disk(S, 16, 15, 7) + 0.1 * RNG.random((S, S))).astype(np.float32)
MASK = disk(S, 16, 15, 7)
CONF = np.zeros((S, S), np.uint8)
CONF[2:6, 24:29] = 1
CONF[22:30, 2:10] = 2


def explanation() -> Explanation:
    dl, db = RNG.random((G, G)), RNG.random((G, G))
    return Explanation(prediction=1, probabilities=[0.3, 0.7], label_names=("benign", "malignant"),
                       activation_map=RNG.random((G, G)), dis_lesion=dl, dis_background=db,
                       cell_labels=np.where(dl < db, LESION, BACKGROUND), window=S // G, grid=G)


def knn_table(k: int = 5) -> pd.DataFrame:
    return pd.DataFrame({"query": 0, "rank": np.arange(1, k + 1), "train_index": np.arange(k),
                         "train_id": [f"t{i}" for i in range(k)], "label": [0, 1, 1, 0, 1][:k],
                         "distance": np.linspace(0.5, 2.0, k)})


CORR = pd.DataFrame(RNG.uniform(-1, 1, (4, 6)), index=["contrast", "energy", "ASM", "entropy"],
                    columns=[f"deep_{j}" for j in range(6)])


def n_axes(fig: Figure) -> int:
    """All Axes of a figure, those of its subfigures and colorbars included."""
    return len(fig.get_axes())


# name, builder, expected number of axes
FIGURE_CASES = [
    ("fig4 three levels", lambda: figures.fig4_activation_levels(
        ROI, MASK, {1: RNG.random((8, 8)), 2: RNG.random((4, 4)), 4: RNG.random((1, 1))},
        {1: RNG.random((8, 8)), 2: RNG.random((4, 4)), 4: RNG.random((1, 1))}), 8),
    ("confusion two", lambda: figures.confusion_matrices({"mask": [[5, 1], [2, 4]], "ROI": [[3, 3], [3, 3]]},
                                                         title="Fig. 4b"), 2),
    # ROI, Lesion, Background + their shared colourbar
    ("fig5 without explanation", lambda: figures.fig5_lesion_background(ROI, ROI ** 2, np.clip(ROI - ROI ** 2, 0, 1)), 4),
    # 3 images + shared colourbar + explanation's two panels + its colorbar
    ("fig5 with explanation", lambda: figures.fig5_lesion_background(ROI, ROI ** 2, ROI / 2, explanation(), MASK), 7),
    # 2 conditions x 4 panels
    ("dose-response", lambda: figures.dose_response(pd.DataFrame({
        "condition": ["A"] * 4 + ["B"] * 4, "init": ["imagenet", "imagenet", "ddsm", "ddsm"] * 2,
        "form": ["paper", "at"] * 4, "beta": [0.0, 1000.0] * 4, "acc in distribution": RNG.random(8),
        "flip rate": RNG.random(8), "d4 (test)": RNG.random(8), "energy share on mass": RNG.random(8)})), 8),
    ("fig6", lambda: figures.fig6_distance_distribution(
        pd.DataFrame({"group": np.repeat([1, 2, 3, 4], 5), "d": RNG.random(20)})), 1),
    ("fig7 two rows", lambda: figures.fig7_overlays(np.stack([ROI, ROI]), np.stack([MASK, MASK]),
                                                    RNG.random((2, G, G)), RNG.random((2, G, G)),
                                                    confounders=np.stack([CONF, CONF])), 6),
    # Grad-CAM + HiResCAM, heatmap + colorbar, 2x3 grid for k = 5, explanation 2 + colorbar
    ("fig8", lambda: figures.fig8_panels(ROI, RNG.random((S, S)), CORR, knn_table(), RNG.random((5, S, S)),
                                         explanation(), mask=MASK, hirescam=RNG.random((S, S))), 13),
    ("fig8 one cam, k 1", lambda: figures.fig8_panels(ROI, RNG.random((G, G)), CORR, knn_table(1),
                                                      RNG.random((1, S, S)), explanation()), 7),
    # per case: 3 images + explanation 2 + colorbar
    ("fig9 two cases", lambda: figures.fig9_framework([
        {"roi": ROI, "mask": MASK, "maps_ft": RNG.random((G, G)), "maps_kt": RNG.random((G, G)),
         "explanation": explanation(), "label": lab} for lab in (0, 1)]), 12),
]

ERROR_CASES = [
    ("fig4 groups differ", lambda: figures.fig4_activation_levels(ROI, MASK, {1: np.ones((2, 2))}, {2: np.ones((2, 2))}),
     ValueError, "same non-empty groups"),
    ("fig4 mask shape", lambda: figures.fig4_activation_levels(ROI, MASK[:8], {1: np.ones((2, 2))}, {1: np.ones((2, 2))}),
     ValueError, "mask shape"),
    ("confusion 3x3", lambda: figures.confusion_matrices({"x": np.ones((3, 3))}), ValueError, "2x2"),
    ("confusion negative", lambda: figures.confusion_matrices({"x": [[1, -1], [0, 2]]}), ValueError, "non-negative"),
    ("confusion empty", lambda: figures.confusion_matrices({}), ValueError, "empty"),
    ("fig6 column", lambda: figures.fig6_distance_distribution(pd.DataFrame({"group": [1]})), ValueError, "'d'"),
    ("fig6 negative", lambda: figures.fig6_distance_distribution(pd.DataFrame({"group": [1], "d": [-1.0]})),
     ValueError, ">= 0"),
    ("fig6 not a frame", lambda: figures.fig6_distance_distribution({"group": [1], "d": [1.0]}), TypeError, "DataFrame"),
    ("fig7 maps count", lambda: figures.fig7_overlays(ROI[None], MASK[None], np.ones((2, G, G)), np.ones((1, G, G))),
     ValueError, "N = 1"),
    ("fig7 non-binary mask", lambda: figures.fig7_overlays(ROI[None], 2 * MASK[None], np.ones((1, G, G)),
                                                           np.ones((1, G, G))), ValueError, "binary"),
    ("fig7 ids", lambda: figures.fig7_overlays(ROI[None], MASK[None], np.ones((1, G, G)), np.ones((1, G, G)),
                                               ids=["a", "b"]), ValueError, "ids"),
    ("fig8 two queries", lambda: figures.fig8_panels(ROI, ROI, CORR, pd.concat([knn_table(2), knn_table(2).assign(query=1)]),
                                                     np.ones((4, S, S)), explanation()), ValueError, "several queries"),
    ("fig8 rois count", lambda: figures.fig8_panels(ROI, ROI, CORR, knn_table(3), np.ones((2, S, S)), explanation()),
     ValueError, "k = 3"),
    ("fig8 knn columns", lambda: figures.fig8_panels(ROI, ROI, CORR, pd.DataFrame({"rank": [1]}), np.ones((1, S, S)),
                                                     explanation()), ValueError, "knn_explain"),
    ("fig9 keys", lambda: figures.fig9_framework([{"roi": ROI}]), ValueError, "lacks keys"),
    ("fig9 empty", lambda: figures.fig9_framework([]), ValueError, "empty"),
    ("save suffix", lambda: figures.save_figure(Figure(), "/tmp/x.pdf"), ValueError, "PNG"),
    ("save non-figure", lambda: figures.save_figure("fig", "/tmp/x.png"), TypeError, "Figure"),
]


@pytest.mark.parametrize("name,build,expected", FIGURE_CASES, ids=[c[0] for c in FIGURE_CASES])
def test_figure_builds(name, build, expected) -> None:
    fig = build()
    assert isinstance(fig, Figure)
    assert n_axes(fig) == expected
    fig.canvas.draw()      # the layout and every artist render


@pytest.mark.parametrize("name,call,exc,match", ERROR_CASES, ids=[c[0] for c in ERROR_CASES])
def test_errors(name, call, exc, match) -> None:
    with pytest.raises(exc, match=match):
        call()


def test_fig2_boxes_and_crops() -> None:
    from mammo_lib.roi import crop_box, mask_bbox

    image = (0.2 + 0.1 * RNG.random((120, 100))).astype(np.float32)
    mask = np.zeros((120, 100), np.uint8)
    mask[10:30, 70:95] = 1                     # near the right edge: the 64 px context leaves the image
    image[mask.astype(bool)] = 0.9
    fig = figures.fig2_roi_contexts(image, mask, min_context=64, size=32)
    ax_full, ax_orig, ax_mc = fig.get_axes()
    boxes = sorted((p.get_x() + 0.5, p.get_y() + 0.5, p.get_width(), p.get_height()) for p in ax_full.patches)
    bbox = mask_bbox(mask)
    mc = crop_box(bbox, "mass_centred", min_context=64)
    assert boxes == sorted([(bbox.x0, bbox.y0, bbox.w, bbox.h), (mc.x0, mc.y0, mc.w, mc.h)])
    assert ax_orig.images[0].get_array().shape == (32, 32)
    assert "zero-padded" in ax_mc.get_title() and "64x64" in ax_mc.get_title()


def test_fig7_overlay_is_rescaled_bilinear_map() -> None:
    fmap = np.array([[0.0, 2.0], [4.0, 6.0]])
    fig = figures.fig7_overlays(ROI[None], MASK[None], fmap[None], 2 * fmap[None] + 5, confounders=CONF[None])
    axes = fig.get_axes()
    expected = upsample_map(fmap / 6.0, (S, S))
    for ax in axes[1:3]:         # both maps rescale to the same [0, 1] map
        np.testing.assert_allclose(np.asarray(ax.images[1].get_array()), expected, atol=1e-12)
    colours = {matplotlib.colors.to_hex(line.get_color()) for line in axes[0].lines}
    assert colours == {matplotlib.colors.to_hex(c) for c in ("yellow", "cyan", "magenta")}
    closed = axes[1].lines[0].get_xydata()
    np.testing.assert_allclose(closed[0], closed[-1])          # the mask outline is closed


def test_confusion_annotations_and_accuracy() -> None:
    fig = figures.confusion_matrices({"DDSM KT": np.array([[121, 23], [15, 115]])})
    ax = fig.get_axes()[0]
    assert [t.get_text() for t in ax.texts] == ["121", "23", "15", "115"]
    assert "86.1%" in ax.get_title()


def test_fig6_log_transform_and_zero() -> None:
    d = np.array([np.exp(-3.0), np.exp(-1.0), 0.0, np.exp(-2.0)])
    fig = figures.fig6_distance_distribution(pd.DataFrame({"group": [1, 1, 1, 2], "d": d}))
    ax = fig.get_axes()[0]
    assert "1 values d < 1e-12" in ax.get_ylabel()
    lo, hi = ax.get_ylim()
    assert lo <= np.log(1e-12) + 10 and hi >= 9.0 and np.isfinite([lo, hi]).all()
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1", "2"]


def test_save_figure_png(tmp_path) -> None:
    fig = figures.confusion_matrices({"a": [[1, 2], [3, 4]]})
    path = figures.save_figure(fig, tmp_path / "nested" / "dir" / "cm")
    assert path == tmp_path / "nested" / "dir" / "cm.png"
    img = mpimg.imread(path)
    assert img.ndim == 3 and img.shape[0] > 50 and img.shape[1] > 50
    assert sorted(p.name for p in path.parent.iterdir()) == ["cm.png"]     # no temp file left
