"""Drawing functions for the paper's figures (Sec. 5): Figs. 2, 4, 5, 6, 7, 8 and 9 (framework).

Every function returns a :class:`matplotlib.figure.Figure` built without pyplot (no global
state, safe under any backend, nothing shown); a notebook displays it as the cell's value and
:func:`mammo_lib.utils.files.save_figure` writes it. Activation maps are drawn as in Fig. 7: rescaled to [0, 1] and
resized to the ROI by bilinear interpolation (:func:`mammo_lib.explain.localization.upsample_map`),
then overlaid on the ROI; outlines come from :func:`skimage.measure.find_contours`.
"""
from __future__ import annotations

import textwrap
from typing import Any, Iterable, Mapping, Optional, Sequence

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure, SubFigure
from matplotlib.lines import Line2D
from matplotlib.patches import FancyArrowPatch, Patch, Rectangle
from skimage.measure import find_contours

from mammo_lib.explain.localization import CONFOUNDER_LABELS, upsample_map
from mammo_lib.visualize.explanation import plot_explanation
from mammo_lib.data.records import LABEL_NAMES

#: Outline colours: the mass, and the phantom's confounders (label -> colour).
MASK_COLOUR = "yellow"
CONFOUNDER_COLOURS: dict[int, str] = {1: "cyan", 2: "magenta"}
#: Eq. 6 cell colours (as :meth:`mammo_lib.explain.eq6.Explanation.plot`).
LESION_COLOUR, BACKGROUND_COLOUR = "tab:red", "tab:blue"
#: Outline of the replaced window (p, q) in :func:`fig9_framework`.
WINDOW_COLOUR = "orange"
#: Font sizes used throughout: panel titles, group (subfigure / row) titles, figure titles.
FONTSIZES = {"panel": 8, "group": 10, "figure": 11}
#: Labels of the colour scales.
OVERLAY_SCALE = "$F^4$ rescaled to [0, 1]"
CAM_SCALE = "CAM, rescaled"


# --------------------------------------------------------------------------- helpers


def _grey(img: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(img)
    if arr.ndim != 2 or arr.size == 0:
        raise ValueError(f"{name} must be a non-empty 2-D image, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.number) or not np.isfinite(arr).all():
        raise ValueError(f"{name} must hold finite numbers")
    return arr.astype(np.float64, copy=False)


def _binary(mask: np.ndarray, shape: tuple[int, ...], name: str) -> np.ndarray:
    arr = np.asarray(mask)
    if arr.shape != shape:
        raise ValueError(f"{name} shape {arr.shape} differs from the image's {shape}")
    if arr.dtype != bool and not np.isin(arr, (0, 1)).all():
        raise ValueError(f"{name} must be binary {{0, 1}}, found values {np.unique(arr)[:5].tolist()}")
    return arr.astype(bool)


def rescale01(F: np.ndarray) -> np.ndarray:
    """Min-max rescaling to [0, 1] (Fig. 7); a constant map becomes zeros."""
    arr = np.asarray(F, dtype=np.float64)
    lo, span = float(arr.min()), float(arr.max() - arr.min())
    return (arr - lo) / span if span > 0 else np.zeros_like(arr)


def _overlay(ax: Axes, roi: np.ndarray, F: Optional[np.ndarray], *, cmap: str = "jet", alpha: float = 0.45,
             title: str = "") -> Any:
    """ROI in grey with ``F`` rescaled to [0, 1], resized to the ROI (bilinear), as a colour overlay.

    Returns the overlay's image (for a colourbar), or ``None`` without ``F``.
    """
    ax.imshow(roi, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    im = None
    if F is not None:
        up = upsample_map(rescale01(F), roi.shape)
        im = ax.imshow(np.clip(up, 0, 1), cmap=cmap, alpha=alpha, vmin=0, vmax=1, interpolation="nearest")
        if np.ptp(F) == 0:
            title += f" (constant map: {float(np.max(F)):.3g})"
    ax.set_title(title, fontsize=FONTSIZES["panel"], loc="center")
    _no_ticks(ax)
    return im


def _no_ticks(*axes: Axes) -> None:
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])


def _colorbar(where: Figure | SubFigure, im: Any, ax: Axes | Sequence[Axes], label: str, **kwargs: Any) -> Any:
    """A colourbar labelled ``label`` (tick and label font sizes as everywhere in this module)."""
    kwargs.setdefault("fraction", 0.046)
    kwargs.setdefault("pad", 0.02)
    cb = where.colorbar(im, ax=ax, **kwargs)
    cb.set_label(label, fontsize=FONTSIZES["panel"])
    cb.ax.tick_params(labelsize=7)
    return cb


def _outline(ax: Axes, region: np.ndarray, colour: str, linewidth: float = 1.0) -> None:
    """Draw the boundary of a binary region (``find_contours`` at level 0.5, padded so edges close)."""
    padded = np.pad(np.asarray(region, dtype=float), 1)
    for c in find_contours(padded, 0.5):
        ax.plot(c[:, 1] - 1, c[:, 0] - 1, color=colour, linewidth=linewidth)


def _outlines(ax: Axes, mask: Optional[np.ndarray], confounders: Optional[np.ndarray],
              confounder_labels: Mapping[int, str] = CONFOUNDER_LABELS) -> list[int]:
    """Outline the mask and each confounder type present; returns the confounder values drawn."""
    drawn = []
    if mask is not None:
        _outline(ax, mask, MASK_COLOUR)
    if confounders is not None:
        for value in confounder_labels:
            region = np.asarray(confounders) == value
            if region.any():
                _outline(ax, region, CONFOUNDER_COLOURS.get(value, "white"), linewidth=0.8)
                drawn.append(value)
    return drawn


def _outline_legend(fig: Figure, confounders: bool | Iterable[int],
                    confounder_labels: Mapping[int, str] = CONFOUNDER_LABELS) -> None:
    """Legend of the outlines: the mask, and the confounder types in ``confounders``.

    ``confounders`` is the collection of confounder values actually drawn (so the legend lists
    only what the figure shows); ``True`` (former use) lists every type, ``False`` none.
    """
    if confounders is True:
        shown = set(confounder_labels)
    elif confounders is False:
        shown = set()
    else:
        shown = {int(v) for v in confounders}
    handles = [Line2D([], [], color=MASK_COLOUR, label="mass (mask)")]
    handles += [Line2D([], [], color=CONFOUNDER_COLOURS.get(v, "white"), label=name)
                for v, name in confounder_labels.items() if v in shown]
    fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), fontsize=7, frameon=False)


