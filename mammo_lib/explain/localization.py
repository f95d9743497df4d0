"""Localisation scores for activation maps: a number for what the paper's Fig. 7 shows by eye.

Beyond the paper. Fig. 7 argues that knowledge transfer moves the group-4 activation map
``F^4`` (Eq. 3) onto the mass and away from the surrounding tissue (dense tissue,
micro-calcifications). Here a map is upsampled to the ROI as in Fig. 7 ("resized to 224 by
interpolation": bilinear, half-pixel centres, like ``torch.nn.functional.interpolate`` with
``align_corners=False`` and OpenCV's ``INTER_LINEAR``) and scored against known regions:

- **energy share** of a region: the fraction of the map's total mass inside it;
- **pointing game** (Zhang et al., 2018): whether the map's maximum lies in the region
  (optionally within ``tolerance_px`` pixels of it).

With the phantom's confounder label map (0 none, 1 micro-calcification, 2 dense tissue; see
``mammo_lib.data.images.LoadedCase``) the same scores say how much of the map falls on a
confounder instead of the mass.
"""
from __future__ import annotations

import math
from typing import Mapping, Optional, Sequence, Union

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as tnf

#: Labels of the phantom's confounder map (``LoadedCase.confounders``) -> column suffix.
CONFOUNDER_LABELS: dict[int, str] = {1: "calcification", 2: "dense"}

Size = Union[int, Sequence[int]]


def _as_size(size: Size) -> tuple[int, int]:
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        out = (int(size), int(size))
    elif isinstance(size, Sequence) and len(size) == 2 and all(
            isinstance(s, (int, np.integer)) and not isinstance(s, bool) for s in size):
        out = (int(size[0]), int(size[1]))
    else:
        raise TypeError(f"size must be an int or a pair of ints (H, W), got {size!r}")
    if min(out) < 1:
        raise ValueError(f"size must be positive, got {out}")
    return out


