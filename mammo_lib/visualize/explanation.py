"""Figures of one explanation: the Eq. 6 cells (Fig. 8d / Fig. 9) and any explainer's evidence map."""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from mammo_lib.explain.eq6 import BACKGROUND, LESION, Explanation, unit_range, window_grid
from mammo_lib.explain.glcm import check_grey_image

if TYPE_CHECKING:
    from mammo_lib.explain.interface import Attribution


def _figure_and_axes(axes: Sequence[Any] | None, n: int, figsize: tuple[float, float]) -> tuple[Any, list[Any]]:
    from matplotlib.figure import Figure

    if axes is None:
        fig = Figure(figsize=figsize, layout="constrained")
        made = fig.subplots(1, n)
        return fig, list(np.atleast_1d(made))
    axes = list(axes)
    if len(axes) != n:
        raise ValueError(f"axes must hold {n} matplotlib Axes, got {len(axes)}")
    return axes[0].figure, axes


def _finish(axes: Sequence[Any], size: int, mask: np.ndarray | None) -> None:
    if mask is not None:
        for ax in axes:
            ax.contour(np.asarray(mask, dtype=float), levels=[0.5], colors="yellow", linewidths=1.0)
    for ax in axes:
        ax.set_xlim(-0.5, size - 0.5)
        ax.set_ylim(size - 0.5, -0.5)
        ax.set_xticks([])
        ax.set_yticks([])


def _check_roi(roi: np.ndarray, size: int, mask: np.ndarray | None, what: str) -> np.ndarray:
    roi = check_grey_image(roi, "roi")
    if roi.shape != (size, size):
        raise ValueError(f"roi must be {size}x{size} ({what}), got {roi.shape}")
    if mask is not None and np.shape(mask) != roi.shape:
        raise ValueError(f"mask shape {np.shape(mask)} differs from roi shape {roi.shape}")
    return roi


def plot_explanation(explanation: Explanation, roi: np.ndarray, *, mask: np.ndarray | None = None,
                     axes: Sequence[Any] | None = None, cmap: str = "jet", alpha: float = 0.45,
                     annotate: bool = True) -> Any:
    """Figure of an Eq. 6 explanation (Fig. 8d / Fig. 9 style); Agg-safe, no pyplot state.

    Left: the ROI with ``F^4`` rescaled to [0, 1] and resized to the ROI (bilinear) as a colour
    overlay (Fig. 7). Right: the ROI with each projection window coloured *Lesion* (red) or
    *Background* (blue), annotated with ``dis^L`` / ``dis^B``. The mask outline, if given, is
    drawn on both. Title: predicted class and its probability.

    Args:
        explanation: a :class:`~mammo_lib.explain.eq6.Explanation`.
        roi: the explained ROI, ``(S, S)`` with ``S = window * grid``.
        mask: optional binary mask of the ROI's shape.
        axes: two matplotlib Axes to draw on (default: a new Figure with two).

    Returns:
        the matplotlib Figure.

    Raises:
        ValueError: ``roi`` or ``mask`` of another size than the explanation's, or not two axes.
    """
    from matplotlib.patches import Patch, Rectangle
    from skimage.transform import resize

    e = explanation
    size = e.window * e.grid
    roi = _check_roi(roi, size, mask, f"window {e.window} x grid {e.grid}")
    fig, (ax_map, ax_cells) = _figure_and_axes(axes, 2, (9.0, 4.8))
    extent = (-0.5, size - 0.5, size - 0.5, -0.5)

    overlay = resize(unit_range(e.activation_map), roi.shape, order=1, mode="edge", anti_aliasing=False)
    ax_map.imshow(roi, cmap="gray", vmin=0, vmax=1, extent=extent)
    im = ax_map.imshow(overlay, cmap=cmap, alpha=alpha, vmin=0, vmax=1, extent=extent)
    fig.colorbar(im, ax=ax_map, fraction=0.046, pad=0.02, label="$F^4$ (rescaled)")
    ax_map.set_title("activation map $F^4$")

    ax_cells.imshow(roi, cmap="gray", vmin=0, vmax=1, extent=extent)
    colours = {LESION: "tab:red", BACKGROUND: "tab:blue"}
    fontsize = max(3.0, min(8.0, 42.0 / e.grid))
    for p, q, rows, cols in window_grid(size, e.grid):
        label = str(e.cell_labels[p, q])
        ax_cells.add_patch(Rectangle((cols.start - 0.5, rows.start - 0.5), e.window, e.window,
                                     facecolor=colours[label], alpha=0.3, edgecolor="white", linewidth=0.5))
        if annotate:
            ax_cells.text(cols.start + e.window / 2 - 0.5, rows.start + e.window / 2 - 0.5,
                          f"L {e.dis_lesion[p, q]:.2g}\nB {e.dis_background[p, q]:.2g}",
                          ha="center", va="center", fontsize=fontsize, color="white")
    ax_cells.legend(handles=[Patch(color=c, alpha=0.5, label=k) for k, c in colours.items()],
                    loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=2, fontsize=7, frameon=False)
    ax_cells.set_title(f"Lesion / Background cells ({e.lesion_fraction:.0%} Lesion)")
    _finish((ax_map, ax_cells), size, mask)
    fig.suptitle(f"prediction: {e.predicted_label} (p = {e.probabilities[e.prediction]:.3f})")
    return fig


