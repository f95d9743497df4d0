"""Region-of-interest extraction around a mass (paper Sec. 3.2, Fig. 2; Sec. 3.2).

Coordinates are integer pixel indices ``(row, column)``; a :class:`Box` is end-exclusive, so
pixel ``(i, j)`` covers the square ``[i, i+1) x [j, j+1)`` and a box's continuous centre is
``((y0 + y1) / 2, (x0 + x1) / 2)``.

Centring rule (used by every centred variant): a crop of side ``S`` around a box of side ``s``
starts at ``y0 + (s - S) // 2`` (Python floor division), i.e. at ``floor(centre - S / 2)``.
Its width is exactly ``S``; when ``S - s`` is odd, the extra context pixel goes to the top /
left side.  A crop may leave the image; :func:`extract_roi` then pads with zeros (a decision,
``docs/DECISIONS.md``) and records the padding.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Mapping, Optional

import numpy as np
from skimage.transform import resize

Variant = Literal["mass_centred", "original", "double_box", "overlap_0.9"]
#: ROI variants of Table 1 (paper Sec. 3.2); ``mass_centred`` is the paper's own.
VARIANTS: tuple[str, ...] = ("mass_centred", "original", "double_box", "overlap_0.9")
from mammo_lib.utils.options import MAX_ROI_SIZE, MIN_ROI_SIZE  # noqa: E402,F401 (ROI side bounds, one source)
#: Variants whose crop is drawn at random (they need an ``rng``).
RANDOM_VARIANTS: frozenset[str] = frozenset({"overlap_0.9"})

#: Table 1 rows -> (ROI variant, training augmentations).  Augmentations are applied after the
#: data division and only to training data (Sec. 3.2, see ``mammo_lib.data.augment``).
TABLE1_CONFIGS: dict[str, tuple[str, tuple[str, ...]]] = {
    # Ortega-Martorell et al. [46]: the mass's bounding box ("original ROI"), 54.4 %.
    "original_roi": ("original", ()),
    # Hamidinekoo et al. [27]: a square of twice the box's larger side, 57.4 %.
    "double_box": ("double_box", ()),
    # Li et al. [31]: double bounding box + horizontal and vertical flips, 60.9 %.
    "double_box_flip": ("double_box", ("hflip", "vflip")),
    # Shen et al. [4]: original ROI randomly shifted with overlap (IoU) >= 0.9, 53.6 %.
    "overlap_0.9": ("overlap_0.9", ()),
    # Proposed (Sec. 3.2): mass-centred max(224, w) x max(224, h) + flips + rotation, 63.6 %.
    "proposed": ("mass_centred", ("hflip", "vflip", "rotate")),
}
#: The paper's reference and OMI-DB accuracy for each Table 1 row.
TABLE1_REFERENCES: dict[str, tuple[str, float]] = {
    "original_roi": ("Ortega-Martorell et al. [46]", 0.544),
    "double_box": ("Hamidinekoo et al. [27]", 0.574),
    "double_box_flip": ("Li et al. [31]", 0.609),
    "overlap_0.9": ("Shen et al. [4]", 0.536),
    "proposed": ("Li et al. 2025 (proposed)", 0.636),
}


@dataclass(frozen=True)
class Box:
    """Axis-aligned, end-exclusive pixel box ``[y0, y1) x [x0, x1)`` (may extend past the image)."""

    y0: int
    x0: int
    y1: int
    x1: int

    def __post_init__(self) -> None:
        for name in ("y0", "x0", "y1", "x1"):
            if not isinstance(getattr(self, name), (int, np.integer)):
                raise TypeError(f"Box.{name} must be an int, got {getattr(self, name)!r}")
        if self.y1 <= self.y0 or self.x1 <= self.x0:
            raise ValueError(f"Box must have positive size, got {self}")

    @property
    def h(self) -> int:
        return int(self.y1 - self.y0)

    @property
    def w(self) -> int:
        return int(self.x1 - self.x0)

    @property
    def centre(self) -> tuple[float, float]:
        """Continuous centre ``(cy, cx)``; pixel ``i`` spans ``[i, i+1)``."""
        return ((self.y0 + self.y1) / 2.0, (self.x0 + self.x1) / 2.0)

    def as_tuple(self) -> tuple[int, int, int, int]:
        return (int(self.y0), int(self.x0), int(self.y1), int(self.x1))


def box_iou(a: Box, b: Box) -> float:
    """Intersection over union of two boxes (areas in pixels)."""
    ih = max(0, min(a.y1, b.y1) - max(a.y0, b.y0))
    iw = max(0, min(a.x1, b.x1) - max(a.x0, b.x0))
    inter = ih * iw
    return inter / (a.h * a.w + b.h * b.w - inter)


def mask_bbox(mask: np.ndarray) -> Box:
    """Tight bounding box of the non-zero pixels of a 2-D mask (paper Sec. 3.2: w, h, c)."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D, got shape {mask.shape}")
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        raise ValueError("empty mask: no foreground pixel to take a bounding box of")
    cols = np.flatnonzero(mask.any(axis=0))
    return Box(int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1)