def _cell_legend_handles() -> list[Any]:
    from mammo_lib.explain.eq6 import BACKGROUND, LESION

    return [Patch(facecolor=LESION_COLOUR, alpha=0.6, label=f"{LESION} (dis$^L$ < dis$^B$)"),
            Patch(facecolor=BACKGROUND_COLOUR, alpha=0.6, label=BACKGROUND)]


def _cells_panel(ax: Axes, roi: np.ndarray, explanation: Any, mask: Optional[np.ndarray], *,
                 vmin: float = 0.0, vmax: float = 1.0, alpha: float = 0.4) -> Any:
    """The Eq. 6 labels as a two-colour g x g grid over the ROI (Lesion red, Background blue).

    Draws the ROI in grey on ``[vmin, vmax]``, the cells (image data: 1 where *Lesion*, 0 where
    *Background*) at the ROI's extent, the window grid and the mask outline. Returns the cells' image.
    """
    from mammo_lib.explain.eq6 import LESION

    size = roi.shape[0]
    g = int(explanation.grid)
    labels = np.asarray(explanation.cell_labels)
    if labels.shape != (g, g) or size != g * int(explanation.window):
        raise ValueError(f"explanation ({g}x{g} cells of {explanation.window} px) does not fit an ROI of "
                         f"shape {roi.shape}")
    ax.imshow(roi, cmap="gray", vmin=vmin, vmax=vmax, interpolation="nearest")
    im = ax.imshow((labels == LESION).astype(float), cmap=ListedColormap([BACKGROUND_COLOUR, LESION_COLOUR]),
                   vmin=0, vmax=1, alpha=alpha, interpolation="nearest",
                   extent=(-0.5, size - 0.5, size - 0.5, -0.5))
    _grid_lines(ax, size, g)
    if mask is not None:
        _outline(ax, mask, MASK_COLOUR)
    ax.set_xlim(-0.5, size - 0.5)
    ax.set_ylim(size - 0.5, -0.5)
    _no_ticks(ax)
    return im


def _grid_lines(ax: Axes, size: int, grid: int, colour: str = "white") -> None:
    """The g x g projection-window grid (inner lines) on an S x S image."""
    w = size / grid
    for k in range(1, grid):
        ax.axhline(k * w - 0.5, color=colour, linewidth=0.5, alpha=0.8)
        ax.axvline(k * w - 0.5, color=colour, linewidth=0.5, alpha=0.8)


def _wrap(text: str, fig: Figure, fontsize: float) -> str:
    """``text`` wrapped to the figure's width (about 0.55 em per character)."""
    return _wrap_inches(text, fig.get_figwidth(), fontsize, em=0.55)


def _wrap_inches(text: str, inches: float, fontsize: float, em: float = 0.6) -> str:
    """``text`` wrapped to ``inches`` at ``fontsize`` (``em`` em per character), breaking at
    spaces only (never inside a hyphenated word)."""
    width = max(12, int(inches * 72 / (em * fontsize)))
    return "\n".join(textwrap.fill(line, width, break_on_hyphens=False) for line in str(text).splitlines() or [""])


def _prediction_text(explanation: Any) -> str:
    """``predicted: <class> (probability 0.888)``: the model's softmax probability of the class it
    predicts (not a p-value)."""
    p = float(np.asarray(explanation.probabilities)[int(explanation.prediction)])
    return f"predicted: {explanation.predicted_label} (probability {p:.3f})"


#: What the numbers in the Eq. 6 cells mean (``Explanation.plot`` writes ``L .. / B ..`` in each).
CELL_TEXT_KEY = "cell text: L = dis$^L$, B = dis$^B$ (Eq. 6); Lesion where L < B"


def _label_name(label: Any) -> str:
    try:
        return LABEL_NAMES[int(label)]
    except (KeyError, TypeError, ValueError):
        return str(label)


# --------------------------------------------------------------------------- Fig. 2


def fig2_roi_contexts(image: np.ndarray, mask: np.ndarray, *, min_context: int = 224, size: int = 224) -> Figure:
    """Fig. 2: the two ROI contexts of one mass (Sec. 3.2).

    Left: the whole image with the mask outline, the bounding box (method 1, "original ROI") and
    the mass-centred box ``max(min_context, w) x max(min_context, h)`` (method 2). Middle, right:
    the two crops resized to ``size x size`` as :func:`mammo_lib.data.roi.extract_roi` makes them.
    """
    from mammo_lib.data.roi import extract_roi

    img = _grey(image, "image")
    m = _binary(mask, img.shape, "mask")
    rois = {v: extract_roi(img.astype(np.float32), m.astype(np.uint8), variant=v, size=size,
                           min_context=min_context) for v in ("original", "mass_centred")}
    fig = Figure(figsize=(11, 4), layout="constrained")
    ax_full, ax_orig, ax_mc = fig.subplots(1, 3)
    ax_full.imshow(img, cmap="gray", vmin=0, vmax=1)
    _outline(ax_full, m, MASK_COLOUR, 0.8)
    styles = {"original": ("tab:red", "1: bounding box (original ROI)"),
              "mass_centred": ("tab:green", f"2: mass-centred max({min_context}, w) x max({min_context}, h)")}
    for variant, (colour, text) in styles.items():
        b = rois[variant].box
        ax_full.add_patch(Rectangle((b.x0 - 0.5, b.y0 - 0.5), b.w, b.h, fill=False, edgecolor=colour,
                                    linewidth=1.2, label=text))
    ax_full.legend(loc="upper center", bbox_to_anchor=(0.5, -0.02), fontsize=7, frameon=False)
    ax_full.set_title(f"image {img.shape[0]}x{img.shape[1]}", fontsize=9)
    for ax, variant in ((ax_orig, "original"), (ax_mc, "mass_centred")):
        r = rois[variant]
        ax.imshow(r.image, cmap="gray", vmin=0, vmax=1)
        _outline(ax, r.mask, MASK_COLOUR, 0.8)
        ax.set_title(f"{styles[variant][1].split(':')[0]}: crop {r.box.h}x{r.box.w} -> {size}x{size}"
                     + (" (zero-padded)" if r.padded else ""), fontsize=9)
    for ax in (ax_full, ax_orig, ax_mc):
        ax.set_xticks([])
        ax.set_yticks([])
    return fig


# --------------------------------------------------------------------------- Fig. 4


