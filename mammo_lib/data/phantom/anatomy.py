"""Phantom anatomy: power-law parenchymal texture, the breast, the mass (drawing its
shape, rendering it) and its placement in the breast with room for the confounders in the
mass-centred ROI window of Sec. 3.2 (:func:`roi_window`, from :mod:`mammo_lib.data.roi`)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Optional

import numpy as np
from scipy.ndimage import distance_transform_edt
from scipy.spatial import ConvexHull, QhullError
from scipy.special import expit

from mammo_lib.data.records import BENIGN, MALIGNANT
from mammo_lib.data.roi import crop_box, mask_bbox
from mammo_lib.data.phantom.config import PhantomConfig, SCALES


_PLACE_TRIES = 12
_ANGLES = np.linspace(0.0, 2.0 * np.pi, 1024, endpoint=False)


def power_law_texture(shape: tuple[int, int], beta: float, rng: np.random.Generator) -> np.ndarray:
    """Zero-mean, unit-variance random field with power spectrum ``1/f^beta`` (FFT filtering of
    white noise; amplitude ``f^(-beta/2)``, DC removed)."""
    noise = rng.standard_normal(shape)
    fy = np.fft.fftfreq(shape[0])[:, None]
    fx = np.fft.rfftfreq(shape[1])[None, :]
    f = np.hypot(fy, fx)
    f[0, 0] = np.inf
    field_ = np.fft.irfft2(np.fft.rfft2(noise) * f ** (-beta / 2.0), s=shape)
    field_ -= field_.mean()
    sd = field_.std()
    return field_ / sd if sd > 0 else field_


@dataclass
class MassSpec:
    """One mass: class, geometry (polar boundary ``R(theta)``), margin, contrast and spicules.

    Benign: ellipse with semi-axes ``axes`` turned by ``orientation``. Malignant:
    ``R(theta) = radius * max(1 + sum_k amp_k cos(k theta + phase_k), 0.45)``, k = 2, 3, ...
    ``spicules`` rows: ``(angle, length, half_width, relative_intensity)``.
    """

    label: int
    radius: float
    contrast: float
    margin_width: float
    shape: str
    margin: str
    axes: tuple[float, float] = (0.0, 0.0)
    orientation: float = 0.0
    harmonics: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))
    spicules: np.ndarray = field(default_factory=lambda: np.zeros((0, 4)))

    def boundary(self, theta: np.ndarray) -> np.ndarray:
        """Boundary radius ``R(theta)`` in pixels (theta = atan2(row offset, col offset))."""
        if self.label == BENIGN:
            a, b = self.axes
            t = theta - self.orientation
            return a * b / np.sqrt((b * np.cos(t)) ** 2 + (a * np.sin(t)) ** 2)
        k = np.arange(2, 2 + len(self.harmonics))[:, None]
        h = (self.harmonics[:, :1] * np.cos(k * theta[None, :] + self.harmonics[:, 1:2])).sum(0)
        return self.radius * np.maximum(1.0 + h, 0.45)

    def reach(self) -> float:
        """Largest distance from the centre that the mass signal (incl. spicules) reaches."""
        body = float(self.boundary(_ANGLES).max()) + 4.0 * self.margin_width
        if len(self.spicules):
            tips = self.boundary(self.spicules[:, 0]) + self.spicules[:, 1] + 3.0 * self.spicules[:, 2]
            body = max(body, float(tips.max()))
        return body + 2.0

    def scaled(self, factor: float) -> "MassSpec":
        """The same mass with every length multiplied by ``factor`` (used to fit a small breast)."""
        sp = self.spicules.copy()
        sp[:, 1] *= factor
        return replace(self, radius=self.radius * factor,
                       axes=(self.axes[0] * factor, self.axes[1] * factor), spicules=sp)


def _loguniform(rng: np.random.Generator, lo_hi: tuple[float, float]) -> float:
    lo, hi = lo_hi
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def draw_mass(label: int, config: PhantomConfig, rng: np.random.Generator) -> MassSpec:
    """Draw a benign (round/oval, circumscribed) or malignant (irregular, ill-defined or
    spiculated) mass from the overlapping size/contrast distributions of ``config``."""
    if label not in (BENIGN, MALIGNANT):
        raise ValueError(f"label must be 0 (benign) or 1 (malignant), got {label!r}")
    if label == BENIGN:
        r = _loguniform(rng, config.benign_radius_px)
        aspect = float(rng.uniform(*config.benign_aspect))
        return MassSpec(label=label, radius=r, contrast=float(rng.uniform(*config.benign_contrast)),
                        margin_width=float(rng.uniform(*config.benign_margin_px)),
                        shape="ROUND" if aspect < 1.2 else "OVAL", margin="CIRCUMSCRIBED",
                        axes=(r * math.sqrt(aspect), r / math.sqrt(aspect)),
                        orientation=float(rng.uniform(0.0, np.pi)))
    r = _loguniform(rng, config.malignant_radius_px)
    contrast = float(rng.uniform(*config.malignant_contrast))
    margin_width = float(rng.uniform(*config.malignant_margin_px))
    k = np.arange(2, 9)
    amps = config.malignant_irregularity * rng.standard_normal(k.size) / k ** 0.7
    harmonics = np.stack([amps, rng.uniform(0.0, 2.0 * np.pi, k.size)], axis=1)
    spiculated = bool(rng.random() < config.spiculated_prob)
    spicules = np.zeros((0, 4))
    if spiculated:
        n = int(rng.integers(config.spicule_count[0], config.spicule_count[1] + 1))
        angles = rng.uniform(0.0, 2.0 * np.pi) + np.sort(rng.uniform(0.0, 2.0 * np.pi, n))
        spicules = np.stack([np.mod(angles, 2.0 * np.pi),
                             r * rng.uniform(*config.spicule_length, n),
                             rng.uniform(*config.spicule_halfwidth_px, n),
                             rng.uniform(*config.spicule_intensity, n)], axis=1)
    return MassSpec(label=label, radius=r, contrast=contrast, margin_width=margin_width,
                    shape="IRREGULAR", margin="SPICULATED" if spiculated else "ILL_DEFINED",
                    axes=(r, r), harmonics=harmonics, spicules=spicules)


@dataclass
class MassLayer:
    """A rendered mass: additive ``signal``, exact ``mask`` and ``footprint`` (mask or visible
    signal, which confounders must avoid), all full image size; ``centre`` is ``(row, col)``."""

    spec: MassSpec
    centre: tuple[float, float]
    signal: np.ndarray
    mask: np.ndarray
    footprint: np.ndarray
    scale: float = 1.0


def render_mass(spec: MassSpec, centre: tuple[float, float], shape: tuple[int, int], *,
                spicules_in_mask: bool = True) -> MassLayer:
    """Render a mass at ``centre`` (row, col): body ``contrast * expit((R(theta) - r) / w) *
    dome`` with ``mask = r <= R(theta)``; spicules ``exp(-d^2 / 2 hw^2)`` along segments from
    ``0.7 R`` to ``R + length``, tapering to 40 %, core ``d <= hw`` (module docstring)."""
    cy, cx = centre
    signal = np.zeros(shape)
    body_mask = np.zeros(shape, bool)
    ext = spec.boundary(_ANGLES).max() + 6.0 * spec.margin_width + 2.0
    r0, r1 = max(int(cy - ext), 0), min(int(cy + ext) + 2, shape[0])
    c0, c1 = max(int(cx - ext), 0), min(int(cx + ext) + 2, shape[1])
    dy = np.arange(r0, r1)[:, None] - cy
    dx = np.arange(c0, c1)[None, :] - cx
    r = np.hypot(dy, dx)
    theta = np.mod(np.arctan2(dy, dx), 2.0 * np.pi)
    big_r = np.interp(theta, _ANGLES, spec.boundary(_ANGLES), period=2.0 * np.pi)
    dome = 0.85 + 0.15 * np.clip(1.0 - (r / big_r) ** 2, 0.0, 1.0)
    signal[r0:r1, c0:c1] = spec.contrast * expit((big_r - r) / spec.margin_width) * dome
    body_mask[r0:r1, c0:c1] = r <= big_r
    spicule_core = np.zeros(shape, bool)
    for angle, length, hw, rel in spec.spicules:
        u = np.array([np.sin(angle), np.cos(angle)])  # (row, col) direction of theta = angle
        rb = float(spec.boundary(np.array([angle]))[0])
        p0 = np.array([cy, cx]) + 0.7 * rb * u
        seg = 0.3 * rb + length
        p1 = p0 + seg * u
        pad = 3.0 * hw + 1.0
        a0 = max(int(min(p0[0], p1[0]) - pad), 0)
        a1 = min(int(max(p0[0], p1[0]) + pad) + 2, shape[0])
        b0 = max(int(min(p0[1], p1[1]) - pad), 0)
        b1 = min(int(max(p0[1], p1[1]) + pad) + 2, shape[1])
        if a0 >= a1 or b0 >= b1:
            continue
        vy = np.arange(a0, a1)[:, None] - p0[0]
        vx = np.arange(b0, b1)[None, :] - p0[1]
        t = np.clip((vy * u[0] + vx * u[1]) / seg, 0.0, 1.0)
        d = np.hypot(vy - t * seg * u[0], vx - t * seg * u[1])
        s = rel * spec.contrast * (1.0 - 0.6 * t) * np.exp(-0.5 * (d / hw) ** 2)
        np.maximum(signal[a0:a1, b0:b1], s, out=signal[a0:a1, b0:b1])
        spicule_core[a0:a1, b0:b1] |= d <= hw
    mask = body_mask | spicule_core if spicules_in_mask else body_mask
    footprint = body_mask | spicule_core | (signal > 0.1 * spec.contrast)
    return MassLayer(spec=spec, centre=(float(cy), float(cx)), signal=signal, mask=mask,
                     footprint=footprint)


def roi_window(mask: np.ndarray, roi_size: int) -> tuple[int, int, int, int]:
    """Mass-centred ROI window ``(top, left, height, width)`` of Sec. 3.2: the
    ``max(roi_size, h) x max(roi_size, w)`` crop of :func:`mammo_lib.data.roi.crop_box` around the
    mask's box (:func:`mammo_lib.data.roi.mask_bbox`). May extend past the image."""
    box = crop_box(mask_bbox(mask), "mass_centred", min_context=roi_size)
    return box.y0, box.x0, box.h, box.w


