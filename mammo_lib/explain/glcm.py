"""Grey-level co-occurrence texture (Sec. 2.2.2, Eq. 1-2; Sec. 4.2).

:func:`glcm_variance_map` is the per-pixel *variance* map that the proposed explanation calls
*Lesion* (Sec. 4.2, step 1); :func:`glcm_features` / :func:`glcm_feature_table` are whole-ROI
hand-crafted features (Fig. 8b).

How the variance map is computed without building one matrix per pixel
---------------------------------------------------------------------
For the window around a pixel, let the co-occurrence pairs be ``(m_k, n_k)``, k = 1..N: the
first pixel ``m_k`` anywhere in the window and its neighbour ``n_k`` at the offset, both inside
the window (exactly the pairs :func:`skimage.feature.graycomatrix` counts on the window crop).
Then ``P(m, n)`` counts pairs, ``p = P / N`` when ``normed``, and with
``T = sum p``, ``S1 = sum m p``, ``S2 = sum m^2 p``::

    variance = sum_{m,n} (m - mu)^2 p(m, n) = S2 - 2 mu S1 + mu^2 T              (Eq. 1)
    mu = S1 / L^2  (mean="paper", Eq. 2 as printed)   or   mu = S1  (mean="haralick")

So only the window sums ``sum_k m_k`` and ``sum_k m_k^2`` are needed (``n`` enters only through
which pairs exist; with ``symmetric`` each pair also counts reversed, adding ``sum n_k`` and
``sum n_k^2``). The first pixels of the valid pairs form a fixed (window - |dr|) x
(window - |dc|) rectangle inside every window, so both sums are box sums of ``q`` and ``q^2``
(``q`` the quantised image), computed for every pixel at once from an integral image. Every
value is an integer until the final division, so the result is exact up to float64 rounding.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Literal

import numpy as np
import pandas as pd
from skimage.feature import graycomatrix, graycoprops

from mammo_lib.utils.progress import tqdm

MeanForm = Literal["paper", "haralick"]
PadMode = Literal["reflect", "symmetric", "edge"]

#: The four standard GLCM directions (skimage convention: 0 = right neighbour, pi/2 = the one below).
STANDARD_ANGLES: tuple[float, ...] = (0.0, np.pi / 4, np.pi / 2, 3 * np.pi / 4)

#: Properties returned by :func:`glcm_features` (skimage's graycoprops names).
FEATURE_NAMES: tuple[str, ...] = ("contrast", "dissimilarity", "homogeneity", "energy",
                                  "correlation", "ASM", "entropy")

#: Slack allowed on the [0, 1] range of grey images (float rounding of bicubic resizing).
_RANGE_TOLERANCE = 1e-3


def quantize(img: np.ndarray, levels: int = 8) -> np.ndarray:
    """Grey image in [0, 1] -> integer levels ``{0, ..., levels-1}`` (the ``L`` of Eq. 1-2).

    Binning: ``floor(img * levels)``, clipped to ``levels - 1`` (so 1.0 joins the top bin and every
    bin is ``1/levels`` wide). Returns ``uint8`` for ``levels <= 256``, else ``uint16``.
    """
    _check_levels(levels)
    arr = check_grey_image(img, "img")
    q = np.clip(np.floor(arr.astype(np.float64) * levels), 0, levels - 1)
    return q.astype(np.uint8 if levels <= 256 else np.uint16)


def glcm_offset(distance: int, angle: float) -> tuple[int, int]:
    """Pixel offset ``(rows, cols)`` of the pair partner, as skimage's ``graycomatrix`` uses it:
    ``(round(sin(angle) * distance), round(cos(angle) * distance))``."""
    return int(round(np.sin(angle) * distance)), int(round(np.cos(angle) * distance))


def glcm_variance_map(img: np.ndarray, *, levels: int = 8, window: int = 5, distance: int = 1,
                      angle: float = 0.0, mean: MeanForm = "paper", symmetric: bool = False,
                      normed: bool = True, pad_mode: PadMode = "reflect") -> np.ndarray:
    """Per-pixel GLCM *variance* (Eq. 1) over a sliding ``window x window`` neighbourhood.

    docs/DECISIONS.md defaults: ``levels=8``, ``window=5``, one-pixel offset at 0 degrees,
    ``mean="paper"`` (Eq. 2 as printed, ``mu = (1/L^2) sum m p(m,n)``, as in the ``fast_glcm``
    code) or ``"haralick"`` (``mu = sum m p(m,n)``).

    Args:
        img: 2-D grey image in [0, 1], quantised with :func:`quantize`.
        levels: number of grey levels ``L``.
        window: odd side of the square neighbourhood centred on each pixel.
        distance, angle: pair offset in skimage's convention (:func:`glcm_offset`).
        mean: form of ``mu`` (see above).
        symmetric, normed: as in :func:`skimage.feature.graycomatrix` on the window crop.
        pad_mode: how the image is extended by ``window // 2`` pixels at the border
            (:func:`numpy.pad` mode), so that every pixel has a full window.

    Returns:
        ``float32`` array of the image's shape; pixel ``(r, c)`` equals the variance of the GLCM
        that ``graycomatrix(q_padded[r:r+window, c:c+window], [distance], [angle], levels,
        symmetric, normed)`` gives (the module docstring shows how without a loop).
    """
    _check_levels(levels)
    if isinstance(window, bool) or not isinstance(window, (int, np.integer)) or window < 1 \
            or window % 2 == 0:
        raise ValueError(f"window must be an odd positive int (3, 5, 7, ...), got {window!r}")
    if isinstance(distance, bool) or not isinstance(distance, (int, np.integer)) or distance < 1:
        raise ValueError(f"distance must be a positive int, got {distance!r}")
    if mean not in ("paper", "haralick"):
        raise ValueError(f"mean must be 'paper' or 'haralick', got {mean!r}")
    if pad_mode not in ("reflect", "symmetric", "edge"):
        raise ValueError(f"pad_mode must be 'reflect', 'symmetric' or 'edge', got {pad_mode!r}")
    dr, dc = glcm_offset(int(distance), float(angle))
    if abs(dr) >= window or abs(dc) >= window:
        raise ValueError(f"offset {(dr, dc)} (distance {distance}, angle {angle:g}) does not fit in a "
                         f"{window}x{window} window: use a window larger than {max(abs(dr), abs(dc))}")
    q = quantize(img, levels).astype(np.float64)
    half = window // 2
    if pad_mode == "reflect" and min(q.shape) <= half:
        raise ValueError(f"image {q.shape} is too small for reflect padding of a {window}x{window} "
                         f"window; use pad_mode='symmetric' or a smaller window")
    padded = np.pad(q, half, mode=pad_mode)

    hp, wp = padded.shape
    # First pixels (a) and their partners (b) of every pair in the padded image; index (i, j) of
    # these arrays is the first pixel padded[i + max(0,-dr), j + max(0,-dc)], which makes the
    # pairs of the window at output pixel (r, c) the box a[r:r+bh, c:c+bw].
    r0, c0 = max(0, -dr), max(0, -dc)
    rows, cols = hp - abs(dr), wp - abs(dc)
    a = padded[r0:r0 + rows, c0:c0 + cols]
    b = padded[r0 + dr:r0 + dr + rows, c0 + dc:c0 + dc + cols]
    bh, bw = window - abs(dr), window - abs(dc)
    n_pairs = float(bh * bw)
    s1 = _box_sum(a, bh, bw)
    s2 = _box_sum(a * a, bh, bw)
    if symmetric:
        s1 = s1 + _box_sum(b, bh, bw)
        s2 = s2 + _box_sum(b * b, bh, bw)
        n_pairs *= 2.0
    if normed:
        s1, s2, total = s1 / n_pairs, s2 / n_pairs, 1.0
    else:
        total = n_pairs
    mu = s1 / levels**2 if mean == "paper" else s1
    var = s2 - 2.0 * mu * s1 + mu * mu * total
    if mean == "haralick":  # S2 - S1^2/T >= 0 mathematically; remove float round-off below zero
        var = np.maximum(var, 0.0)
    return var.astype(np.float32)


def _box_sum(x: np.ndarray, bh: int, bw: int) -> np.ndarray:
    """Sums of ``x`` over every ``bh x bw`` rectangle (valid positions), from an integral image."""
    ii = np.zeros((x.shape[0] + 1, x.shape[1] + 1), dtype=np.float64)
    np.cumsum(np.cumsum(x, axis=0), axis=1, out=ii[1:, 1:])
    return ii[bh:, bw:] - ii[:-bh, bw:] - ii[bh:, :-bw] + ii[:-bh, :-bw]


def glcm_features(img: np.ndarray, *, levels: int = 32, distances: Sequence[int] = (1,),
                  angles: Sequence[float] = STANDARD_ANGLES, symmetric: bool = True,
                  mask: np.ndarray | None = None) -> dict[str, float]:
    """Whole-image GLCM texture features (hand-crafted features of Fig. 8b).

    The image is quantised with :func:`quantize`; one normalised GLCM per (distance, angle) from
    :func:`skimage.feature.graycomatrix`; contrast, dissimilarity, homogeneity, energy,
    correlation, ASM and entropy (natural log, ``-sum p ln p``) from
    :func:`skimage.feature.graycoprops`, averaged over all distances and angles.

    Args:
        mask: optional binary mask of the image's shape; only pairs whose two pixels lie inside
            it are counted (pixels outside get an extra level that is then dropped).
    """
    q = quantize(img, levels)
    if not distances or not angles:
        raise ValueError("distances and angles must be non-empty")
    bad = [d for d in distances if isinstance(d, bool) or not isinstance(d, (int, np.integer)) or d < 1]
    if bad:
        raise ValueError(f"distances must be positive ints, got {list(distances)}")
    n_levels = levels
    if mask is not None:
        m = np.asarray(mask)
        if m.shape != q.shape:
            raise ValueError(f"mask shape {m.shape} differs from image shape {q.shape}")
        if not np.isin(m, (0, 1)).all():
            raise ValueError("mask must hold only 0 and 1")
        if not m.any():
            raise ValueError("mask is empty")
        q = np.where(m.astype(bool), q, levels).astype(np.uint16)
        n_levels = levels + 1
    counts = graycomatrix(q, distances=list(distances), angles=list(angles), levels=n_levels,
                          symmetric=symmetric, normed=False)[:levels, :levels].astype(np.float64)
    sums = counts.sum(axis=(0, 1), keepdims=True)
    if (sums == 0).any():
        raise ValueError(f"no pixel pairs for some offsets (image {np.shape(img)}, distances "
                         f"{list(distances)}): use smaller distances or a larger image/mask")
    p = counts / sums
    return {name: float(np.mean(graycoprops(p, name))) for name in FEATURE_NAMES}


def glcm_feature_table(images: Iterable[np.ndarray] | np.ndarray, *,
                       ids: Sequence[str] | None = None, masks: Iterable[np.ndarray] | None = None,
                       progress: bool = False, **kwargs) -> pd.DataFrame:
    """One row of :func:`glcm_features` per image (columns :data:`FEATURE_NAMES`).

    Args:
        images: an ``(N, H, W)`` array or an iterable of 2-D images in [0, 1].
        ids: optional row labels (index named ``case_id``); length must match.
        masks: optional per-image masks passed to :func:`glcm_features`.
        kwargs: passed to :func:`glcm_features` (``levels``, ``distances``, ``angles``, ...).
    """
    imgs = list(images)
    mask_list = [None] * len(imgs) if masks is None else list(masks)
    if len(mask_list) != len(imgs):
        raise ValueError(f"{len(mask_list)} masks for {len(imgs)} images")
    if ids is not None and len(ids) != len(imgs):
        raise ValueError(f"{len(ids)} ids for {len(imgs)} images")
    rows = []
    for i, (img, m) in enumerate(tqdm(list(zip(imgs, mask_list)), desc="GLCM features",
                                      disable=not progress)):
        try:
            rows.append(glcm_features(img, mask=m, **kwargs))
        except ValueError as err:
            raise ValueError(f"image {ids[i] if ids is not None else i}: {err}") from err
    table = pd.DataFrame(rows, columns=list(FEATURE_NAMES))
    if ids is not None:
        table.index = pd.Index(list(ids), name="case_id")
    return table


def _check_levels(levels: int) -> None:
    if isinstance(levels, bool) or not isinstance(levels, (int, np.integer)) or not 2 <= levels <= 65535:
        raise ValueError(f"levels must be an int in [2, 65535], got {levels!r}")


def check_grey_image(img: np.ndarray, name: str = "image") -> np.ndarray:
    """``img`` itself if it is a finite 2-D float array in [0, 1] (small rounding slack allowed);
    otherwise a TypeError/ValueError naming ``name``."""
    if not isinstance(img, np.ndarray):
        raise TypeError(f"{name} must be a numpy array, got {type(img).__name__}")
    if img.ndim != 2:
        raise ValueError(f"{name} must be 2-D (H, W), got shape {img.shape}")
    if img.size == 0:
        raise ValueError(f"{name} is empty")
    if not np.issubdtype(img.dtype, np.floating):
        raise TypeError(f"{name} must be a float image in [0, 1], got {img.dtype} "
                        f"(use imageio.to_unit_float first)")
    if not np.isfinite(img).all():
        raise ValueError(f"{name} holds NaN or infinite values")
    lo, hi = float(img.min()), float(img.max())
    if lo < -_RANGE_TOLERANCE or hi > 1 + _RANGE_TOLERANCE:
        raise ValueError(f"{name} must lie in [0, 1], got min {lo:g}, max {hi:g}")
    return img