def fig4_activation_levels(roi: np.ndarray, mask: np.ndarray, maps_roi: Mapping[int, np.ndarray],
                           maps_mask: Mapping[int, np.ndarray]) -> Figure:
    """Fig. 4a: activation maps ``F^j`` (Eq. 3) at several groups for one ROI and its binary mask.

    Row 1: the ROI and its maps; row 2: the mask and its maps. Every map panel has its own colour
    scale ``[0, its max]`` (``[min, max]`` if it has negative values) and its own colourbar, so the
    spatial pattern of each map is visible whatever its magnitude (a shared scale left the ROI's
    maps uniformly dark); compare magnitudes on the colourbars. Maps are shown at their own
    resolution (no interpolation).
    """
    r = _grey(roi, "roi")
    m = _binary(mask, r.shape, "mask")
    if set(maps_roi) != set(maps_mask) or not maps_roi:
        raise ValueError(f"maps_roi and maps_mask must have the same non-empty groups, got "
                         f"{sorted(maps_roi)} and {sorted(maps_mask)}")
    groups = sorted(maps_roi)
    fig = Figure(figsize=(2.9 * (len(groups) + 1), 5.0), layout="constrained")
    axes = fig.subplots(2, len(groups) + 1, squeeze=False)
    axes[0, 0].imshow(r, cmap="gray", vmin=0, vmax=1)
    axes[0, 0].set_title("ROI", fontsize=FONTSIZES["group"], loc="center")
    axes[1, 0].imshow(m, cmap="gray", vmin=0, vmax=1)
    axes[1, 0].set_title("binary mask", fontsize=FONTSIZES["group"], loc="center")
    for k, j in enumerate(groups, start=1):
        for row, (source, maps) in enumerate((("ROI", maps_roi), ("mask", maps_mask))):
            fmap = _grey(maps[j], f"maps_{source.lower()}[{j}]")
            vmin = min(0.0, float(fmap.min()))
            vmax = max(float(fmap.max()), vmin + 1e-12)
            ax = axes[row, k]
            im = ax.imshow(fmap, cmap="jet", vmin=vmin, vmax=vmax, interpolation="nearest")
            _colorbar(fig, im, ax, f"$F^{{{j}}}$", fraction=0.046)
            ax.set_title(f"{source}: group {j} ({fmap.shape[0]}x{fmap.shape[1]})\nown scale [0, {vmax:.2g}]"
                         if vmin == 0 else
                         f"{source}: group {j} ({fmap.shape[0]}x{fmap.shape[1]})\nown scale [{vmin:.2g}, {vmax:.2g}]",
                         fontsize=FONTSIZES["panel"], loc="center")
    _no_ticks(*axes.ravel())
    fig.suptitle("Activation maps $F^j$ (Eq. 3) of the ROI and of its mask; each map on its own scale",
                 fontsize=FONTSIZES["figure"])
    return fig


def confusion_matrices(cms: Mapping[str, np.ndarray], *, title: Optional[str] = None,
                       class_names: Sequence[str] = ("benign", "malignant")) -> Figure:
    """Fig. 4b / Table 2: annotated 2x2 confusion matrices (rows true, columns predicted).

    Each panel is titled with its name and the accuracy ``(TN + TP) / n``.
    """
    import seaborn as sns

    if not cms:
        raise ValueError("cms is empty: give at least one confusion matrix")
    mats = {}
    for name, cm in cms.items():
        arr = np.asarray(cm)
        if arr.shape != (2, 2) or not np.issubdtype(arr.dtype, np.number) or (arr < 0).any() \
                or not np.allclose(arr, np.round(arr)):
            raise ValueError(f"confusion matrix {name!r} must be 2x2 non-negative counts, got {arr.tolist()}")
        mats[name] = np.round(arr).astype(int)
    fig = Figure(figsize=(3.2 * len(mats), 3.2), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(mats)))
    for ax, (name, arr) in zip(axes, mats.items()):
        n = int(arr.sum())
        acc = np.trace(arr) / n if n else float("nan")
        sns.heatmap(arr, annot=True, fmt="d", cmap="Blues", cbar=False, square=True, ax=ax,
                    xticklabels=list(class_names), yticklabels=list(class_names), vmin=0)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(f"{_wrap_inches(name, 3.0, 9)}\naccuracy {acc:.1%} (n = {n})", fontsize=9)
    if title:
        fig.suptitle(_wrap(title, fig, 12))
    return fig


def dose_response(dose: pd.DataFrame) -> Figure:
    """Beyond the paper: the knowledge-transfer dose-response (``InstrumentResult.dose_response``).

    One row of panels per condition: test accuracy on every rendering, the predictions flipped by
    the confounder change, the group-4 distance d^4 to the target (Eq. 4) and the energy share on
    the mass, against beta (symlog axis; beta 0 is fine-tuning; the attention-transfer form at
    beta 1000 is drawn as a separate marker). One line per initialisation. One legend below the
    panels (colour = initialisation, line style = test rendering, star = reference form), so no
    legend sits over a curve.
    """
    need = {"condition", "init", "form", "beta"}
    if not need <= set(dose.columns):
        raise ValueError(f"dose table needs columns {sorted(need)}, got {list(dose.columns)}")
    conds = list(dict.fromkeys(dose["condition"]))
    acc_cols = [c for c in dose.columns if c.startswith("acc ")]
    panels = [("accuracy (test renderings)", acc_cols), ("predictions flipped", ["flip rate"]),
              ("d$^4$ to the target (Eq. 4)", ["d4 (test)"]), ("energy share on the mass", ["energy share on mass"])]
    fig = Figure(figsize=(3.4 * len(panels), 2.9 * len(conds)), layout="constrained")
    axes = np.atleast_2d(fig.subplots(len(conds), len(panels), squeeze=False))
    styles = ["-", "--", ":", "-."]
    markers = {"imagenet": "o", "ddsm": "s"}
    colours = {"imagenet": "tab:blue", "ddsm": "tab:orange"}
    renderings = [c.removeprefix("acc ") for c in acc_cols if dose[c].notna().any()]
    style_of = {name: styles[k % len(styles)] for k, name in enumerate(renderings)}
    inits_drawn: dict[str, str] = {}
    for r, cond in enumerate(conds):
        d = dose[dose["condition"] == cond]
        for c, (title, cols) in enumerate(panels):
            ax = axes[r, c]
            for init, g in d.groupby("init", sort=False):
                paper_f = g[g["form"] == "paper"].sort_values("beta")
                at = g[g["form"] == "at"]
                for col in (x for x in cols if x in g and g[x].notna().any()):
                    rendering = col.removeprefix("acc ")
                    label = f"{init}: {rendering}" if len(cols) > 1 else str(init)
                    line = ax.plot(paper_f["beta"], paper_f[col], style_of.get(rendering, "-"),
                                   marker=markers.get(str(init), "o"), ms=4, label=label,
                                   color=colours.get(str(init)))[0]
                    inits_drawn.setdefault(str(init), line.get_color())
                    if len(at):
                        ax.plot(at["beta"], at[col], marker="*", ms=9, ls="none", color=line.get_color(),
                                label=f"{label} (reference form)")
            ax.set_xscale("symlog", linthresh=1.0)
            ax.set_xlabel("beta (Eq. 5; * = reference form at 1000)")
            ax.set_title(f"condition {cond}: {title}", fontsize=9)
            ax.grid(alpha=0.3)
            if not ax.lines:
                ax.text(0.5, 0.5, "not measured here", ha="center", va="center", transform=ax.transAxes, fontsize=8)
    handles = [Line2D([], [], color=c, marker=markers.get(i, "o"), ms=4, label=i) for i, c in inits_drawn.items()]
    handles += [Line2D([], [], color="0.3", ls=style_of[name], label=f"test: {name}") for name in renderings]
    handles.append(Line2D([], [], color="0.3", marker="*", ms=9, ls="none", label="reference form (beta 1000)"))
    fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), fontsize=8, frameon=False)
    fig.suptitle("Knowledge transfer dose-response (means over the outer folds; colour = initialisation, "
                 "line style = test rendering)", fontsize=11)
    return fig