@dataclass
class Breast:
    """Breast region: ``mask``, ``dist`` (distance to the skin line / image border, pixels) and
    ``thickness`` (relative compressed thickness, 1 at the chest wall centre, 0.6 at the skin)."""

    mask: np.ndarray
    dist: np.ndarray
    thickness: np.ndarray
    side: str


def draw_breast(shape: tuple[int, int], side: str, rng: np.random.Generator) -> Breast:
    """Half-ellipse breast against the chest wall (column 0 for LEFT, last column for RIGHT:
    an arbitrary convention), semi-axes 40-47 % of the rows and 78-92 % of the columns."""
    if side not in ("LEFT", "RIGHT"):
        raise ValueError(f"side must be 'LEFT' or 'RIGHT', got {side!r}")
    rows, cols = shape
    b = rows * rng.uniform(0.40, 0.47)
    a = cols * rng.uniform(0.78, 0.92)
    cy = rows / 2.0 + rows * rng.uniform(-0.03, 0.03)
    cx = -0.5 if side == "LEFT" else cols - 0.5
    rho2 = ((np.arange(rows)[:, None] - cy) / b) ** 2 + ((np.arange(cols)[None, :] - cx) / a) ** 2
    mask = rho2 < 1.0
    # Zero padding makes the image border count as outside (objects stay in the image).
    dist = distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    thickness = 0.6 + 0.4 * np.sqrt(np.clip(1.0 - rho2, 0.0, 1.0))
    return Breast(mask=mask, dist=dist, thickness=thickness, side=side)


