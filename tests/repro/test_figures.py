"""Tests for mammo_lib.repro.figures: every figure builds from tiny synthetic inputs (saving: tests/utils/test_files.py)."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from mammo_lib.repro import figures  # noqa: E402
from mammo_lib.explain.eq6 import BACKGROUND, LESION, Explanation  # noqa: E402
from mammo_lib.explain.localization import upsample_map  # noqa: E402

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


def colorbars(fig) -> list:
    """The colourbar Axes of a figure (or subfigure)."""
    return [ax for ax in fig.get_axes() if ax.get_label() == "<colorbar>"]


def panels(fig) -> list:
    """The Axes that are not colourbars."""
    return [ax for ax in fig.get_axes() if ax.get_label() != "<colorbar>"]


def cbar_labels(fig) -> list[str]:
    return [ax.get_ylabel() or ax.get_xlabel() for ax in colorbars(fig)]


def legend_texts(legend) -> list[str]:
    return [t.get_text() for t in legend.get_texts()]


# Tiny "realistic" case: a 56 px ROI with a bright disk and a 7 x 7 explanation (window 8).
S7, G7 = 56, 7
ROI7 = (0.2 + 0.6 * disk(S7, 28, 30, 10) + 0.1 * RNG.random((S7, S7))).astype(np.float32)
MASK7 = disk(S7, 28, 30, 10)
LESION7 = (ROI7 * MASK7).astype(np.float32)
BACKGROUND7 = (ROI7 - LESION7).astype(np.float32)


def explanation7(grid: int = G7, size: int = S7, rule: str = "subtract_clip") -> Explanation:
    dl, db = RNG.random((grid, grid)), RNG.random((grid, grid))
    return Explanation(prediction=0, probabilities=[0.8, 0.2], label_names=("benign", "malignant"),
                       activation_map=RNG.random((grid, grid)), dis_lesion=dl, dis_background=db,
                       cell_labels=np.where(dl < db, LESION, BACKGROUND), window=size // grid, grid=grid,
                       params={"background_rule": rule})


def grid_case(label: int, prediction=None) -> dict:
    case = {"roi": ROI7, "mask": MASK7, "maps_ft": RNG.random((G7, G7)), "maps_kt": RNG.random((G7, G7)),
            "explanation": explanation7(), "label": label}
    if prediction is not None:
        case["prediction"] = prediction
    return case


# name, builder, expected number of panels (non-colourbar Axes), expected number of colourbars
FIGURE_CASES = [
    # 2 rows x (ROI/mask + 3 groups); one colourbar per map panel
    ("fig4 three levels", lambda: figures.fig4_activation_levels(
        ROI, MASK, {1: RNG.random((8, 8)), 2: RNG.random((4, 4)), 4: RNG.random((1, 1))},
        {1: RNG.random((8, 8)), 2: RNG.random((4, 4)), 4: RNG.random((1, 1))}), 8, 6),
    ("confusion two", lambda: figures.confusion_matrices({"mask": [[5, 1], [2, 4]], "ROI": [[3, 3], [3, 3]]},
                                                         title="Fig. 4b"), 2, 0),
    # ROI, Lesion, Background + their shared colourbar
    ("fig5 without explanation", lambda: figures.fig5_lesion_background(ROI, ROI ** 2, np.clip(ROI - ROI ** 2, 0, 1)),
     3, 1),
    # 3 images + shared colourbar + explanation's two panels + its colorbar
    ("fig5 with explanation", lambda: figures.fig5_lesion_background(ROI, ROI ** 2, ROI / 2, explanation(), MASK), 5, 2),
    # 2 conditions x 4 panels
    ("dose-response", lambda: figures.dose_response(pd.DataFrame({
        "condition": ["A"] * 4 + ["B"] * 4, "init": ["imagenet", "imagenet", "ddsm", "ddsm"] * 2,
        "form": ["paper", "at"] * 4, "beta": [0.0, 1000.0] * 4, "acc in distribution": RNG.random(8),
        "flip rate": RNG.random(8), "d4 (test)": RNG.random(8), "energy share on mass": RNG.random(8)})), 8, 0),
    ("fig6", lambda: figures.fig6_distance_distribution(
        pd.DataFrame({"group": np.repeat([1, 2, 3, 4], 5), "d": RNG.random(20)})), 1, 0),
    # 2 rows x 3 panels, one shared overlay colourbar
    ("fig7 two rows", lambda: figures.fig7_overlays(np.stack([ROI, ROI]), np.stack([MASK, MASK]),
                                                    RNG.random((2, G, G)), RNG.random((2, G, G)),
                                                    confounders=np.stack([CONF, CONF])), 6, 1),
    # Grad-CAM + HiResCAM (+ CAM colourbar), heatmap (+ colourbar), 2x3 grid for k = 5, explanation 2 (+ colourbar)
    ("fig8", lambda: figures.fig8_panels(ROI, RNG.random((S, S)), CORR, knn_table(), RNG.random((5, S, S)),
                                         explanation(), mask=MASK, hirescam=RNG.random((S, S))), 11, 3),
    ("fig8 one cam, k 1", lambda: figures.fig8_panels(ROI, RNG.random((G, G)), CORR, knn_table(1),
                                                      RNG.random((1, S, S)), explanation()), 5, 3),
    # per case: ROI, two maps (+ one colourbar), cells
    ("explanation_grid two cases", lambda: figures.explanation_grid([grid_case(0), grid_case(1, "malignant")]), 8, 2),
    # ROI, Lesion + Background (+ grey colourbar), ROI_L + ROI_B, dis^L + dis^B (+ colourbar), labels
    ("fig9 framework", lambda: figures.fig9_framework(ROI7, LESION7, BACKGROUND7, explanation7(), mask=MASK7,
                                                      true_label="benign"), 8, 2),
    ("fig9 framework grid 2, no mask", lambda: figures.fig9_framework(ROI, ROI ** 2, ROI / 2, explanation7(2, S)),
     8, 2),
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
    ("fig7 true_labels", lambda: figures.fig7_overlays(ROI[None], MASK[None], np.ones((1, G, G)), np.ones((1, G, G)),
                                                       true_labels=["benign", "benign"]), ValueError, "true_labels"),
    ("fig7 predictions", lambda: figures.fig7_overlays(ROI[None], MASK[None], np.ones((1, G, G)), np.ones((1, G, G)),
                                                       predictions=[("benign",)]), ValueError, "predictions"),
    ("grid keys", lambda: figures.explanation_grid([{"roi": ROI}]), ValueError, "lacks keys"),
    ("grid empty", lambda: figures.explanation_grid([]), ValueError, "empty"),
    ("fig9 roi vs grid", lambda: figures.fig9_framework(ROI, ROI, ROI, explanation7()), ValueError, "56x56"),
    ("fig9 lesion shape", lambda: figures.fig9_framework(ROI7, ROI7[:8], ROI7, explanation7()), ValueError,
     "lesion shape"),
    ("fig9 cell outside", lambda: figures.fig9_framework(ROI7, LESION7, BACKGROUND7, explanation7(), cell=(7, 0)),
     ValueError, "outside"),
]


@pytest.mark.parametrize("name,build,n_panels,n_cbars", FIGURE_CASES, ids=[c[0] for c in FIGURE_CASES])
def test_figure_builds(name, build, n_panels, n_cbars) -> None:
    fig = build()
    assert isinstance(fig, Figure)
    assert (len(panels(fig)), len(colorbars(fig))) == (n_panels, n_cbars)
    assert n_axes(fig) == n_panels + n_cbars
    assert all(label for label in cbar_labels(fig))              # every colourbar states its scale
    for ax in panels(fig):                                        # titles centred, 7-11 pt
        assert not ax.get_title(loc="left") and not ax.get_title(loc="right")
        if ax.get_title():
            assert 7 <= ax.title.get_fontsize() <= 11
    fig.canvas.draw()      # the layout and every artist render


@pytest.mark.parametrize("name,call,exc,match", ERROR_CASES, ids=[c[0] for c in ERROR_CASES])
def test_errors(name, call, exc, match) -> None:
    with pytest.raises(exc, match=match):
        call()


def test_fig2_boxes_and_crops() -> None:
    from mammo_lib.data.roi import crop_box, mask_bbox

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


# --------------------------------------------------------------------------- what each figure promises


def test_fig4_each_map_has_own_scale_and_colourbar() -> None:
    maps_roi = {1: 0.01 * RNG.random((8, 8)), 4: 3.0 * RNG.random((2, 2))}
    maps_mask = {1: 50.0 * RNG.random((8, 8)), 4: RNG.random((2, 2))}
    fig = figures.fig4_activation_levels(ROI, MASK, maps_roi, maps_mask)
    grid = np.array(panels(fig)).reshape(2, 3)
    assert sorted(cbar_labels(fig)) == ["$F^{1}$", "$F^{1}$", "$F^{4}$", "$F^{4}$"]
    for row, maps in enumerate((maps_roi, maps_mask)):
        for col, j in enumerate(sorted(maps), start=1):
            ax = grid[row, col]
            im = ax.images[0]
            np.testing.assert_array_equal(im.get_array(), maps[j])
            assert im.get_clim() == pytest.approx((0.0, maps[j].max()))     # its own [0, max]
            assert "own scale" in ax.get_title() and f"group {j}" in ax.get_title()
    mappables = {id(ax._colorbar.mappable) for ax in colorbars(fig)}
    assert mappables == {id(ax.images[0]) for ax in grid[:, 1:].ravel()}   # one colourbar per map panel


def test_fig7_legend_lists_only_drawn_confounders() -> None:
    calc_only = np.where(CONF == 1, 1, 0).astype(np.uint8)
    dense_only = np.where(CONF == 2, 2, 0).astype(np.uint8)
    none = np.zeros_like(CONF)
    cases = [((calc_only, none), ["mass (mask)", "calcification"]),
             ((none, dense_only), ["mass (mask)", "dense"]),
             ((calc_only, dense_only), ["mass (mask)", "calcification", "dense"]),
             ((none, none), ["mass (mask)"])]
    for confs, expected in cases:
        fig = figures.fig7_overlays(np.stack([ROI, ROI]), np.stack([MASK, MASK]), RNG.random((2, G, G)),
                                    RNG.random((2, G, G)), confounders=np.stack(confs))
        assert legend_texts(fig.legends[0]) == expected
    fig = figures.fig7_overlays(ROI[None], MASK[None], RNG.random((1, G, G)), RNG.random((1, G, G)))
    assert legend_texts(fig.legends[0]) == ["mass (mask)"]


def test_fig7_titles_predictions_and_colourbar() -> None:
    fig = figures.fig7_overlays(np.stack([ROI, ROI]), np.stack([MASK, MASK]), RNG.random((2, G, G)),
                                RNG.random((2, G, G)), ids=["P_1", "P_2"], true_labels=["malignant", 0],
                                predictions=[("malignant", "benign"), ("benign", "benign")],
                                labels=("FT", "KT"), title="init: DDSM")
    axes = np.array(panels(fig)).reshape(2, 3)
    assert axes[0, 0].get_title() == "P_1: true malignant"
    assert axes[1, 0].get_title() == "P_2: true benign"
    assert axes[0, 1].get_title() == "FT: pred. malignant" and axes[0, 2].get_title() == "KT: pred. benign"
    assert axes[1, 1].get_title() == "FT: pred. benign"
    assert fig.get_suptitle() == "init: DDSM"
    assert cbar_labels(fig) == [figures.OVERLAY_SCALE]
    assert colorbars(fig)[0]._colorbar.mappable.get_clim() == (0, 1)


def test_fig8_cam_colourbar_and_title() -> None:
    fig = figures.fig8_panels(ROI, RNG.random((S, S)), CORR, knn_table(2), RNG.random((2, S, S)), explanation(),
                              mask=MASK, hirescam=RNG.random((S, S)), true_label="benign")
    labels = cbar_labels(fig)
    assert any(lab.startswith(figures.CAM_SCALE) for lab in labels) and "Pearson r" in labels
    title = fig.get_suptitle()
    assert "true: benign" in title and "predicted: malignant" in title and "(probability 0.700)" in title
    fig = figures.fig8_panels(ROI, RNG.random((S, S)), CORR, knn_table(1), RNG.random((1, S, S)), explanation())
    assert "true" not in fig.get_suptitle() and "predicted: malignant" in fig.get_suptitle()


def _framework_axes(fig: Figure) -> dict:
    subs = fig.subfigs
    assert len(subs) == 5
    names = ["roi", "split", "replace", "distances", "labels"]
    return {name: panels(sf) for name, sf in zip(names, subs)}


def test_fig9_framework_steps_and_replaced_window() -> None:
    expl = explanation7()
    fig = figures.fig9_framework(ROI7, LESION7, BACKGROUND7, expl, mask=MASK7, true_label="benign")
    steps = [sf.get_suptitle() for sf in fig.subfigs]
    assert "grid" in steps[0]
    for text, step in zip(("step 1: split", "step 2: replace window", "step 3: Eq. 6 distances", "labels"), steps[1:]):
        assert text in step
    assert all(step.startswith("\u2192") for step in steps[1:])
    title = fig.get_suptitle()
    assert "true: benign" in title and "predicted: benign (probability 0.800)" in title and "subtract_clip" in title
    # default cell: largest |dis^L - dis^B| among cells overlapping the mask
    w = S7 // G7
    overlap = MASK7.reshape(G7, w, G7, w).any(axis=(1, 3))
    gap = np.where(overlap, np.abs(expl.dis_lesion - expl.dis_background), -np.inf)
    p, q = np.unravel_index(np.argmax(gap), gap.shape)
    assert f"window ({p}, {q})" in steps[2]
    axes = _framework_axes(fig)
    assert [len(v) for v in axes.values()] == [1, 2, 2, 2, 1]
    assert [ax.get_title() for ax in axes["split"]] == ["Lesion", "Background"]
    inside = np.zeros((S7, S7), bool)
    inside[p * w:(p + 1) * w, q * w:(q + 1) * w] = True
    for ax, source in zip(axes["replace"], (LESION7, BACKGROUND7)):
        data = np.asarray(ax.images[0].get_array())
        np.testing.assert_array_equal(data[~inside], ROI7[~inside])          # unchanged outside the window
        np.testing.assert_array_equal(data[inside], source[inside])          # the source's pixels inside
        box = [pt for pt in ax.patches if isinstance(pt, matplotlib.patches.Rectangle)][0]
        assert (box.get_x() + 0.5, box.get_y() + 0.5, box.get_width()) == (q * w, p * w, w)
    assert "ROI$_L$" in axes["replace"][0].get_title() and "ROI$_B$" in axes["replace"][1].get_title()
    dl_im, db_im = (ax.images[0] for ax in axes["distances"])
    np.testing.assert_array_equal(dl_im.get_array(), expl.dis_lesion)
    np.testing.assert_array_equal(db_im.get_array(), expl.dis_background)
    assert dl_im.get_clim() == db_im.get_clim()                               # one shared scale
    both = np.concatenate([expl.dis_lesion.ravel(), expl.dis_background.ravel()])
    assert dl_im.get_clim() == pytest.approx((both.min(), both.max()))
    cells = np.asarray(axes["labels"][0].images[1].get_array())
    np.testing.assert_array_equal(cells, (expl.cell_labels == LESION).astype(float))
    assert [t.startswith(("Lesion", "Background")) for t in legend_texts(axes["labels"][0].get_legend())] == [True, True]
    assert sorted(cbar_labels(fig)) == ["Eq. 6 distance (shared scale)", "intensity (all grey panels)"]
    grey = [ax.images[0].get_clim() for ax in axes["roi"] + axes["split"] + axes["replace"]]
    assert len(set(grey)) == 1                                                # one grey scale for all


def test_fig9_framework_explicit_cell_and_no_mask() -> None:
    expl = explanation7(2, S, rule="soft")
    fig = figures.fig9_framework(ROI, ROI ** 2, ROI / 2, expl, cell=(1, 0), true_label=1,
                                 background_rule="otsu")
    assert "window (1, 0)" in fig.subfigs[2].get_suptitle()
    assert "true: malignant" in fig.get_suptitle() and "background rule: otsu" in fig.get_suptitle()
    data = np.asarray(_framework_axes(fig)["replace"][1].images[0].get_array())
    expected = ROI.astype(float).copy()
    expected[16:, :16] = ROI[16:, :16] / 2
    np.testing.assert_array_equal(data, expected)
    fig = figures.fig9_framework(ROI, ROI ** 2, ROI / 2, expl)           # no mask: any cell
    p, q = np.unravel_index(np.argmax(np.abs(expl.dis_lesion - expl.dis_background)), (2, 2))
    assert f"window ({p}, {q})" in fig.subfigs[2].get_suptitle() and "soft" in fig.get_suptitle()


def test_explanation_grid_rows_titles_and_panels() -> None:
    cases = [grid_case(0), grid_case(1, "benign"), grid_case("malignant")]
    fig = figures.explanation_grid(cases, labels=("FT", "KT"), title="DDSM")
    assert len(fig.subfigs) == 3 and fig.get_suptitle() == "DDSM"
    for i, (row, case) in enumerate(zip(fig.subfigs, cases)):
        axes = panels(row)
        assert len(axes) == 4
        assert [ax.get_title() for ax in axes[:3]] == ["ROI and mask", "FT", "KT"]
        assert axes[3].get_title().startswith("Eq. 6 cells")
        overlays = [ax for ax in axes if len(ax.images) == 2 and ax.images[1].get_alpha() == 0.45]
        assert overlays == axes[1:3]                           # the two model maps only, no duplicate
        np.testing.assert_array_equal(axes[3].images[1].get_array(),
                                      (case["explanation"].cell_labels == LESION).astype(float))
        assert cbar_labels(row) == [figures.OVERLAY_SCALE]
    titles = [row.get_suptitle() for row in fig.subfigs]
    assert titles[0].startswith("(a) true: benign") and "predicted: benign (probability 0.800)" in titles[0]
    assert titles[1].startswith("(b) true: malignant") and titles[1].endswith("predicted: benign")
    assert titles[2].startswith("(c) true: malignant")
    assert legend_texts(fig.legends[0])[0] == "mass (mask)"


# --------------------------------------------------------------------------- what a reader is told (issue 22)


def test_fig7_says_when_beta_0_made_the_two_models_one() -> None:
    fig = figures.fig7_overlays(np.stack([ROI, ROI]), np.stack([MASK, MASK]), RNG.random((2, G, G)),
                                RNG.random((2, G, G)), predictions=[("benign", "benign"), ("benign", "malignant")],
                                betas=[0.0, 32.0])
    axes = np.array(panels(fig)).reshape(2, 3)
    assert axes[0, 2].get_title() == "knowledge transfer: pred. benign\nbeta 0 chosen: the fine-tune model"
    assert axes[1, 2].get_title() == "knowledge transfer: pred. malignant\nbeta 32"
    assert axes[0, 1].get_title() == "fine-tune: pred. benign"             # model a's panel unchanged
    with pytest.raises(ValueError, match="betas has 1 entries for 2 ROIs"):
        figures.fig7_overlays(np.stack([ROI, ROI]), np.stack([MASK, MASK]), RNG.random((2, G, G)),
                              RNG.random((2, G, G)), betas=[0.0])


def test_fig8_and_fig5_name_the_model_and_the_probability() -> None:
    model = "DDSM-initialised knowledge-transfer model, fold 0"
    fig = figures.fig8_panels(ROI, RNG.random((S, S)), CORR, knn_table(1), RNG.random((1, S, S)), explanation(),
                              true_label="benign", model=model)
    title = " ".join(fig.get_suptitle().split())
    assert title == f"explained: {model} | true: benign | predicted: malignant (probability 0.700)"
    assert figures.CELL_TEXT_KEY in fig.subfigs[1].subfigs[1].get_suptitle()   # (d): what L and B mean
    fig = figures.fig5_lesion_background(ROI, ROI ** 2, ROI / 2, explanation(), MASK, true_label="benign",
                                         model=model)
    assert fig.get_suptitle() == f"explained: {model} | true: benign | predicted: malignant (probability 0.700)"
    steps = [sf.get_suptitle() for sf in fig.subfigs]
    assert steps[0].startswith("step 1:") and steps[1].startswith("steps 2-3:")   # no step left out
    assert figures.CELL_TEXT_KEY in steps[1]


def test_fig6_names_the_network() -> None:
    fig = figures.fig6_distance_distribution(pd.DataFrame({"group": [1, 2], "d": [0.5, 0.7]}),
                                             network="DenseNet (small), generic synthetic pre-training")
    assert "network: DenseNet (small), generic synthetic pre-training" in " ".join(fig.axes[0].get_title().split())


def test_confusion_titles_wrap_at_spaces() -> None:
    fig = figures.confusion_matrices({"ImageNet stand-in (generic synthetic), knowledge transfer": [[1, 0], [0, 1]]})
    assert fig.axes[0].get_title().split("\n") == ["ImageNet stand-in (generic synthetic),", "knowledge transfer",
                                                    "accuracy 100.0% (n = 2)"]


def test_dose_response_has_one_legend_below_and_none_on_the_panels() -> None:
    dose = pd.DataFrame({"condition": ["B"] * 4, "init": ["imagenet", "imagenet", "ddsm", "ddsm"],
                         "form": ["paper", "at"] * 2, "beta": [0.0, 1000.0] * 2, "acc neutral": RNG.random(4),
                         "acc reversed": RNG.random(4), "flip rate": RNG.random(4), "d4 (test)": RNG.random(4),
                         "energy share on mass": RNG.random(4)})
    fig = figures.dose_response(dose)
    assert all(ax.get_legend() is None for ax in fig.axes)
    assert legend_texts(fig.legends[0]) == ["imagenet", "ddsm", "test: neutral", "test: reversed",
                                            "reference form (beta 1000)"]