# --------------------------------------------------------------------------- Fig. 5


#: Font sizes of :func:`fig5_lesion_background`: panel titles, subfigure titles, figure title.
FIG5_FONTSIZES = {"panel": 9, "step": 10, "figure": 11}


def fig5_lesion_background(roi: np.ndarray, lesion: np.ndarray, background: np.ndarray,
                           explanation: Any = None, mask: Optional[np.ndarray] = None, *,
                           true_label: Optional[str] = None,
                           background_rule: Optional[str] = None, model: Optional[str] = None) -> Figure:
    """Fig. 5 (Sec. 4.2, Eq. 1-2, Eq. 6): step 1, the ROI, its *Lesion* and *Background* images
    and, if an :class:`~mammo_lib.explain.eq6.Explanation` is given, steps 2-3 as their result: its map
    and cells (``explanation.plot``; each cell says ``L`` = dis^L and ``B`` = dis^B, as the
    figure's key under that title explains; step 2, the replaced windows, is drawn in Fig. 9).

    The three images share one grey scale (the joint min and max of the three) with one
    colourbar, so that the complementary rules (``ROI = Lesion + Background``,
    ``docs/DECISIONS.md``) read at a glance. The figure title names ``true_label`` and the
    explanation's prediction when known; the step-1 title names the background rule
    (``background_rule``, else the explanation's ``params["background_rule"]``).

    Args:
        roi, lesion, background: 2-D images of one shape.
        explanation: optional Eq. 6 explanation of ``roi``.
        mask: optional binary mass mask, outlined on every panel.
        true_label: the ROI's true class name, for the title.
        background_rule: the rule that made ``lesion`` / ``background``, for the title.
        model: the explained model (e.g. "DDSM-initialised knowledge-transfer model, fold 0"), for the title.
    """
    rule = background_rule
    if rule is None and explanation is not None:
        rule = getattr(explanation, "params", {}).get("background_rule")
    r = _grey(roi, "roi")
    if rule in ("soft", "otsu"):  # complementary: w from the GLCM variance, ROI = Lesion + Background
        names = ("Lesion (w \u00b7 ROI)", "Background ((1 \u2212 w) \u00b7 ROI)")
    else:
        names = ("Lesion (GLCM variance)", "Background")
    parts = {"ROI": r, names[0]: _grey(lesion, "lesion"), names[1]: _grey(background, "background")}
    for name, img in parts.items():
        if img.shape != r.shape:
            raise ValueError(f"{name} shape {img.shape} differs from the ROI's {r.shape}")
    m = None if mask is None else _binary(mask, r.shape, "mask")
    fig = Figure(figsize=(14 if explanation is not None else 8.5, 4.0), layout="constrained")
    if explanation is not None:
        left, right = fig.subfigures(1, 2, width_ratios=[3.2, 2.7])
    else:
        left, right = fig, None
    axes = left.subplots(1, 3)
    lo = min(float(img.min()) for img in parts.values())
    hi = max(float(img.max()) for img in parts.values())
    if hi <= lo:
        hi = lo + 1.0
    im = None
    for ax, (name, img) in zip(axes, parts.items()):
        im = ax.imshow(img, cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
        if m is not None:
            _outline(ax, m, MASK_COLOUR, 0.8)
        ax.set_title(name, fontsize=FIG5_FONTSIZES["panel"], loc="center")
        ax.set_xticks([])
        ax.set_yticks([])
    left.colorbar(im, ax=list(axes), shrink=0.75, pad=0.02, label="intensity (shared scale)")
    if right is not None:
        left.suptitle("step 1: Lesion / Background" + (f" (rule: {rule})" if rule and rule != "given" else ""),
                      fontsize=FIG5_FONTSIZES["step"])
        cell_axes = right.subplots(1, 2)
        plot_explanation(explanation, r, mask=None if m is None else m.astype(np.uint8), axes=cell_axes)
        right.suptitle("steps 2-3: each window replaced (Fig. 9), Eq. 6 distances and cells\n"
                       + CELL_TEXT_KEY, fontsize=FIG5_FONTSIZES["step"])
        for ax in cell_axes:
            ax.set_title(ax.get_title(), fontsize=FIG5_FONTSIZES["panel"], loc="center")
    title = [f"explained: {model}"] if model else []
    if true_label is not None:
        title.append(f"true: {true_label}")
    if explanation is not None:
        title.append(_prediction_text(explanation))
    if right is None and rule:
        title.append(f"background rule: {rule}")
    if title:
        fig.suptitle(" | ".join(title), fontsize=FIG5_FONTSIZES["figure"])
    return fig


# --------------------------------------------------------------------------- Fig. 6


def fig6_distance_distribution(df: pd.DataFrame, *, floor: float = 1e-12, offset: float = 10.0,
                               network: Optional[str] = None) -> Figure:
    """Fig. 6: distribution of ``log(d^j) + 10`` per group j (violin with inner box), Eq. 4, of
    ``network`` (named in the title, e.g. "DenseNet (small), generic synthetic pre-training").

    ``df`` has columns ``group`` and ``d`` (e.g. ``activation.activation_distances``). The paper's
    transform ``log d + 10`` (natural log) is undefined at ``d = 0``: **Decision** such distances
    are drawn at ``log(floor) + offset`` and counted in the axis label.
    """
    import seaborn as sns

    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"df must be a pandas DataFrame, got {type(df).__name__}")
    missing = [c for c in ("group", "d") if c not in df.columns]
    if missing:
        raise ValueError(f"df lacks columns {missing} (needs 'group' and 'd')")
    if len(df) == 0:
        raise ValueError("df is empty: no distances to plot")
    d = pd.to_numeric(df["d"], errors="coerce").to_numpy(dtype=float)
    if not np.isfinite(d).all() or (d < 0).any():
        raise ValueError("distances d must be finite and >= 0")
    if not floor > 0:
        raise ValueError(f"floor must be > 0, got {floor}")
    n_zero = int((d < floor).sum())
    data = pd.DataFrame({"group": df["group"].astype(str).to_numpy(),
                         "value": np.log(np.maximum(d, floor)) + offset})
    order = sorted(data["group"].unique(), key=lambda g: (len(g), g))
    fig = Figure(figsize=(1.6 * len(order) + 2.5, 4), layout="constrained")
    ax = fig.subplots()
    sns.violinplot(data=data, x="group", y="value", order=order, inner="box", cut=0, color="tab:blue", ax=ax)
    ax.set_xlabel("group j")
    ylabel = f"log $d^j$ + {offset:g}"
    if n_zero:
        ylabel += f"\n({n_zero} values d < {floor:g} drawn at log({floor:g}) + {offset:g})"
    ax.set_ylabel(ylabel)
    title = f"ROI vs mask activation distance (Eq. 4), n = {len(d) // max(1, len(order))} per group"
    if network:
        title += f"\nnetwork: {network}"
    ax.set_title(_wrap_inches(title, fig.get_figwidth() - 1.0, 9), fontsize=9)
    return fig