@dataclass
class SimulatedCase:
    """Anatomy of one case, shared by all its renderings: ``base`` image (tissue + mass + noise,
    float64, 0 outside the breast, not clipped), the breast, the mass and its ROI window."""

    label: int
    base: np.ndarray
    breast: Breast
    mass: MassLayer
    window: tuple[int, int, int, int]


def calcification_room(config: PhantomConfig) -> float:
    """Footprint radius of the largest calcification cluster at the smallest scale tried."""
    return SCALES[-1] * config.calcification_cluster_radius_px[1] + config.calcification_dot_radius_px[1] + 1.0


def _fits_confounders(config: PhantomConfig, breast: Breast, mass: MassLayer,
                      window: tuple[int, int, int, int]) -> bool:
    """Whether the largest dense patch and then the largest calcification cluster, both at the
    smallest scale, find places in the window: then :func:`add_confounders` cannot fail."""
    dense = SCALES[-1] * config.dense_radius_px[1]
    room = calcification_room(config)
    return valid_centres(dense, window, mass.footprint, breast.dist, config, room_for=room).size > 0


def place_mass(spec: MassSpec, breast: Breast, config: PhantomConfig, rng: np.random.Generator, *,
                avoid: Optional[np.ndarray] = None, need_confounders: bool = True) -> MassLayer:
    """Put the mass fully inside the breast (shrinking it through :data:`SCALES` while it does
    not fit), away from ``avoid``, with room for both confounders in its ROI window."""
    dist = breast.dist
    if avoid is not None:
        dist = np.minimum(dist, distance_transform_edt(~avoid))
    for scale in SCALES:
        s = spec if scale == 1.0 else spec.scaled(scale)
        ok = np.flatnonzero(dist.ravel() >= s.reach() + 2.0)
        for _ in range(_PLACE_TRIES if ok.size else 0):
            idx = int(ok[rng.integers(ok.size)])
            centre = (idx // dist.shape[1] + rng.uniform(-0.5, 0.5),
                      idx % dist.shape[1] + rng.uniform(-0.5, 0.5))
            layer = render_mass(s, centre, dist.shape, spicules_in_mask=config.spicules_in_mask)
            layer.scale = scale
            if not need_confounders or _fits_confounders(
                    config, breast, layer, roi_window(layer.mask, config.roi_size)):
                return layer
    raise ValueError(f"a mass of radius {spec.radius:.0f} px does not fit a breast in an image of "
                     f"{config.image_shape}: reduce the *_radius_px ranges or enlarge image_shape")