def _centred(bbox: Box, height: int, width: int) -> Box:
    """Box of ``height x width`` centred on ``bbox`` (module docstring: floor rounding)."""
    y0 = bbox.y0 + (bbox.h - height) // 2
    x0 = bbox.x0 + (bbox.w - width) // 2
    return Box(y0, x0, y0 + height, x0 + width)


def _overlap_box(bbox: Box, overlap: float, rng: np.random.Generator) -> Box:
    """A shift of ``bbox`` drawn uniformly among all integer shifts with IoU >= ``overlap``.

    For a shift (dy, dx) of an h x w box the intersection is (h-|dy|)(w-|dx|); IoU >= t needs
    |dy| <= h (1-t)/(1+t) (and likewise for dx), which bounds the candidate grid.
    """
    h, w = bbox.h, bbox.w
    frac = (1.0 - overlap) / (1.0 + overlap)
    dy_max, dx_max = int(np.floor(h * frac)), int(np.floor(w * frac))
    dy, dx = np.meshgrid(np.arange(-dy_max, dy_max + 1), np.arange(-dx_max, dx_max + 1), indexing="ij")
    inter = (h - np.abs(dy)) * (w - np.abs(dx))
    iou = inter / (2.0 * h * w - inter)
    ok = np.flatnonzero(iou.ravel() >= overlap)  # (0, 0) always qualifies
    k = ok[rng.integers(ok.size)]
    sy, sx = int(dy.ravel()[k]), int(dx.ravel()[k])
    return Box(bbox.y0 + sy, bbox.x0 + sx, bbox.y1 + sy, bbox.x1 + sx)