# --------------------------------------------------------------------------- Fig. 7


def fig7_overlays(rois: np.ndarray, masks: np.ndarray, maps_a: np.ndarray, maps_b: np.ndarray, *,
                  labels: tuple[str, str] = ("fine-tune", "knowledge transfer"),
                  ids: Optional[Sequence[str]] = None, confounders: Optional[np.ndarray] = None,
                  cmap: str = "jet", alpha: float = 0.45, true_labels: Optional[Sequence[str]] = None,
                  predictions: Optional[Sequence[tuple[str, str]]] = None,
                  betas: Optional[Sequence[float]] = None, title: Optional[str] = None) -> Figure:
    """Fig. 7: group-4 maps of two models (fine-tune vs knowledge transfer) on the same ROIs.

    One row per ROI: the ROI with the mask outline (and confounder outlines, if given), then each
    model's map rescaled to [0, 1], resized to the ROI by bilinear interpolation and overlaid; one
    colourbar for that [0, 1] scale. The outline legend lists the mask and only the confounder
    types that appear in a drawn ROI.

    Args:
        labels: the two models' names (map panel titles).
        ids: row names (default 0..N-1).
        confounders: optional ``(N, S, S)`` label images (values of ``CONFOUNDER_LABELS``).
        true_labels: optional true class per ROI, in the row title ("<id>: true <label>").
        predictions: optional ``(model a, model b)`` predicted class per ROI, in the map titles.
        betas: optional beta (Eq. 5) chosen for model b in each ROI's fold, under its panel title;
            where it is 0, the panel says that model b *is* model a there (knowledge transfer with
            beta 0 is fine-tuning: the two panels show one model).
        title: optional figure title (e.g. the initialisation).
    """
    r = np.asarray(rois)
    if r.ndim != 3 or len(r) == 0:
        raise ValueError(f"rois must be a non-empty (N, S, S) array, got shape {r.shape}")
    n = len(r)
    m = np.asarray(masks)
    if m.shape != r.shape:
        raise ValueError(f"masks shape {m.shape} differs from rois shape {r.shape}")
    a, b = np.asarray(maps_a), np.asarray(maps_b)
    for name, mp in (("maps_a", a), ("maps_b", b)):
        if mp.ndim != 3 or len(mp) != n:
            raise ValueError(f"{name} must be (N, g, g) with N = {n}, got shape {mp.shape}")
    conf = None if confounders is None else np.asarray(confounders)
    if conf is not None and conf.shape != r.shape:
        raise ValueError(f"confounders shape {conf.shape} differs from rois shape {r.shape}")
    if len(labels) != 2:
        raise ValueError(f"labels must name the two models, got {labels!r}")
    ids = [str(i) for i in range(n)] if ids is None else [str(i) for i in ids]
    if len(ids) != n:
        raise ValueError(f"ids has {len(ids)} entries for {n} ROIs")
    if true_labels is not None:
        true_labels = [_label_name(t) for t in true_labels]
        if len(true_labels) != n:
            raise ValueError(f"true_labels has {len(true_labels)} entries for {n} ROIs")
    if predictions is not None:
        predictions = [tuple(_label_name(x) for x in pair) for pair in predictions]
        if len(predictions) != n or any(len(pair) != 2 for pair in predictions):
            raise ValueError(f"predictions must hold one (model a, model b) pair per ROI ({n}), got {predictions!r}")
    if betas is not None:
        betas = [float(x) for x in betas]
        if len(betas) != n:
            raise ValueError(f"betas has {len(betas)} entries for {n} ROIs")

    fig = Figure(figsize=(8.2, 2.5 * n + 0.6 + (0.3 if title else 0)), layout="constrained")
    axes = fig.subplots(n, 3, squeeze=False)
    drawn: set[int] = set()
    im = None
    for i in range(n):
        roi = _grey(r[i], f"rois[{i}]")
        mask = _binary(m[i], roi.shape, f"masks[{i}]")
        row_title = f"{ids[i]}: true {true_labels[i]}" if true_labels is not None else f"{ids[i]}: ROI"
        _overlay(axes[i, 0], roi, None, title=row_title)
        drawn.update(_outlines(axes[i, 0], mask, None if conf is None else conf[i]))
        for k, (fmap, lab) in enumerate(((a[i], labels[0]), (b[i], labels[1])), start=1):
            panel = lab if predictions is None else f"{lab}: pred. {predictions[i][k - 1]}"
            if k == 2 and betas is not None:
                panel += (f"\nbeta 0 chosen: the {labels[0]} model" if betas[i] == 0 else f"\nbeta {betas[i]:g}")
            im = _overlay(axes[i, k], roi, _grey(fmap, f"maps[{i}]"), cmap=cmap, alpha=alpha, title=panel) or im
            _outline(axes[i, k], mask, MASK_COLOUR)
    _colorbar(fig, im, list(axes[:, 1:].ravel()), OVERLAY_SCALE, fraction=0.04, shrink=min(1.0, 0.35 + 0.2 * n))
    _outline_legend(fig, sorted(drawn))
    if title:
        fig.suptitle(_wrap(title, fig, FONTSIZES["figure"]), fontsize=FONTSIZES["figure"])
    return fig


# --------------------------------------------------------------------------- Fig. 8