def simulate_anatomy(config: PhantomConfig, label: int, rng: np.random.Generator, *,
                     mass_rng: Optional[np.random.Generator] = None, side: str = "LEFT",
                     need_confounders: bool = True) -> SimulatedCase:
    """Breast, power-law texture, one mass and noise (docs/DECISIONS.md). The mass is drawn from
    ``mass_rng`` (default ``rng``): two views of one mass share it."""
    shape = config.image_shape
    breast = draw_breast(shape, side, rng)
    spec = draw_mass(label, config, rng if mass_rng is None else mass_rng)
    texture = power_law_texture(shape, config.texture_beta, rng)
    tissue = np.maximum((config.tissue_level + config.texture_amplitude * texture) * breast.thickness, 0.02)
    mass = place_mass(spec, breast, config, rng, need_confounders=need_confounders)
    noise = config.noise_sigma * rng.standard_normal(shape)
    base = (tissue + mass.signal + noise) * breast.mask
    return SimulatedCase(label=label, base=base, breast=breast, mass=mass,
                         window=roi_window(mass.mask, config.roi_size))


def _valid_centres(ext: float, window: tuple[int, int, int, int], forbid: np.ndarray,
                   breast_dist: np.ndarray, config: PhantomConfig) -> np.ndarray:
    """``(n, 2)`` pixels (row, col) of the window where a disk of radius ``ext`` lies inside the
    window (``window_margin_px`` in), inside the breast and ``confounder_gap_px`` from ``forbid``."""
    top, left, h, w = window
    rows, cols = forbid.shape
    t0, t1 = max(top, 0), min(top + h, rows)
    l0, l1 = max(left, 0), min(left + w, cols)
    if t0 >= t1 or l0 >= l1:
        return np.zeros((0, 2), int)
    pad = int(math.ceil(ext + config.confounder_gap_px)) + 2
    p0, p1 = max(t0 - pad, 0), min(t1 + pad, rows)
    q0, q1 = max(l0 - pad, 0), min(l1 + pad, cols)
    d_forbid = distance_transform_edt(~forbid[p0:p1, q0:q1])[t0 - p0:t1 - p0, l0 - q0:l1 - q0]
    ii = np.arange(t0, t1)[:, None]
    jj = np.arange(l0, l1)[None, :]
    m = ext + config.window_margin_px
    inside = (ii - m >= top) & (ii + m <= top + h - 1) & (jj - m >= left) & (jj + m <= left + w - 1)
    valid = inside & (d_forbid >= ext + config.confounder_gap_px) & (breast_dist[t0:t1, l0:l1] >= ext + 2.0)
    return np.argwhere(valid) + np.array([t0, l0])


def _max_distance(cand: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Distance from each candidate to the farthest of ``points`` (attained on their hull)."""
    if len(points) > 16:
        try:
            points = points[ConvexHull(points).vertices]
        except QhullError:  # collinear: the extremes along each axis suffice
            points = points[[points[:, 0].argmin(), points[:, 0].argmax(),
                             points[:, 1].argmin(), points[:, 1].argmax()]]
    d2 = ((cand[:, None, :].astype(float) - points[None, :, :]) ** 2).sum(-1)
    return np.sqrt(d2.max(axis=1))


def valid_centres(ext: float, window: tuple[int, int, int, int], forbid: np.ndarray,
                breast_dist: np.ndarray, config: PhantomConfig, *,
                room_for: Optional[float] = None) -> np.ndarray:
    """Valid centres for a disk of radius ``ext``; with ``room_for``, only those that leave a
    valid place for a second disk of that radius (a valid centre at least ``ext + gap +
    room_for + 1`` away)."""
    cand = _valid_centres(ext, window, forbid, breast_dist, config)
    if room_for is None or cand.size == 0:
        return cand
    second = _valid_centres(room_for, window, forbid, breast_dist, config)
    if second.size == 0:
        return second
    keep = _max_distance(cand, second) >= ext + config.confounder_gap_px + room_for + 1.0
    return cand[keep]