def _as_maps(maps: np.ndarray, what: str = "activation map") -> np.ndarray:
    arr = np.asarray(maps)
    if arr.ndim < 2:
        raise ValueError(f"{what} must be at least 2-D (..., g, g), got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
        raise TypeError(f"{what} must be real-valued, got dtype {arr.dtype}")
    if arr.size and not np.isfinite(arr).all():
        raise ValueError(f"{what} holds NaN or infinite values")
    return arr.astype(np.float64, copy=False)


def _as_region(region: np.ndarray, what: str = "region_mask") -> np.ndarray:
    arr = np.asarray(region)
    if arr.dtype != bool:
        if not np.issubdtype(arr.dtype, np.number) or (arr.size and not np.isin(arr, (0, 1)).all()):
            raise ValueError(f"{what} must be binary (bool or {{0, 1}}), got values "
                             f"{np.unique(arr)[:5].tolist()}")
        arr = arr.astype(bool)
    return arr


def upsample_map(F: np.ndarray, size: Size) -> np.ndarray:
    """Bilinear resize of a ``(..., g, g)`` map to ``(..., H, W)`` (Fig. 7: "resized by interpolation").

    Half-pixel centres and edge clamping (``align_corners=False``), no anti-aliasing; leading
    dimensions are kept, so ``(N, g, g)`` maps are resized in one call. Returns float64.
    """
    arr = _as_maps(F)
    h, w = _as_size(size)
    lead = arr.shape[:-2]
    t = torch.from_numpy(np.ascontiguousarray(arr)).reshape(-1, 1, *arr.shape[-2:])
    up = tnf.interpolate(t, size=(h, w), mode="bilinear", align_corners=False)
    return up.reshape(*lead, h, w).numpy()


def _check_nonnegative(arr: np.ndarray) -> None:
    if arr.size and arr.min() < 0:
        raise ValueError(f"activation map must be non-negative (Eq. 3 maps are), got min {arr.min():g}")


def _map_and_region(F: np.ndarray, region_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One (g, g) map and one (H, W) boolean region, or ValueError."""
    arr = _as_maps(F)
    if arr.ndim != 2:
        raise ValueError(f"F must be 2-D (g, g), got shape {arr.shape}")
    region = _as_region(region_mask)
    if region.ndim != 2:
        raise ValueError(f"region_mask must be 2-D (H, W), got shape {region.shape}")
    return arr, region


def energy_share(F: np.ndarray, region_mask: np.ndarray) -> float:
    """``sum(F_up * region) / sum(F_up)`` with ``F_up`` the map upsampled to the region's size.

    ``F`` must be non-negative (Eq. 3); an all-zero map has no share and gives NaN. An empty
    region gives 0.0.
    """
    arr, region = _map_and_region(F, region_mask)
    _check_nonnegative(arr)
    up = upsample_map(arr, region.shape)
    total = float(up.sum())
    if total <= 0.0:
        return math.nan
    return float(up[region].sum() / total)


def _distance_to_region(point: tuple[int, int], region: np.ndarray) -> float:
    """Euclidean distance (pixel centres) from ``point`` to the nearest pixel of ``region``."""
    rows, cols = np.nonzero(region)
    if rows.size == 0:
        return math.inf
    return float(np.sqrt(np.min((rows - point[0]) ** 2 + (cols - point[1]) ** 2)))


#: Values within this fraction of a map's maximum are the maximum (a tie). A bilinear upsampling
#: has plateaus (the clamped border of a cell, a cell's centre at an integer scale) whose values are
#: equal in exact arithmetic but differ in their last bits, and which of those bits is largest
#: depends on the CPU's interpolation kernel; with exact ties only, the pointing game picked a
#: pixel of the plateau by rounding and a hit could change across CPUs (``docs/DECISIONS.md``,
#: "Same numbers on every CPU"). 1e-9 is far above rounding (1e-16) and far below what separates
#: two distinct pixels of a map.
PEAK_RTOL = 1e-9


def peak_index(up: np.ndarray) -> np.ndarray:
    """Flat index of each map's maximum, ``(N, P) -> (N,)``: the first pixel in raster order whose
    value is within :data:`PEAK_RTOL` of the row's maximum.

    >>> peak_index(np.array([[1.0, 3.0 - 1e-15, 3.0, 2.0]]))   # the plateau's first pixel
    array([1])
    """
    flat = np.asarray(up, dtype=np.float64)
    peak = flat.max(axis=1, keepdims=True)
    return (flat >= peak - PEAK_RTOL * np.abs(peak)).argmax(axis=1)


def pointing_game(F: np.ndarray, region_mask: np.ndarray, tolerance_px: float = 0) -> bool:
    """Pointing game: is the maximum of the upsampled map within ``tolerance_px`` of the region?

    The maximum is that of the bilinearly upsampled map (ties, within :data:`PEAK_RTOL` of it:
    the first in raster order; :func:`peak_index`).
    ``tolerance_px = 0`` asks for the maximum inside the region; a positive tolerance accepts a
    maximum within that Euclidean distance of a region pixel (the region dilated by a disk).
    An empty region is a miss.

    Raises:
        ValueError: the map is all zero (it points nowhere), negative, or the tolerance is < 0.
    """
    arr, region = _map_and_region(F, region_mask)
    if not np.isfinite(tolerance_px) or tolerance_px < 0:
        raise ValueError(f"tolerance_px must be a finite number >= 0, got {tolerance_px!r}")
    _check_nonnegative(arr)
    if not arr.any():
        raise ValueError("all-zero activation map: it has no maximum to point with")
    up = upsample_map(arr, region.shape)
    point = np.unravel_index(int(peak_index(up.reshape(1, -1))[0]), up.shape)
    return bool(_distance_to_region((int(point[0]), int(point[1])), region) <= tolerance_px)


def localization_table(maps: np.ndarray, masks: np.ndarray, confounders: Optional[np.ndarray] = None,
                       ids: Optional[Sequence[str]] = None, *,
                       confounder_labels: Mapping[int, str] = CONFOUNDER_LABELS,
                       tolerance_px: float = 0) -> pd.DataFrame:
    """One row per case: energy shares of the mass and of each confounder, and the pointing game.

    Args:
        maps: ``(N, g, g)`` non-negative activation maps (Eq. 3), e.g. ``F^4``.
        masks: ``(N, S, S)`` binary mass masks of the ROIs.
        confounders: ``(N, S, S)`` integer label maps (``confounder_labels``) or None.
        ids: case ids (default ``"0"``, ``"1"``, ...).
        confounder_labels: label value -> name; one ``share_<name>`` column each.
        tolerance_px: pointing-game tolerance (see :func:`pointing_game`).

    Returns:
        DataFrame with ``case_id``, ``share_mass``, ``share_<name>`` per confounder (NaN when the
        case has no such confounder, or no confounder map was given), ``hit_mass`` (pandas
        ``boolean``; NA for an all-zero map, whose shares are NaN too).
    """
    arr = _as_maps(maps, "maps")
    if arr.ndim != 3:
        raise ValueError(f"maps must be 3-D (N, g, g), got shape {arr.shape}")
    _check_nonnegative(arr)
    region = _as_region(masks, "masks")
    if region.ndim != 3 or region.shape[0] != arr.shape[0]:
        raise ValueError(f"masks must be (N, S, S) with N = {arr.shape[0]} like maps, got shape {region.shape}")
    n = arr.shape[0]
    if ids is None:
        ids = [str(i) for i in range(n)]
    ids = list(ids)
    if len(ids) != n:
        raise ValueError(f"ids has {len(ids)} entries for {n} maps")
    conf = None
    if confounders is not None:
        conf = np.asarray(confounders)
        if conf.shape != region.shape:
            raise ValueError(f"confounders shape {conf.shape} differs from masks shape {region.shape}")
        if not np.issubdtype(conf.dtype, np.integer):
            raise TypeError(f"confounders must be an integer label map, got dtype {conf.dtype}")
    if not np.isfinite(tolerance_px) or tolerance_px < 0:
        raise ValueError(f"tolerance_px must be a finite number >= 0, got {tolerance_px!r}")

    up = upsample_map(arr, region.shape[1:]) if n else np.zeros(region.shape)
    total = up.reshape(n, -1).sum(axis=1)
    alive = total > 0
    safe_total = np.where(alive, total, 1.0)

    def share(reg: np.ndarray) -> np.ndarray:
        s = (up * reg).reshape(n, -1).sum(axis=1) / safe_total
        return np.where(alive, s, np.nan)

    data: dict[str, object] = {"case_id": ids, "share_mass": share(region)}
    for value, name in confounder_labels.items():
        if conf is None:
            data[f"share_{name}"] = np.full(n, np.nan)
            continue
        reg = conf == value
        present = reg.reshape(n, -1).any(axis=1)
        data[f"share_{name}"] = np.where(present, share(reg), np.nan)

    flat_arg = peak_index(up.reshape(n, -1)) if n else np.zeros(0, np.int64)
    rows, cols = np.unravel_index(flat_arg, region.shape[1:])
    if tolerance_px == 0:
        hits = region[np.arange(n), rows, cols]
    else:
        hits = np.array([_distance_to_region((int(r), int(c)), region[i]) <= tolerance_px
                         for i, (r, c) in enumerate(zip(rows, cols))], dtype=bool)
    data["hit_mass"] = pd.array([bool(h) if a else pd.NA for h, a in zip(hits, alive)], dtype="boolean")
    return pd.DataFrame(data)


def summarize_localization(df: pd.DataFrame, by: Optional[str] = None) -> pd.DataFrame:
    """Mean energy shares and pointing-game accuracy of a :func:`localization_table` (per ``by`` group).

    Columns: ``n_cases``, for every ``share_<name>`` column ``mean_share_<name>`` and
    ``n_<name>`` (cases where it is defined: NaN rows are left out), then ``pointing_accuracy``
    (fraction of ``hit_mass`` true among the defined ones) and ``n_pointing``. The index is the
    ``by`` groups, or the single row ``"all"``.
    """
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"df must be a pandas DataFrame, got {type(df).__name__}")
    share_cols = [c for c in df.columns if c.startswith("share_")]
    missing = [c for c in ("share_mass", "hit_mass") if c not in df.columns]
    if missing:
        raise ValueError(f"df lacks columns {missing} (expected a localization_table)")
    if by is not None and by not in df.columns:
        raise ValueError(f"group column {by!r} is not in df (columns: {list(df.columns)})")

    def one(part: pd.DataFrame) -> dict[str, float]:
        row: dict[str, float] = {"n_cases": len(part)}
        for col in share_cols:
            name = col[len("share_"):]
            vals = pd.to_numeric(part[col], errors="coerce")
            row[f"mean_share_{name}"] = float(vals.mean()) if vals.notna().any() else math.nan
            row[f"n_{name}"] = int(vals.notna().sum())
        hits = part["hit_mass"].astype("boolean")
        defined = hits.dropna()
        row["pointing_accuracy"] = float(defined.mean()) if len(defined) else math.nan
        row["n_pointing"] = int(len(defined))
        return row

    if by is None:
        out = pd.DataFrame([one(df)], index=pd.Index(["all"], name="group"))
    else:
        groups = [(key, one(part)) for key, part in df.groupby(by, sort=True)]
        out = pd.DataFrame([g[1] for g in groups], index=pd.Index([g[0] for g in groups], name=by))
    return out