def fig8_panels(roi: np.ndarray, cam: np.ndarray, corr_df: pd.DataFrame, knn_df: pd.DataFrame,
                knn_rois: np.ndarray, explanation: Any, mask: Optional[np.ndarray] = None, *,
                hirescam: Optional[np.ndarray] = None, cmap: str = "jet", alpha: float = 0.45,
                true_label: Optional[str] = None, model: Optional[str] = None) -> Figure:
    """Fig. 8: the three comparison explanations beside the proposed one.

    (a) the CAM (``cam.cam_map``: Grad-CAM, and HiResCAM if ``hirescam`` is given) over the ROI;
    (b) the Pearson correlation heatmap of GLCM vs deep features (``knn.feature_correlation``);
    (c) the k nearest training ROIs (``knn.knn_explain`` rows of one query, ``knn_rois`` the
    matching images) with label and distance; (d) :func:`mammo_lib.visualize.plot_explanation`.
    The CAM panels share one colourbar (each CAM rescaled to [0, 1]); the figure title names the
    explained ``model`` (all four panels explain it), ``true_label`` (if known) and the
    explanation's prediction with its probability (the softmax output, not a p-value).
    """
    import seaborn as sns

    r = _grey(roi, "roi")
    m = None if mask is None else _binary(mask, r.shape, "mask")
    cams = {"Grad-CAM": _grey(cam, "cam")}
    if hirescam is not None:
        cams["HiResCAM"] = _grey(hirescam, "hirescam")
    if not isinstance(corr_df, pd.DataFrame) or corr_df.empty:
        raise ValueError("corr_df must be a non-empty DataFrame (knn.feature_correlation)")
    needed = {"rank", "train_id", "label", "distance"}
    if not isinstance(knn_df, pd.DataFrame) or not needed <= set(knn_df.columns) or knn_df.empty:
        raise ValueError(f"knn_df must be a non-empty knn.knn_explain table with columns {sorted(needed)}")
    if "query" in knn_df.columns and knn_df["query"].nunique() > 1:
        raise ValueError("knn_df holds several queries: pass the rows of one query")
    nn_rois = np.asarray(knn_rois)
    if nn_rois.ndim != 3 or len(nn_rois) != len(knn_df):
        raise ValueError(f"knn_rois must be (k, S, S) with k = {len(knn_df)} rows of knn_df, got {nn_rois.shape}")

    fig = Figure(figsize=(13, 9), layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=[1, 1.05])
    fa, fb = top.subfigures(1, 2, width_ratios=[len(cams), 2.2])
    fc, fd = bottom.subfigures(1, 2, width_ratios=[1.2, 1.6])

    cam_axes = list(np.atleast_1d(fa.subplots(1, len(cams))))
    im = None
    for ax, (name, c) in zip(cam_axes, cams.items()):
        im = _overlay(ax, r, c, cmap=cmap, alpha=alpha, title=name)   # a map at ROI size is only rescaled
        if m is not None:
            _outline(ax, m, MASK_COLOUR)
    _colorbar(fa, im, cam_axes, CAM_SCALE + " to [0, 1]", fraction=0.05, shrink=0.8)
    fa.suptitle("(a) CAM: where the model looked", fontsize=FONTSIZES["group"])

    ax_b = fb.subplots()
    sns.heatmap(corr_df.astype(float), vmin=-1, vmax=1, cmap="RdBu_r", annot=corr_df.shape[1] <= 10,
                fmt=".2f", annot_kws={"fontsize": 6}, ax=ax_b, cbar_kws={"label": "Pearson r"})
    ax_b.tick_params(labelsize=7)
    ax_b.set_xlabel("deep feature")
    ax_b.set_ylabel("GLCM feature")
    fb.suptitle("(b) correlation of hand-crafted and deep features", fontsize=FONTSIZES["group"])

    k = len(knn_df)
    ncols = int(np.ceil(np.sqrt(k)))
    nrows = int(np.ceil(k / ncols))
    axes_c = np.atleast_1d(fc.subplots(nrows, ncols, squeeze=False)).ravel()
    ordered = knn_df.reset_index(drop=True).sort_values("rank", kind="stable")
    for ax, (row_i, row) in zip(axes_c, ordered.iterrows()):
        ax.imshow(_grey(nn_rois[row_i], f"knn_rois[{row_i}]"), cmap="gray", vmin=0, vmax=1)
        ax.set_title(f"#{int(row['rank'])}: {row['train_id']}\n{_label_name(row['label'])}, "
                     f"d = {float(row['distance']):.3g}", fontsize=7)
    for ax in axes_c:
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in axes_c[k:]:
        ax.set_axis_off()
    fc.suptitle(f"(c) {k} nearest training ROIs (deep features)", fontsize=FONTSIZES["group"])

    axes_d = fd.subplots(1, 2)
    plot_explanation(explanation, r, mask=None if m is None else m.astype(np.uint8), axes=axes_d)
    for ax in axes_d:
        ax.set_title(ax.get_title(), fontsize=FONTSIZES["panel"] + 1, loc="center")
    fd.suptitle("(d) proposed: Lesion / Background cells (Eq. 6)\n" + CELL_TEXT_KEY, fontsize=FONTSIZES["group"])
    head = ([f"explained: {model}"] if model else []) + \
        ([f"true: {_label_name(true_label)}"] if true_label is not None else []) + [_prediction_text(explanation)]
    fig.suptitle(_wrap(" | ".join(head), fig, FONTSIZES["figure"]), fontsize=FONTSIZES["figure"])
    return fig


# --------------------------------------------------------------------------- Fig. 9


def _default_cell(explanation: Any, mask: Optional[np.ndarray]) -> tuple[int, int]:
    """The cell with the largest ``|dis^L - dis^B|`` among cells overlapping ``mask`` (any cell
    if there is no mask or it overlaps none); the first in row order on ties."""
    from mammo_lib.explain.eq6 import window_grid

    gap = np.abs(np.asarray(explanation.dis_lesion, float) - np.asarray(explanation.dis_background, float))
    allowed = np.ones_like(gap, dtype=bool)
    if mask is not None:
        size = int(explanation.window) * int(explanation.grid)
        allowed = np.zeros_like(gap, dtype=bool)
        for p, q, rows, cols in window_grid(size, int(explanation.grid)):
            allowed[p, q] = bool(mask[rows, cols].any())
        if not allowed.any():
            allowed[:] = True
    flat = int(np.argmax(np.where(allowed, gap, -np.inf)))
    p, q = divmod(flat, gap.shape[1])
    return int(p), int(q)