def plot_attribution(attribution: Attribution, roi: np.ndarray, *, mask: np.ndarray | None = None,
                     ax: Any | None = None, cmap: str = "jet", alpha: float = 0.45) -> Any:
    """Any explainer's evidence map (:class:`~mammo_lib.explain.interface.Attribution`) over the ROI.

    The map (Eq. 6: ``dis^B - dis^L`` per cell, positive = *Lesion* evidence; Grad-CAM / HiResCAM:
    the class map) is rescaled to [0, 1] and resized to the ROI (nearest for a cell grid, so the
    cells stay visible; bilinear otherwise). An example-based explanation (kNN) has no map: the
    panel lists the nearest training cases instead.

    Returns:
        the matplotlib Figure.
    """
    from skimage.transform import resize

    roi = check_grey_image(roi, "roi")
    if mask is not None and np.shape(mask) != roi.shape:
        raise ValueError(f"mask shape {np.shape(mask)} differs from roi shape {roi.shape}")
    fig, (axis,) = _figure_and_axes(None if ax is None else [ax], 1, (4.8, 4.8))
    size = roi.shape[0]
    extent = (-0.5, size - 0.5, size - 0.5, -0.5)
    axis.imshow(roi, cmap="gray", vmin=0, vmax=1, extent=extent)
    if attribution.evidence is not None:
        ev = np.asarray(attribution.evidence, dtype=np.float64)
        order = 0 if ev.shape[0] < size // 4 else 1
        up = resize(unit_range(ev), roi.shape, order=order, mode="edge", anti_aliasing=False)
        im = axis.imshow(up, cmap=cmap, alpha=alpha, vmin=0, vmax=1, extent=extent)
        fig.colorbar(im, ax=axis, fraction=0.046, pad=0.02, label="evidence (rescaled)")
    elif attribution.neighbours is not None:
        lines = [f"#{r + 1}: case {i} ({lab})" for r, (i, lab) in
                 enumerate(zip(attribution.neighbours, attribution.neighbour_labels))]
        axis.text(0.02 * size, 0.05 * size, "nearest training cases\n" + "\n".join(lines), va="top",
                  fontsize=7, color="white", bbox=dict(facecolor="black", alpha=0.5))
    _finish((axis,), size, mask)
    axis.set_title(f"{attribution.method}: {attribution.predicted_label} "
                   f"(p = {attribution.probabilities[attribution.prediction]:.3f})", fontsize=9)
    return fig


__all__ = ["plot_explanation", "plot_attribution"]