def crop_box(bbox: Box, variant: Variant = "mass_centred", *, min_context: int = 224,
             rng: Optional[np.random.Generator] = None, overlap: float = 0.9) -> Box:
    """Crop box in image coordinates for one ROI variant (paper Sec. 3.2 and Table 1).

    - ``mass_centred``: ``max(min_context, w) x max(min_context, h)`` centred on the box (Fig. 2).
    - ``original``: the bounding box itself.
    - ``double_box``: a square of side ``2 * max(h, w)``, centred.
    - ``overlap_0.9``: the box shifted at random so that IoU(crop, bbox) >= ``overlap``
      (needs ``rng``; every admissible integer shift is equally likely).
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown ROI variant {variant!r}; choose one of {VARIANTS}")
    if variant == "mass_centred":
        if int(min_context) < 1:
            raise ValueError(f"min_context must be >= 1, got {min_context}")
        return _centred(bbox, max(int(min_context), bbox.h), max(int(min_context), bbox.w))
    if variant == "original":
        return bbox
    if variant == "double_box":
        side = 2 * max(bbox.h, bbox.w)
        return _centred(bbox, side, side)
    if rng is None:
        raise ValueError(f"variant {variant!r} is random: pass rng=np.random.default_rng(seed)")
    if not 0.0 < overlap <= 1.0:
        raise ValueError(f"overlap must lie in (0, 1], got {overlap}")
    return _overlap_box(bbox, overlap, rng)


@dataclass
class Roi:
    """One extracted ROI: ``image`` float32 and ``mask`` uint8 {0,1}, both ``size x size``.

    ``box`` is the crop in image coordinates, ``bbox`` the mask's bounding box, ``pad`` the zero
    padding (top, bottom, left, right) in original pixels where ``box`` left the image.
    """

    image: np.ndarray
    mask: np.ndarray
    box: Box
    bbox: Box
    pad: tuple[int, int, int, int]
    padded: bool
    variant: str
    aux: Optional[dict[str, np.ndarray]] = None


def _crop_padded(arr: np.ndarray, box: Box) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """``arr[box]`` with zeros wherever ``box`` lies outside ``arr``; returns the crop and pad."""
    H, W = arr.shape
    pad = (max(0, -box.y0), max(0, box.y1 - H), max(0, -box.x0), max(0, box.x1 - W))
    inner = arr[max(0, box.y0):min(H, box.y1), max(0, box.x0):min(W, box.x1)]
    if inner.size == 0:  # box entirely outside (cannot happen for a box that holds the mask)
        return np.zeros((box.h, box.w), dtype=arr.dtype), pad
    return np.pad(inner, ((pad[0], pad[1]), (pad[2], pad[3])), mode="constant"), pad


def _resize_labels(arr: np.ndarray, size: int) -> np.ndarray:
    """Nearest-neighbour resize that keeps label values exactly."""
    if arr.shape == (size, size):
        return arr.copy()
    out = resize(arr, (size, size), order=0, preserve_range=True, anti_aliasing=False, mode="edge")
    return out.astype(arr.dtype, copy=False)


def extract_roi(image: np.ndarray, mask: np.ndarray, *, variant: Variant = "mass_centred",
                size: int = 224, min_context: int = 224, rng: Optional[np.random.Generator] = None,
                aux: Optional[Mapping[str, np.ndarray]] = None, anti_aliasing: bool = True) -> Roi:
    """Crop, zero-pad and resize one mass ROI (paper Sec. 3.2, Fig. 2).

    The image crop is resized to ``size x size`` by bicubic interpolation (skimage ``order=3``)
    and clipped to [0, 1]; **Decision** ``anti_aliasing=True``: a Gaussian pre-filter when
    shrinking (as PIL's bicubic does), so that large masses do not alias.  The mask and every
    ``aux`` label map (e.g. the phantom's confounder map) are resized with nearest neighbour
    and stay exact labels.  A crop that already has the target size is returned unchanged.
    """
    image = np.asarray(image)
    mask = np.asarray(mask)
    if image.ndim != 2:
        raise ValueError(f"image must be 2-D, got shape {image.shape}")
    if mask.shape != image.shape:
        raise ValueError(f"mask shape {mask.shape} differs from image shape {image.shape}")
    if int(size) < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    if image.size and not (np.isfinite(image).all() and image.min() >= 0.0 and image.max() <= 1.0):
        raise ValueError("image values must be finite and lie in [0, 1] (use imageio.to_unit_float)")
    if mask.dtype != bool and not np.isin(np.unique(mask), (0, 1)).all():
        raise ValueError(f"mask must be binary {{0, 1}}, found values {np.unique(mask)[:5]}")
    bbox = mask_bbox(mask)
    box = crop_box(bbox, variant, min_context=min_context, rng=rng)

    crop, pad = _crop_padded(image.astype(np.float32, copy=False), box)
    if crop.shape == (size, size):
        roi_image = crop.astype(np.float32, copy=True)
    else:
        # skimage smooths only the axes that shrink (sigma = (factor - 1) / 2).
        roi_image = resize(crop, (size, size), order=3, mode="edge", anti_aliasing=anti_aliasing)
    roi_image = np.clip(roi_image, 0.0, 1.0).astype(np.float32, copy=False)
    roi_mask = _resize_labels(_crop_padded(mask.astype(np.uint8, copy=False), box)[0], size)

    aux_out: Optional[dict[str, np.ndarray]] = None
    if aux is not None:
        aux_out = {}
        for name, arr in aux.items():
            arr = np.asarray(arr)
            if arr.shape != image.shape:
                raise ValueError(f"aux map {name!r} shape {arr.shape} differs from image shape {image.shape}")
            aux_out[name] = _resize_labels(_crop_padded(arr, box)[0], size)
    return Roi(image=roi_image, mask=roi_mask, box=box, bbox=bbox, pad=pad,
               padded=any(p > 0 for p in pad), variant=variant, aux=aux_out)