def fig9_framework(roi: np.ndarray, lesion: np.ndarray, background: np.ndarray, explanation: Any, *,
                   mask: Optional[np.ndarray] = None, cell: Optional[tuple[int, int]] = None,
                   true_label: Optional[str] = None, background_rule: Optional[str] = None) -> Figure:
    """Fig. 9: the proposed framework (Sec. 4.2, Eq. 6) drawn from one real case, left to right.

    (0) the ROI with the mask outline and the g x g projection-window grid; step 1: its *Lesion*
    and *Background* images; step 2: for one window (p, q), ``ROI_L(p,q)`` and ``ROI_B(p,q)``, the
    ROI with that window replaced by Lesion's / Background's pixels (window outlined); step 3: the
    Eq. 6 distances ``dis^L`` and ``dis^B`` as g x g maps on one shared colour scale; labels:
    *Lesion* where ``dis^L < dis^B``, else *Background*, as a two-colour grid over the ROI.
    All grey panels share one intensity scale (the joint range of ROI, Lesion and Background).

    Args:
        roi, lesion, background: 2-D images of one shape ``S x S``, ``S = window * grid``.
        explanation: the :class:`~mammo_lib.explain.eq6.Explanation` of ``roi``.
        mask: optional binary mass mask (outlined; also picks the default window).
        cell: the window (p, q), 0-based, of step 2; default: the cell with the largest
            ``|dis^L - dis^B|`` among cells overlapping the mask (any cell without a mask).
        true_label: the ROI's true class, for the title.
        background_rule: the rule that made ``lesion`` / ``background`` (default
            ``explanation.params["background_rule"]``), for the title.
    """
    from mammo_lib.explain.eq6 import LESION, window_grid

    r = _grey(roi, "roi")
    les, bg = _grey(lesion, "lesion"), _grey(background, "background")
    for name, img in (("lesion", les), ("background", bg)):
        if img.shape != r.shape:
            raise ValueError(f"{name} shape {img.shape} differs from the ROI's {r.shape}")
    g, w = int(explanation.grid), int(explanation.window)
    if r.shape != (g * w, g * w):
        raise ValueError(f"roi must be {g * w}x{g * w} (window {w} x grid {g}), got {r.shape}")
    m = None if mask is None else _binary(mask, r.shape, "mask")
    if cell is None:
        cell = _default_cell(explanation, m)
    p, q = (int(v) for v in cell)
    if not (0 <= p < g and 0 <= q < g):
        raise ValueError(f"cell {cell!r} is outside the {g}x{g} grid (0-based)")
    rule = background_rule
    if rule is None:
        rule = getattr(explanation, "params", {}).get("background_rule")
    _, _, rows, cols = window_grid(g * w, g)[p * g + q]
    roi_l, roi_b = r.copy(), r.copy()
    roi_l[rows, cols] = les[rows, cols]
    roi_b[rows, cols] = bg[rows, cols]
    lo = min(float(x.min()) for x in (r, les, bg))
    hi = max(float(x.max()) for x in (r, les, bg))
    if hi <= lo:
        hi = lo + 1.0
    dl = np.asarray(explanation.dis_lesion, float)
    db = np.asarray(explanation.dis_background, float)
    dlo, dhi = min(float(dl.min()), float(db.min())), max(float(dl.max()), float(db.max()))
    if dhi <= dlo:
        dhi = dlo + 1e-12

    fig = Figure(figsize=(16.5, 5.6), layout="constrained")
    widths = [1.15, 1.1, 0.95, 1.1, 1.25]
    subs = fig.subfigures(1, 5, width_ratios=widths, wspace=0.04)
    step_titles = [f"ROI, mask, {g}x{g} window grid", "\u2192 step 1: split",
                   f"\u2192 step 2: replace window ({p}, {q})", "\u2192 step 3: Eq. 6 distances",
                   "\u2192 labels (Eq. 6)"]
    for sf, t in zip(subs, step_titles):
        sf.suptitle(t, fontsize=FONTSIZES["group"])

    def window_box(ax: Axes) -> None:
        ax.add_patch(Rectangle((cols.start - 0.5, rows.start - 0.5), w, w, fill=False,
                               edgecolor=WINDOW_COLOUR, linewidth=1.6))

    def grey(ax: Axes, img: np.ndarray, title: str) -> Any:
        im = ax.imshow(img, cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
        ax.set_title(title, fontsize=FONTSIZES["panel"] + 1, loc="center")
        _no_ticks(ax)
        return im

    # (0) ROI, mask, grid, the chosen window
    ax0 = subs[0].subplots()
    grey(ax0, r, f"ROI ({r.shape[0]} px)")
    _grid_lines(ax0, r.shape[0], g)
    if m is not None:
        _outline(ax0, m, MASK_COLOUR)
    window_box(ax0)
    ax0.legend(handles=[Line2D([], [], color=MASK_COLOUR, label="mass (mask)"),
                        Patch(fill=False, edgecolor=WINDOW_COLOUR, label=f"window ({p}, {q}), {w} px")],
               loc="upper center", bbox_to_anchor=(0.5, -0.01), ncol=1, fontsize=7, frameon=False)

    # step 1: Lesion / Background
    ax_l, ax_b = subs[1].subplots(2, 1)
    im_grey = grey(ax_l, les, "Lesion")
    grey(ax_b, bg, "Background")
    _colorbar(subs[1], im_grey, [ax_l, ax_b], "intensity (all grey panels)", shrink=0.8, location="bottom")

    # step 2: the replaced inputs of window (p, q)
    ax_rl, ax_rb = subs[2].subplots(2, 1)
    grey(ax_rl, roi_l, f"ROI$_L$({p}, {q})")
    grey(ax_rb, roi_b, f"ROI$_B$({p}, {q})")
    for ax in (ax_rl, ax_rb):
        window_box(ax)

    # step 3: dis^L and dis^B
    ax_dl, ax_db = subs[3].subplots(2, 1)
    im_d = None
    for ax, d, name in ((ax_dl, dl, "dis$^L$ (ROI vs ROI$_L$)"), (ax_db, db, "dis$^B$ (ROI vs ROI$_B$)")):
        im_d = ax.imshow(d, cmap="viridis", vmin=dlo, vmax=dhi, interpolation="nearest")
        ax.add_patch(Rectangle((q - 0.5, p - 0.5), 1, 1, fill=False, edgecolor=WINDOW_COLOUR, linewidth=1.6))
        ax.set_title(name, fontsize=FONTSIZES["panel"] + 1, loc="center")
        _no_ticks(ax)
    _colorbar(subs[3], im_d, [ax_dl, ax_db], "Eq. 6 distance (shared scale)", shrink=0.8, location="bottom")

    # labels
    ax_c = subs[4].subplots()
    _cells_panel(ax_c, r, explanation, m, vmin=lo, vmax=hi)
    window_box(ax_c)
    lesion_share = float(np.mean(np.asarray(explanation.cell_labels) == LESION))
    ax_c.set_title(f"{lesion_share:.0%} of cells Lesion", fontsize=FONTSIZES["panel"] + 1, loc="center")
    ax_c.legend(handles=_cell_legend_handles(), loc="upper center", bbox_to_anchor=(0.5, -0.01), ncol=1,
                fontsize=7, frameon=False)

    # arrows between the steps, in the gaps between the subfigures (the colourbars sit below their
    # panels, so no arrow crosses a colourbar's labels)
    x = 0.0
    total = sum(widths)
    for wd in widths[:-1]:
        x += wd / total
        fig.add_artist(FancyArrowPatch((x - 0.012, 0.5), (x + 0.012, 0.5), transform=fig.transFigure,
                                       arrowstyle="-|>", mutation_scale=18, color="0.3", in_layout=False))

    head = ([f"true: {_label_name(true_label)}"] if true_label is not None else []) + [_prediction_text(explanation)]
    if rule:
        head.append(f"background rule: {rule}")
    fig.suptitle("Framework (Sec. 4.2): " + " | ".join(head), fontsize=FONTSIZES["figure"])
    return fig


def explanation_grid(cases: Sequence[Mapping[str, Any]], *,
                     labels: tuple[str, str] = ("fine-tune", "knowledge transfer"),
                     cmap: str = "jet", alpha: float = 0.45, title: Optional[str] = None) -> Figure:
    """The two models' maps and the proposed explanation on a few cases (e.g. one benign, one
    malignant), one row each (formerly ``fig9_framework``).

    Each case is a mapping with ``roi``, ``mask``, ``maps_ft`` and ``maps_kt`` (group-4 maps of the
    fine-tuned and the knowledge-transfer model), ``explanation`` (of the knowledge-transfer
    model), ``label`` (true class) and optionally ``prediction`` (str, shown with the true label;
    default: the explanation's prediction). Row: ROI with the mask outline, the two maps overlaid
    (Fig. 7 style, rescaled to [0, 1], one colourbar), then the explanation's Lesion/Background cells.
    """
    from mammo_lib.explain.eq6 import LESION

    if not cases:
        raise ValueError("cases is empty: give at least one case")
    required = ("roi", "mask", "maps_ft", "maps_kt", "explanation", "label")
    for i, case in enumerate(cases):
        missing = [k for k in required if k not in case]
        if missing:
            raise ValueError(f"case {i} lacks keys {missing} (needs {list(required)})")
    if len(labels) != 2:
        raise ValueError(f"labels must name the two models, got {labels!r}")
    fig = Figure(figsize=(11.5, 3.1 * len(cases) + 0.5 + (0.3 if title else 0)), layout="constrained")
    rows = np.atleast_1d(fig.subfigures(len(cases), 1))
    for i, (sub, case) in enumerate(zip(rows, cases)):
        roi = _grey(case["roi"], f"cases[{i}]['roi']")
        mask = _binary(case["mask"], roi.shape, f"cases[{i}]['mask']")
        expl = case["explanation"]
        axes = sub.subplots(1, 4)
        _overlay(axes[0], roi, None, title="ROI and mask")
        _outline(axes[0], mask, MASK_COLOUR)
        im = None
        for ax, key, lab in ((axes[1], "maps_ft", labels[0]), (axes[2], "maps_kt", labels[1])):
            im = _overlay(ax, roi, _grey(case[key], f"cases[{i}][{key!r}]"), cmap=cmap, alpha=alpha, title=lab)
            _outline(ax, mask, MASK_COLOUR)
        _colorbar(sub, im, [axes[1], axes[2]], OVERLAY_SCALE, fraction=0.04, shrink=0.85)
        _cells_panel(axes[3], roi, expl, mask)
        share = float(np.mean(np.asarray(expl.cell_labels) == LESION))
        axes[3].set_title(f"Eq. 6 cells ({labels[1]}): {share:.0%} Lesion", fontsize=FONTSIZES["panel"],
                          loc="center")
        pred = (f"predicted: {case['prediction']}" if case.get("prediction") is not None
                else f"{labels[1]} " + _prediction_text(expl))
        sub.suptitle(f"({chr(ord('a') + i)}) true: {_label_name(case['label'])} | {pred}",
                     fontsize=FONTSIZES["group"])
    handles = [Line2D([], [], color=MASK_COLOUR, label="mass (mask)")] + _cell_legend_handles()
    fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), fontsize=7, frameon=False)
    if title:
        fig.suptitle(_wrap(title, fig, FONTSIZES["figure"]), fontsize=FONTSIZES["figure"])
    return fig


