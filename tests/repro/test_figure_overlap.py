"""No text collides in any figure the smoke run draws: titles, axis labels, tick labels, legends,
annotations and colourbar labels, and figure-level arrows against text (matplotlib's renderer
gives every drawn text's bounding box). Each figure is drawn from tiny inputs through
:mod:`mammo_lib.repro.figures` with labels as long as the pipeline's, not by running the smoke profile."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

from typing import Any, Callable  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.legend import Legend  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import FancyArrowPatch  # noqa: E402
from matplotlib.text import Text  # noqa: E402

from mammo_lib.repro import figures  # noqa: E402
from mammo_lib.explain.eq6 import BACKGROUND, LESION, Explanation  # noqa: E402

#: Pixels two boxes may share before they count as overlapping (anti-aliasing, rounding).
TOLERANCE_PX = 1.0
DPI = 150  # as mammo_lib.utils.files.save_figure


def _drawn_texts(fig: Figure) -> tuple[list[tuple[Text, Any]], Any]:
    """Every text the renderer draws (visible, non-empty; tick labels only of the ticks drawn) with
    its box, laid out as :func:`mammo_lib.utils.files.save_figure` lays it out (one save at its dpi, then
    the layout frozen), and the renderer."""
    import io

    fig.savefig(io.BytesIO(), dpi=DPI, format="png", bbox_inches="tight")
    fig.set_layout_engine("none")                   # keep the saved layout for the boxes below
    fig.set_dpi(DPI)
    canvas = FigureCanvasAgg(fig)
    drawn: dict[int, Text] = {}
    original = Text.draw

    def record(self: Text, renderer: Any) -> Any:   # multi-line texts included (draw_text is per line)
        out = original(self, renderer)
        if self.get_visible() and self.get_text().strip():
            drawn[id(self)] = self
        return out

    Text.draw = record
    try:
        canvas.draw()
    finally:
        Text.draw = original
    renderer = canvas.get_renderer()
    return [(t, t.get_window_extent(renderer)) for t in drawn.values()], renderer


def _shared(a: Any, b: Any) -> tuple[float, float]:
    return (min(a.x1, b.x1) - max(a.x0, b.x0), min(a.y1, b.y1) - max(a.y0, b.y0))


def _name(t: Text) -> str:
    return repr(" ".join(t.get_text().split())[:50])


def overlaps(fig: Figure, tol: float = TOLERANCE_PX) -> list[str]:
    """Collisions in ``fig``, one line each: text against text; a figure-level arrow (e.g. Fig. 9's
    steps) against text; an axes legend against the plotted points of its axes."""
    texts, renderer = _drawn_texts(fig)
    out = []
    for i, (t1, b1) in enumerate(texts):
        for t2, b2 in texts[i + 1:]:
            w, h = _shared(b1, b2)
            if w > tol and h > tol:
                out.append(f"text {_name(t1)} overlaps text {_name(t2)} ({w:.0f} x {h:.0f} px)")
    arrows = [a for a in fig.findobj(FancyArrowPatch) if a.get_visible() and a.axes is None]
    for a in arrows:
        ba = a.get_window_extent(renderer).padded(2 * tol)     # a shaft is thinner than the tolerance
        for t, b in texts:
            w, h = _shared(ba, b)
            if w > 0 and h > 0:
                out.append(f"arrow at x = {ba.x0:.0f}..{ba.x1:.0f} px crosses text {_name(t)}")
    for leg in fig.findobj(Legend):
        ax = leg.axes
        if ax is None or not leg.get_visible() or leg.parent is not ax:
            continue
        box = leg.get_window_extent(renderer)
        for line in ax.lines:
            xy = line.get_transform().transform(np.asarray(line.get_xydata(), float))
            xy = xy[np.isfinite(xy).all(axis=1)]
            inside = ((xy[:, 0] > box.x0 + tol) & (xy[:, 0] < box.x1 - tol)
                      & (xy[:, 1] > box.y0 + tol) & (xy[:, 1] < box.y1 - tol))
            if inside.any():
                out.append(f"legend {[_name(t) for t in leg.get_texts()][:2]} covers {int(inside.sum())} "
                           f"point(s) of {line.get_label()!r}")
    return out


# --------------------------------------------------------------------------- the checker itself


def test_checker_catches_overlapping_text_arrows_and_covered_data() -> None:
    fig = Figure(figsize=(4, 3))
    ax = fig.subplots()
    ax.set_title("a title that is long")
    ax.text(0.5, 1.02, "a second title on top of it", transform=ax.transAxes, ha="center")
    found = overlaps(fig)
    assert len(found) == 1 and "'a title that is long'" in found[0] and "'a second title on top of it'" in found[0]

    fig = Figure(figsize=(4, 3))
    ax = fig.subplots()
    ax.set_ylabel("intensity")
    fig.add_artist(FancyArrowPatch((0.0, 0.5), (0.2, 0.5), transform=fig.transFigure, arrowstyle="-|>"))
    assert any(f.startswith("arrow") and "'intensity'" in f for f in overlaps(fig))

    fig = Figure(figsize=(4, 3))
    ax = fig.subplots()
    ax.plot([0, 1, 2], [0, 0.1, 0.2], "o-", label="reversed")
    ax.plot([0, 1, 2], [1, 1, 1], label="neutral")
    ax.legend(loc="lower left")
    assert any("covers" in f and "'reversed'" in f for f in overlaps(fig))


def test_checker_passes_a_clean_figure() -> None:
    fig = Figure(figsize=(6, 3), layout="constrained")
    a, b = fig.subplots(1, 2)
    for ax in (a, b):
        ax.plot([0, 1], [0, 1], label="x")
        ax.set_title("short")
        ax.set_xlabel("beta")
        ax.legend(loc="upper left")
    fig.suptitle("figure")
    assert overlaps(fig) == []


# --------------------------------------------------------------------------- every figure of the smoke run

RNG = np.random.default_rng(1)
S, G = 56, 7                      # ROI side and 7 x 7 windows of 8 px, as the profiles' grid


def _disk(size: int, cy: float, cx: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    return (((yy - cy) ** 2 + (xx - cx) ** 2) <= r ** 2).astype(np.uint8)


ROI = (0.2 + 0.6 * _disk(S, 28, 30, 10) + 0.1 * RNG.random((S, S))).astype(np.float32)
MASK = _disk(S, 28, 30, 10)
CONF = np.zeros((S, S), np.uint8)
CONF[3:9, 40:48] = 1
CONF[40:50, 4:14] = 2
LESION_IMG = (ROI * MASK).astype(np.float32)
BACKGROUND_IMG = (ROI - LESION_IMG).astype(np.float32)
# Labels as long as the pipeline's (mammo_lib.repro.table2.spec_label on the phantom profiles).
SPECS = ["ImageNet stand-in (generic synthetic), fine-tune",
         "ImageNet stand-in (generic synthetic), knowledge transfer",
         "DDSM (from the generic stand-in), fine-tune", "DDSM (from the generic stand-in), knowledge transfer"]


def _explanation(prediction: int = 1) -> Explanation:
    dl, db = 3 * RNG.random((G, G)), 3 * RNG.random((G, G))
    return Explanation(prediction=prediction, probabilities=[0.112, 0.888][::1 if prediction else -1],
                       label_names=("benign", "malignant"), activation_map=RNG.random((G, G)), dis_lesion=dl,
                       dis_background=db, cell_labels=np.where(dl < db, LESION, BACKGROUND), window=S // G, grid=G,
                       params={"background_rule": "subtract_clip"})


def _dose() -> pd.DataFrame:
    rows = []
    for cond, accs in (("A", ("acc in distribution", "acc another draw")),
                       ("B", ("acc in distribution", "acc neutral", "acc reversed"))):
        for init in ("imagenet", "ddsm"):
            for form, beta in [("paper", b) for b in (0.0, 2.0, 8.0, 32.0, 128.0)] + [("at", 1000.0)]:
                row = {"condition": cond, "init": init, "form": form, "beta": beta,
                       "flip rate": RNG.uniform(0.0, 0.8), "d4 (test)": RNG.uniform(0.5, 1.0),
                       "energy share on mass": RNG.uniform(0.05, 0.2)}
                for a in accs:   # "reversed" low, near the lower left where a legend would sit
                    row[a] = RNG.uniform(0.05, 0.15) if a.endswith("reversed") else RNG.uniform(0.5, 0.9)
                rows.append(row)
    return pd.DataFrame(rows)


def _knn(k: int = 5) -> pd.DataFrame:
    return pd.DataFrame({"query": 0, "rank": np.arange(1, k + 1), "train_index": np.arange(k),
                         "train_id": [f"M{101 + i:04d}" for i in range(k)], "label": [0, 1, 1, 0, 1][:k],
                         "distance": np.linspace(1.28, 1.5, k)})


CORR = pd.DataFrame(RNG.uniform(-1, 1, (7, 10)),
                    index=["contrast", "dissimilarity", "homogeneity", "energy", "correlation", "ASM", "entropy"],
                    columns=[f"deep_{j}" for j in range(10)])


def _grid_case(label: int) -> dict:
    return {"roi": ROI, "mask": MASK, "maps_ft": RNG.random((G, G)), "maps_kt": RNG.random((G, G)),
            "explanation": _explanation(label), "label": label, "prediction": "malignant"}


def _fig2() -> Figure:
    image = (0.2 + 0.1 * RNG.random((300, 260))).astype(np.float32)
    mask = np.zeros((300, 260), np.uint8)
    mask[120:170, 100:160] = 1
    image[mask.astype(bool)] = 0.8
    return figures.fig2_roi_contexts(image, mask, min_context=224, size=224)


#: Every figure the smoke profile draws (name as in results/figures/), built the way the pipeline builds it.
SMOKE_FIGURES: dict[str, Callable[[], Figure]] = {
    "fig2_roi_contexts": _fig2,
    "fig6_distances": lambda: figures.fig6_distance_distribution(
        pd.DataFrame({"group": np.repeat([1, 2, 3, 4], 30), "d": np.r_[np.zeros(3), RNG.random(117)]}),
        network="ImageNet stand-in (generic synthetic), small DenseNet"),
    "fig4a_activation_levels": lambda: figures.fig4_activation_levels(
        ROI, MASK, {j: RNG.random((56 // 2 ** j, 56 // 2 ** j)) for j in (1, 2, 3, 4)},
        {j: RNG.random((56 // 2 ** j, 56 // 2 ** j)) for j in (1, 2, 3, 4)}),
    "table2_dose_response": lambda: figures.dose_response(_dose()),
    "table2_confusion": lambda: figures.confusion_matrices(
        {name: [[78, 66], [62, 68]] for name in SPECS},
        title="Table 2, condition B (test: neutral rendering): confusion matrices summed over folds"),
    "fig4b_confusion": lambda: figures.confusion_matrices(
        {"mask only": [[120, 24], [20, 110]], f"ROI only ({SPECS[0]})": [[78, 66], [62, 68]]},
        title="Fig. 4(b), condition B"),
    "fig7_overlays": lambda: figures.fig7_overlays(
        np.stack([ROI] * 4), np.stack([MASK] * 4), RNG.random((4, G, G)), RNG.random((4, G, G)),
        labels=("fine-tune", "knowledge transfer"), ids=["B0000", "B0001", "M0002", "M0003"],
        confounders=np.stack([CONF] * 4), true_labels=["benign", "benign", "malignant", "malignant"],
        predictions=[("malignant", "malignant"), ("benign", "malignant"), ("malignant", "malignant"),
                     ("malignant", "benign")], betas=[0.0, 2.0, 0.0, 1000.0],
        title="Fig. 7: group-4 maps of the DDSM (from the generic stand-in) models, condition B, test fold of "
              "each case (neutral rendering)"),
    "fig5_lesion_background_benign": lambda: figures.fig5_lesion_background(
        ROI, LESION_IMG, BACKGROUND_IMG, _explanation(0), mask=MASK, true_label="benign",
        background_rule="subtract_clip", model="DDSM-initialised knowledge-transfer model, fold 0"),
    "fig5_lesion_background_malignant": lambda: figures.fig5_lesion_background(
        ROI, LESION_IMG, BACKGROUND_IMG, _explanation(1), mask=MASK, true_label="malignant",
        background_rule="soft", model="DDSM-initialised knowledge-transfer model, fold 0"),
    "fig8_panels_benign": lambda: figures.fig8_panels(
        ROI, RNG.random((S, S)), CORR, _knn(), RNG.random((5, S, S)), _explanation(1), mask=MASK,
        hirescam=RNG.random((S, S)), true_label="benign", model="DDSM-initialised knowledge-transfer model, fold 0"),
    "fig8_panels_malignant": lambda: figures.fig8_panels(
        ROI, RNG.random((S, S)), CORR, _knn(), RNG.random((5, S, S)), _explanation(0), mask=MASK,
        hirescam=RNG.random((S, S)), true_label="malignant",
        model="DDSM-initialised knowledge-transfer model, fold 0"),
    "fig9_framework": lambda: figures.fig9_framework(ROI, LESION_IMG, BACKGROUND_IMG, _explanation(1), mask=MASK,
                                                     true_label="malignant", background_rule="subtract_clip"),
    "table2_mechanism": lambda: figures.mechanism_figure(
        pd.DataFrame({"arm": ["fine-tune", "knowledge transfer (beta 32)", "KT, uniform target",
                              "positive control, fine-tune", "positive control, KT"],
                      "logit effect passthrough": [0.9, 1.1, 1.0, 0.0, 0.0],
                      "logit effect own": [0.8, 0.2, 0.3, 1.2, 0.4]}),
        title="Condition B, DDSM trunk seed 0: the calcification's effect on the logit margin"),
    "explanation_grid": lambda: figures.explanation_grid(
        [_grid_case(0), _grid_case(1)], labels=("fine-tune", "knowledge transfer"),
        title="DDSM-initialised models, fold 0 (explanations of the knowledge-transfer model)"),
}


@pytest.mark.parametrize("name", sorted(SMOKE_FIGURES))
def test_no_text_collides(name: str) -> None:
    fig = SMOKE_FIGURES[name]()
    assert overlaps(fig) == []


def test_every_committed_figure_is_checked() -> None:
    """Every figure the pipeline writes (results/figures/*.png of the committed demo run, the same
    functions as the smoke run) has a builder above."""
    from pathlib import Path

    committed = {p.stem for p in (Path(__file__).resolve().parents[2] / "results" / "figures").glob("*.png")}
    assert committed and committed <= set(SMOKE_FIGURES), sorted(committed - set(SMOKE_FIGURES))