def mechanism_figure(table: pd.DataFrame, *, title: Optional[str] = None) -> Figure:
    """The confounder's effect on the logit margin per arm, split into the part carried by
    DenseNet's pass-through channels and the part carried by group 4's own channels
    (:func:`mammo_lib.protocol.mechanism.mechanism_table`; exact for a GAP + linear head). Two bars per
    arm; a dot marks their sum (the whole effect)."""
    need = ("arm", "logit effect passthrough", "logit effect own")
    missing = [c for c in need if c not in table.columns]
    if missing:
        raise ValueError(f"mechanism table lacks columns {missing} (needs {list(need)})")
    if table.empty:
        raise ValueError("mechanism table is empty: give at least one arm")
    arms = [str(a) for a in table["arm"]]
    x = np.arange(len(arms), dtype=float)
    pt = table["logit effect passthrough"].to_numpy(dtype=float)
    own = table["logit effect own"].to_numpy(dtype=float)
    fig = Figure(figsize=(max(4.0, 1.1 * len(arms) + 2.0), 3.4), layout="constrained")
    ax = fig.add_subplot()
    width = 0.38
    ax.bar(x - width / 2, pt, width, color="0.55", label="pass-through channels (from transition 3)")
    ax.bar(x + width / 2, own, width, color="tab:blue", label="group 4's own channels")
    ax.plot(x, pt + own, "o", color="black", markersize=4, label="total")
    ax.axhline(0, color="0.3", linewidth=0.8)
    ax.set_xticks(x, [textwrap.fill(a, 14) for a in arms], fontsize=FONTSIZES["panel"])
    ax.set_ylabel("confounder's effect on the logit margin\n(malignant - benign)", fontsize=FONTSIZES["panel"])
    ax.tick_params(axis="y", labelsize=FONTSIZES["panel"])
    fig.legend(*ax.get_legend_handles_labels(), loc="outside lower center", ncol=3, fontsize=7, frameon=False)
    fig.suptitle(title or "Where the confounder reaches the classifier", fontsize=FONTSIZES["figure"])
    return fig
