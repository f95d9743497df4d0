"""Synthetic mammography phantom: the package's default data set (docs/DECISIONS.md).

No real mammograms can be shipped, so the default run uses full-field phantom images with a
known ground truth:

- a breast (half-ellipse against the chest wall, black background) filled with a power-law
  parenchymal texture (power spectrum ``1/f^beta``, beta about 3, as measured on mammograms);
- one mass per image: *benign* = round/oval, circumscribed (sharp sigmoid margin), *malignant* =
  irregular outline (low-frequency radius noise), ill-defined margin and, mostly, spicules.
  Sizes and contrasts come from overlapping distributions, so shape and margin are the signal;
- confounders inside the mass-centred ROI window (Sec. 3.2) but outside the mass:
  micro-calcification clusters and dense-tissue patches, drawn with ``P(confounder | label,
  split)`` so that their correlation with the label reverses between training and test data.
  This is the paper's failure mode (Sec. 5, Fig. 7: the fine-tuned model looks at calcium or
  dense tissue instead of the mass), here with a pixel-exact confounder label map.

Two sets (:func:`generate_phantom`): ``bcdr_like`` (274 = 144 benign + 130 malignant, every case
rendered twice: ``train`` and ``shifted`` confounders) and ``ddsm_like`` (official train/test
split, patients with one or two cases). :func:`write_cbis_tree` writes a tiny CBIS-DDSM style
DICOM tree with the real CSV format, for the loader's tests.

Decisions (all :class:`PhantomConfig` fields):

- **mask** = the mass body ``{r <= R(theta)}`` (the 50 % level of the sigmoid margin) plus, with
  ``spicules_in_mask=True`` (default), the core of every spicule (distance to its axis <= its
  half-width). Real outlines (CBIS-DDSM, BCDR) trace the spiculated border only roughly; here
  the default keeps the mask equal to the region the mass was drawn in.
- **ROI window** for confounders = the Sec. 3.2 mass-centred crop of the mask's box:
  ``max(roi_size, h) x max(roi_size, w)``, start ``y0 + (h - H) // 2`` (as ``mammo_lib.roi``).
  Every confounder lies fully inside it (``window_margin_px`` in from its border), inside the
  breast and at least ``confounder_gap_px`` away from the visible mass.
- **renderings**: ``train`` draws confounders with ``*_prob["train"]``, ``shifted`` with
  ``*_prob["test"]``; mass, tissue and noise are identical across renderings of one case.
- **randomness**: every case draws from its own generators ``default_rng([seed, kind, split,
  label, k, stream])`` (NumPy SeedSequence), so a case does not depend on how many other cases
  there are; a mass too large for its breast is shrunk (factor ``0.85`` per step) until it fits.
"""
from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Literal, Mapping, Optional, Sequence

import numpy as np
import pandas as pd
from scipy.ndimage import distance_transform_edt
from scipy.spatial import ConvexHull, QhullError
from scipy.special import expit

from .progress import tqdm
from .records import BENIGN, LABEL_NAMES, MALIGNANT

Kind = Literal["bcdr_like", "ddsm_like"]
#: ``"train"``, ``"shifted"`` (the ``"test"`` probabilities) or the name of an extra rendering:
#: any further key of ``calcification_prob`` (e.g. ``"reversed"``), written as ``cases_<name>.csv``.
Rendering = str

#: Version of the rendering code; part of the generation hash (bump when the pixels change).
PHANTOM_VERSION = 2
#: Values of the confounder label map written next to every image.
CONFOUNDER_NONE, CONFOUNDER_CALCIFICATION, CONFOUNDER_DENSE = 0, 1, 2
CONFOUNDER_TYPES = {CONFOUNDER_CALCIFICATION: "calcification", CONFOUNDER_DENSE: "dense_tissue"}
#: Rendering -> key of the confounder probability tables.
RENDERING_PROBS: dict[str, str] = {"train": "train", "shifted": "test"}
#: Columns of ``cases.csv`` / ``cases_shifted.csv`` (generic loader format + phantom columns).
CASE_COLUMNS = ("case_id", "image_path", "mask_path", "label", "patient_id", "split",
                "confounder_mask_path", "has_calcification", "has_dense_tissue", "mass_shape",
                "mass_margin", "mass_radius_px", "mass_contrast", "rendering", "side", "view",
                "mass_row", "mass_col", "mass_area_px", "n_spicules", "mass_scale")
#: Header of the CBIS-DDSM mass description CSVs (Sec. 3.1).
CBIS_COLUMNS = ("patient_id", "breast_density", "left or right breast", "image view",
                "abnormality id", "abnormality type", "mass shape", "mass margins", "assessment",
                "pathology", "subtlety", "image file path", "cropped image file path",
                "ROI mask file path")
MARKER = "phantom.json"
CBIS_MARKER = "phantom_cbis_tree.json"

_KIND_CODES = {"bcdr_like": 1, "ddsm_like": 2, "cbis_tree": 3}
_SPLIT_CODES = {"": 0, "train": 1, "test": 2}
_STREAM_ANATOMY, _STREAM_MASS, _STREAM_PATIENT = 0, 1, 2
_STREAM_CONFOUNDERS = {"train": 10, "shifted": 11}


def _confounder_stream(rendering: str) -> int:
    """Generator stream of a rendering's confounders: 10 / 11 for train / shifted, else a stable
    number from the name (so adding a rendering never changes the others)."""
    if rendering in _STREAM_CONFOUNDERS:
        return _STREAM_CONFOUNDERS[rendering]
    return 100 + int(hashlib.sha256(rendering.encode()).hexdigest()[:6], 16)
#: Shrink factors tried, in order, for a mass that does not fit or a confounder without room.
_SCALES = tuple(0.85 ** k for k in range(8))  # 1 ... 0.32
_PLACE_TRIES = 12
_ANGLES = np.linspace(0.0, 2.0 * np.pi, 1024, endpoint=False)


def _default_calcification_prob() -> dict[str, dict[int, float]]:
    return {"train": {BENIGN: 0.2, MALIGNANT: 0.8}, "test": {BENIGN: 0.8, MALIGNANT: 0.2}}


def _default_dense_prob() -> dict[str, dict[int, float]]:
    return {"train": {BENIGN: 0.6, MALIGNANT: 0.3}, "test": {BENIGN: 0.3, MALIGNANT: 0.6}}


_RANGE_FIELDS = ("benign_radius_px", "malignant_radius_px", "benign_contrast", "malignant_contrast",
                 "benign_aspect", "benign_margin_px", "malignant_margin_px", "spicule_length",
                 "spicule_halfwidth_px", "spicule_intensity", "calcification_cluster_radius_px",
                 "calcification_dot_radius_px", "calcification_intensity", "dense_radius_px",
                 "dense_intensity")
_INT_RANGE_FIELDS = ("spicule_count", "calcification_dots")
_COUNT_FIELDS = ("n_benign", "n_malignant", "n_train", "n_test")
_FRACTION_FIELDS = ("ddsm_malignant_fraction", "paired_patient_prob", "two_view_fraction",
                    "spiculated_prob")


@dataclass(frozen=True)
class PhantomConfig:
    """Every knob of the phantom (docs/DECISIONS.md); ranges are ``(low, high)``, drawn uniformly
    (radii log-uniformly). Pixel sizes refer to ``image_shape``; the defaults fit 640 x 512."""

    #: Master seed of every per-case generator (non-negative int).
    seed: int = 2025
    #: Full-field image size ``(rows, cols)``.
    image_shape: tuple[int, int] = (640, 512)
    #: ``bcdr_like`` class counts (BCDR D01 + F01 draw: 144 benign, 130 malignant; Sec. 3.1).
    n_benign: int = 144
    n_malignant: int = 130
    #: ``ddsm_like`` cases (abnormalities) in the official train and test parts.
    n_train: int = 400
    n_test: int = 120
    #: Malignant share of each ``ddsm_like`` part (CBIS-DDSM mass train: 637 / 1318).
    ddsm_malignant_fraction: float = 0.48
    #: Probability that a patient has two cases (then grouped under one ``patient_id``).
    paired_patient_prob: float = 0.25
    #: Share of two-case patients whose cases are two views (CC, MLO) of one mass; else two masses.
    two_view_fraction: float = 0.5
    #: Minimum side of the mass-centred ROI (Sec. 3.2, paper: 224); confounders go inside.
    roi_size: int = 224
    #: Equivalent radius ``sqrt(a * b)`` of benign masses, pixels (log-uniform).
    benign_radius_px: tuple[float, float] = (15.0, 95.0)
    #: Mean radius ``R0`` of malignant masses, pixels (log-uniform); overlaps the benign range.
    malignant_radius_px: tuple[float, float] = (18.0, 100.0)
    #: Peak intensity added by a benign / malignant mass (ranges overlap on purpose).
    benign_contrast: tuple[float, float] = (0.08, 0.26)
    malignant_contrast: tuple[float, float] = (0.10, 0.28)
    #: Axis ratio ``a / b`` of benign ovals (``< 1.2`` is called ROUND, else OVAL).
    benign_aspect: tuple[float, float] = (1.0, 1.6)
    #: Width ``w`` of the sigmoid margin ``expit((R - r) / w)``: sharp (benign), ill-defined (malignant).
    benign_margin_px: tuple[float, float] = (0.5, 1.0)
    malignant_margin_px: tuple[float, float] = (1.5, 3.0)
    #: Scale of the malignant radius noise: harmonic k (2..8) has amplitude ~ N(0, s / k^0.7).
    malignant_irregularity: float = 0.16
    #: Probability that a malignant mass is spiculated (margin SPICULATED, else ILL_DEFINED).
    spiculated_prob: float = 0.8
    #: Number of spicules of a spiculated mass (inclusive range).
    spicule_count: tuple[int, int] = (6, 16)
    #: Spicule length beyond the body, as a fraction of ``R0``.
    spicule_length: tuple[float, float] = (0.25, 0.55)
    #: Spicule half-width, pixels (the mask holds the core within this distance of the axis).
    spicule_halfwidth_px: tuple[float, float] = (0.8, 1.4)
    #: Spicule peak intensity as a fraction of the mass contrast.
    spicule_intensity: tuple[float, float] = (0.5, 0.9)
    #: Include the spicule cores in the mask (Decision, module docstring).
    spicules_in_mask: bool = True
    #: Mean tissue intensity inside the breast.
    tissue_level: float = 0.30
    #: Exponent of the parenchymal power spectrum ``P(f) ~ 1/f^beta``.
    texture_beta: float = 3.0
    #: Standard deviation of the texture (intensity units).
    texture_amplitude: float = 0.07
    #: Standard deviation of the white noise added inside the breast.
    noise_sigma: float = 0.008
    #: ``P(calcification cluster | label, split)``: ``{"train": {0: p, 1: p}, "test": {...}}``;
    #: any further key (e.g. ``"reversed"``) is an extra rendering of every ``bcdr_like`` case.
    calcification_prob: dict[str, dict[int, float]] = field(default_factory=_default_calcification_prob)
    #: ``P(dense-tissue patch | label, split)``, same layout (an extra rendering missing here uses ``"test"``).
    dense_prob: dict[str, dict[int, float]] = field(default_factory=_default_dense_prob)
    #: Dots per calcification cluster (inclusive range), their radius and the cluster radius, pixels.
    calcification_dots: tuple[int, int] = (5, 15)
    calcification_dot_radius_px: tuple[float, float] = (1.0, 3.0)
    calcification_cluster_radius_px: tuple[float, float] = (10.0, 25.0)
    #: Intensity added by a calcification dot.
    calcification_intensity: tuple[float, float] = (0.25, 0.45)
    #: Radius (semi-major axis) of a dense-tissue patch, pixels (40-90 px across), and its peak.
    dense_radius_px: tuple[float, float] = (20.0, 45.0)
    dense_intensity: tuple[float, float] = (0.08, 0.18)
    #: Minimum distance between a confounder and the visible mass, pixels.
    confounder_gap_px: float = 4.0
    #: Confounders stay this far inside the ROI window (tolerates off-by-one crop conventions).
    window_margin_px: int = 2

    def __post_init__(self) -> None:
        if not isinstance(self.seed, (int, np.integer)) or isinstance(self.seed, bool):
            raise TypeError(f"seed must be an int, got {self.seed!r}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        object.__setattr__(self, "seed", int(self.seed))
        shape = tuple(self.image_shape)
        if len(shape) != 2 or not all(isinstance(s, (int, np.integer)) and not isinstance(s, bool)
                                      for s in shape):
            raise TypeError(f"image_shape must be two ints (rows, cols), got {self.image_shape!r}")
        if min(shape) < 64:
            raise ValueError(f"image_shape must be at least 64 x 64, got {shape}")
        object.__setattr__(self, "image_shape", (int(shape[0]), int(shape[1])))
        for name in _COUNT_FIELDS:
            v = getattr(self, name)
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool):
                raise TypeError(f"{name} must be an int, got {v!r}")
            if v < 0:
                raise ValueError(f"{name} must be >= 0, got {v}")
            object.__setattr__(self, name, int(v))
        for name in _FRACTION_FIELDS:
            v = float(getattr(self, name))
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1], got {v}")
            object.__setattr__(self, name, v)
        for name in _RANGE_FIELDS + _INT_RANGE_FIELDS:
            object.__setattr__(self, name, _check_range(name, getattr(self, name),
                                                        integer=name in _INT_RANGE_FIELDS))
        for name in ("tissue_level", "texture_amplitude", "noise_sigma", "malignant_irregularity",
                     "confounder_gap_px", "texture_beta"):
            v = float(getattr(self, name))
            if not math.isfinite(v) or v < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {getattr(self, name)!r}")
            object.__setattr__(self, name, v)
        if not isinstance(self.roi_size, (int, np.integer)) or self.roi_size < 8:
            raise ValueError(f"roi_size must be an int >= 8, got {self.roi_size!r}")
        if not isinstance(self.window_margin_px, (int, np.integer)) or self.window_margin_px < 0:
            raise ValueError(f"window_margin_px must be an int >= 0, got {self.window_margin_px!r}")
        for name in ("calcification_prob", "dense_prob"):
            object.__setattr__(self, name, _check_probs(name, getattr(self, name)))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (probability keys as strings); hashed to recognise a generation."""
        d = asdict(self)
        for name in ("calcification_prob", "dense_prob"):
            d[name] = {s: {str(k): v for k, v in p.items()} for s, p in d[name].items()}
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


def _check_range(name: str, value: Any, *, integer: bool) -> tuple:
    try:
        lo, hi = value
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a pair (low, high), got {value!r}") from None
    if integer:
        if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in (lo, hi)):
            raise TypeError(f"{name} must be a pair of ints, got {value!r}")
        lo, hi = int(lo), int(hi)
    else:
        lo, hi = float(lo), float(hi)
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo < 0 or hi < lo:
        raise ValueError(f"{name} must satisfy 0 <= low <= high, got {value!r}")
    if name.endswith("_radius_px") and lo <= 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")
    return (lo, hi)


def _check_probs(name: str, value: Any) -> dict[str, dict[int, float]]:
    if not isinstance(value, Mapping) or not {"train", "test"} <= set(value):
        raise ValueError(f"{name} must map 'train', 'test' (and any extra rendering) to {{0: p, 1: p}}, "
                         f"got {value!r}")
    bad = [k for k in value if k in ("shifted",) or not isinstance(k, str) or not k.isidentifier()]
    if bad:
        raise ValueError(f"{name}: rendering names must be identifiers other than 'shifted', got {bad}")
    out: dict[str, dict[int, float]] = {}
    for split, table in value.items():
        if not isinstance(table, Mapping) or set(table) != {BENIGN, MALIGNANT}:
            raise ValueError(f"{name}[{split!r}] must map labels 0 and 1 to probabilities, got {table!r}")
        out[split] = {}
        for label, p in table.items():
            p = float(p)
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name}[{split!r}][{label}] must lie in [0, 1], got {p}")
            out[split][int(label)] = p
    return out


#: Config fields a kind does not use (left out of its hash: changing them keeps the folder).
_UNUSED_FIELDS: dict[str, tuple[str, ...]] = {
    "bcdr_like": ("n_train", "n_test", "ddsm_malignant_fraction"),
    "ddsm_like": ("n_benign", "n_malignant"),
}


def config_hash(config: PhantomConfig, kind: str) -> str:
    """SHA-256 of the config fields ``kind`` uses, the kind and :data:`PHANTOM_VERSION`
    (identifies a generation)."""
    used = {k: v for k, v in config.to_dict().items() if k not in _UNUSED_FIELDS.get(kind, ())}
    payload = json.dumps({"kind": kind, "version": PHANTOM_VERSION, "config": used}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


# --------------------------------------------------------------------------------------------
# Anatomy: breast, texture, mass
# --------------------------------------------------------------------------------------------

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
    """Mass-centred ROI window ``(top, left, height, width)`` of Sec. 3.2: side
    ``max(roi_size, h) x max(roi_size, w)`` around the mask's box, start ``y0 + (h - H) // 2``
    (the rounding of ``mammo_lib.roi``). May extend past the image."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        raise ValueError("empty mask: no ROI window")
    h, w = int(rows[-1] - rows[0] + 1), int(cols[-1] - cols[0] + 1)
    big_h, big_w = max(roi_size, h), max(roi_size, w)
    return int(rows[0]) + (h - big_h) // 2, int(cols[0]) + (w - big_w) // 2, big_h, big_w


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


def _calcification_room(config: PhantomConfig) -> float:
    """Footprint radius of the largest calcification cluster at the smallest scale tried."""
    return _SCALES[-1] * config.calcification_cluster_radius_px[1] + config.calcification_dot_radius_px[1] + 1.0


def _fits_confounders(config: PhantomConfig, breast: Breast, mass: MassLayer,
                      window: tuple[int, int, int, int]) -> bool:
    """Whether the largest dense patch and then the largest calcification cluster, both at the
    smallest scale, find places in the window: then :func:`add_confounders` cannot fail."""
    dense = _SCALES[-1] * config.dense_radius_px[1]
    room = _calcification_room(config)
    return _candidates(dense, window, mass.footprint, breast.dist, config, room_for=room).size > 0


def _place_mass(spec: MassSpec, breast: Breast, config: PhantomConfig, rng: np.random.Generator, *,
                avoid: Optional[np.ndarray] = None, need_confounders: bool = True) -> MassLayer:
    """Put the mass fully inside the breast (shrinking it through :data:`_SCALES` while it does
    not fit), away from ``avoid``, with room for both confounders in its ROI window."""
    dist = breast.dist
    if avoid is not None:
        dist = np.minimum(dist, distance_transform_edt(~avoid))
    for scale in _SCALES:
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
    mass = _place_mass(spec, breast, config, rng, need_confounders=need_confounders)
    noise = config.noise_sigma * rng.standard_normal(shape)
    base = (tissue + mass.signal + noise) * breast.mask
    return SimulatedCase(label=label, base=base, breast=breast, mass=mass,
                         window=roi_window(mass.mask, config.roi_size))


# --------------------------------------------------------------------------------------------
# Confounders
# --------------------------------------------------------------------------------------------

@dataclass
class Confounder:
    """One confounder: ``type`` ("calcification" | "dense_tissue"), ``centre`` (row, col) and
    ``radius`` (every pixel it touches lies within it); ``detail`` holds dots / axes."""

    type: str
    centre: tuple[float, float]
    radius: float
    detail: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"type": self.type, "centre": [round(self.centre[0], 3), round(self.centre[1], 3)],
                "radius": round(self.radius, 3), **self.detail}


@dataclass
class Rendered:
    """One rendering: ``image`` float32 in [0, 1], ``confounder_map`` uint8 (0 none, 1
    calcification, 2 dense tissue) and the confounders drawn."""

    image: np.ndarray
    confounder_map: np.ndarray
    confounders: list[Confounder]
    rendering: str

    @property
    def has_calcification(self) -> bool:
        return any(c.type == "calcification" for c in self.confounders)

    @property
    def has_dense_tissue(self) -> bool:
        return any(c.type == "dense_tissue" for c in self.confounders)


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


def _candidates(ext: float, window: tuple[int, int, int, int], forbid: np.ndarray,
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


def _pick_centre(ext_of_scale: Callable[[float], float], case: SimulatedCase, forbid: np.ndarray,
                 config: PhantomConfig, rng: np.random.Generator, *,
                 room_for: Optional[float] = None) -> tuple[float, tuple[int, int]]:
    """Uniform random valid centre, shrinking the confounder through :data:`_SCALES` until one
    exists. Returns ``(scale, (row, col))``."""
    for scale in _SCALES:
        cand = _candidates(ext_of_scale(scale), case.window, forbid, case.breast.dist, config,
                           room_for=room_for)
        if len(cand):
            row, col = cand[rng.integers(len(cand))]
            return scale, (int(row), int(col))
    raise RuntimeError("no room for a confounder in the ROI window; reduce the *_radius_px ranges "
                       "or the confounder sizes")


def _render_dense(config: PhantomConfig, case: SimulatedCase, forbid: np.ndarray,
                  rng: np.random.Generator, signal: np.ndarray, labels: np.ndarray, *,
                  room_for: Optional[float] = None) -> Confounder:
    """Dense-tissue patch: ellipse ``(r, q r)``, profile ``amp * (1 - rho^2)^2`` (compact);
    ``room_for`` keeps a place for a calcification cluster of that footprint radius."""
    r = float(rng.uniform(*config.dense_radius_px))
    q = float(rng.uniform(0.6, 1.0))
    phi = float(rng.uniform(0.0, np.pi))
    amp = float(rng.uniform(*config.dense_intensity))
    scale, (cy, cx) = _pick_centre(lambda s: r * s, case, forbid, config, rng, room_for=room_for)
    r *= scale
    a0, a1 = max(cy - int(r) - 1, 0), min(cy + int(r) + 2, signal.shape[0])
    b0, b1 = max(cx - int(r) - 1, 0), min(cx + int(r) + 2, signal.shape[1])
    dy = np.arange(a0, a1)[:, None] - cy
    dx = np.arange(b0, b1)[None, :] - cx
    u = dx * np.cos(phi) + dy * np.sin(phi)
    v = -dx * np.sin(phi) + dy * np.cos(phi)
    rho2 = (u / r) ** 2 + (v / (q * r)) ** 2
    inside = rho2 < 1.0
    signal[a0:a1, b0:b1] += amp * np.where(inside, (1.0 - rho2) ** 2, 0.0)
    labels[a0:a1, b0:b1][inside] = CONFOUNDER_DENSE
    forbid[a0:a1, b0:b1] |= inside
    return Confounder("dense_tissue", (float(cy), float(cx)), r,
                      {"axes": [round(r, 3), round(q * r, 3)], "orientation": round(phi, 4),
                       "intensity": round(amp, 4)})


def _render_calcifications(config: PhantomConfig, case: SimulatedCase, forbid: np.ndarray,
                           rng: np.random.Generator, signal: np.ndarray, labels: np.ndarray) -> Confounder:
    """Cluster of bright dots (anti-aliased disks) uniformly spread in a disk of radius ``rc``."""
    rc = float(rng.uniform(*config.calcification_cluster_radius_px))
    n = int(rng.integers(config.calcification_dots[0], config.calcification_dots[1] + 1))
    rad = rng.uniform(*config.calcification_dot_radius_px, n)
    amp = rng.uniform(*config.calcification_intensity, n)
    pr = np.sqrt(rng.uniform(0.0, 1.0, n))
    pa = rng.uniform(0.0, 2.0 * np.pi, n)

    def ext(s: float) -> float:
        return rc * s + float(rad.max()) + 1.0

    scale, (cy, cx) = _pick_centre(ext, case, forbid, config, rng)
    rc *= scale
    dots = np.stack([cy + rc * pr * np.sin(pa), cx + rc * pr * np.cos(pa)], axis=1)
    e = int(math.ceil(ext(scale)))
    a0, a1 = max(cy - e, 0), min(cy + e + 1, signal.shape[0])
    b0, b1 = max(cx - e, 0), min(cx + e + 1, signal.shape[1])
    d = np.hypot(np.arange(a0, a1)[None, :, None] - dots[:, 0, None, None],
                 np.arange(b0, b1)[None, None, :] - dots[:, 1, None, None])  # (n, H, W)
    s = (amp[:, None, None] * np.clip(rad[:, None, None] + 0.5 - d, 0.0, 1.0)).max(axis=0)
    signal[a0:a1, b0:b1] += s
    inside = (d <= rad[:, None, None]).any(axis=0)
    labels[a0:a1, b0:b1][inside] = CONFOUNDER_CALCIFICATION
    forbid[a0:a1, b0:b1] |= s > 0
    return Confounder("calcification", (float(cy), float(cx)), ext(scale),
                      {"cluster_radius": round(rc, 3),
                       "dots": [[round(float(y), 3), round(float(x), 3), round(float(q), 3)]
                                for (y, x), q in zip(dots, rad)]})


def extra_renderings(config: PhantomConfig) -> tuple[str, ...]:
    """Names of the extra renderings (keys of ``calcification_prob`` besides train / test)."""
    return tuple(k for k in config.calcification_prob if k not in ("train", "test"))


def add_confounders(case: SimulatedCase, config: PhantomConfig, rendering: Rendering,
                    rng: np.random.Generator) -> Rendered:
    """Draw ``has_dense ~ Bernoulli(dense_prob[split][label])`` and ``has_calcification ~
    Bernoulli(calcification_prob[split][label])`` (split = ``RENDERING_PROBS[rendering]``),
    place them in the ROI window outside the mass, and return the clipped image."""
    known = sorted(set(RENDERING_PROBS) | set(extra_renderings(config)))
    if rendering not in known:
        raise ValueError(f"rendering must be one of {known}, got {rendering!r}")
    split = RENDERING_PROBS.get(rendering, rendering)
    dense = config.dense_prob.get(split, config.dense_prob["test"])
    has_dense = bool(rng.random() < dense[case.label])
    has_calc = bool(rng.random() < config.calcification_prob[split][case.label])
    signal = np.zeros(case.base.shape)
    labels = np.zeros(case.base.shape, np.uint8)
    forbid = case.mass.footprint.copy()
    found: list[Confounder] = []
    if has_dense:
        room = _calcification_room(config) if has_calc else None
        found.append(_render_dense(config, case, forbid, rng, signal, labels, room_for=room))
    if has_calc:
        found.append(_render_calcifications(config, case, forbid, rng, signal, labels))
    image = np.clip(case.base + signal * case.breast.mask, 0.0, 1.0).astype(np.float32)
    return Rendered(image=image, confounder_map=labels, confounders=found, rendering=rendering)


# --------------------------------------------------------------------------------------------
# Case plans and writing
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class CasePlan:
    """Who a case is: ids, label, split, side/view and its generator keys."""

    case_id: str
    patient_id: str
    label: int
    split: str
    side: str
    view: str
    key: tuple[int, ...]
    mass_key: tuple[int, ...]

    def rng(self, seed: int, stream: int, *, mass: bool = False) -> np.random.Generator:
        return np.random.default_rng([seed, *(self.mass_key if mass else self.key), stream])


def plan_cases(kind: Kind, config: PhantomConfig) -> list[CasePlan]:
    """Case list of a phantom set. Patients: case k of a (split, label) group starts a patient;
    with ``paired_patient_prob`` the patient also owns case k + 1 (two views of the same mass
    with ``two_view_fraction``, else a second mass in the other breast). Depends only on the
    seed and k, never on how many cases follow."""
    if kind == "bcdr_like":
        groups = [("", BENIGN, config.n_benign), ("", MALIGNANT, config.n_malignant)]
    elif kind == "ddsm_like":
        n_mal = [round(config.ddsm_malignant_fraction * n) for n in (config.n_train, config.n_test)]
        groups = [("train", BENIGN, config.n_train - n_mal[0]), ("train", MALIGNANT, n_mal[0]),
                  ("test", BENIGN, config.n_test - n_mal[1]), ("test", MALIGNANT, n_mal[1])]
    else:
        raise ValueError(f"kind must be 'bcdr_like' or 'ddsm_like', got {kind!r}")
    plans: list[CasePlan] = []
    for split, label, n in groups:
        prefix = {"": "", "train": "TR", "test": "TE"}[split] + ("B" if label == BENIGN else "M")
        k = 0
        while k < n:
            key = (_KIND_CODES[kind], _SPLIT_CODES[split], label, k)
            prng = np.random.default_rng([config.seed, *key, _STREAM_PATIENT])
            paired = bool(prng.random() < config.paired_patient_prob) and k + 1 < n
            two_views = bool(prng.random() < config.two_view_fraction)
            side = "LEFT" if prng.random() < 0.5 else "RIGHT"
            view = "CC" if prng.random() < 0.5 else "MLO"
            pid = f"P_{prefix}{k:04d}"
            plans.append(CasePlan(f"{prefix}{k:04d}", pid, label, split, side,
                                  "CC" if paired and two_views else view, key, key))
            if paired:
                key2 = (_KIND_CODES[kind], _SPLIT_CODES[split], label, k + 1)
                other = side if two_views else ("RIGHT" if side == "LEFT" else "LEFT")
                plans.append(CasePlan(f"{prefix}{k + 1:04d}", pid, label, split, other,
                                      "MLO" if two_views else view, key2, key if two_views else key2))
            k += 2 if paired else 1
    return plans


def _to_uint16(image: np.ndarray) -> np.ndarray:
    return np.round(np.clip(image, 0.0, 1.0) * 65535.0).astype(np.uint16)


def _save_png(path: Path, arr: np.ndarray) -> None:
    from skimage.io import imsave

    path.parent.mkdir(parents=True, exist_ok=True)
    imsave(str(path), arr, check_contrast=False)


def _case_rows(plan: CasePlan, config: PhantomConfig, root: Path, renderings: Sequence[Rendering]
               ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Simulate one case, write its mask and renderings; return CSV rows and confounder records."""
    case = simulate_anatomy(config, plan.label, plan.rng(config.seed, _STREAM_ANATOMY),
                            mass_rng=plan.rng(config.seed, _STREAM_MASS, mass=True), side=plan.side)
    mask_rel = f"masks/{plan.case_id}.png"
    _save_png(root / mask_rel, case.mass.mask.astype(np.uint8) * 255)
    spec = case.mass.spec
    rows, conf = [], []
    for rendering in renderings:
        out = add_confounders(case, config, rendering, plan.rng(config.seed, _confounder_stream(rendering)))
        img_rel = f"images/{rendering}/{plan.case_id}.png"
        conf_rel = f"confounders/{rendering}/{plan.case_id}.png"
        _save_png(root / img_rel, _to_uint16(out.image))
        _save_png(root / conf_rel, out.confounder_map)
        rows.append({
            "case_id": plan.case_id, "image_path": img_rel, "mask_path": mask_rel,
            "label": LABEL_NAMES[plan.label], "patient_id": plan.patient_id, "split": plan.split,
            "confounder_mask_path": conf_rel, "has_calcification": int(out.has_calcification),
            "has_dense_tissue": int(out.has_dense_tissue), "mass_shape": spec.shape,
            "mass_margin": spec.margin, "mass_radius_px": round(spec.radius, 3),
            "mass_contrast": round(spec.contrast, 4), "rendering": rendering, "side": plan.side,
            "view": plan.view, "mass_row": round(case.mass.centre[0], 3),
            "mass_col": round(case.mass.centre[1], 3), "mass_area_px": int(case.mass.mask.sum()),
            "n_spicules": len(spec.spicules), "mass_scale": round(case.mass.scale, 4)})
        conf += [{"case_id": plan.case_id, "rendering": rendering, **c.to_json()} for c in out.confounders]
    return rows, conf


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    pd.DataFrame(rows, columns=list(CASE_COLUMNS)).to_csv(path, index=False, lineterminator="\n")


def _read_marker(path: Path) -> Optional[dict[str, Any]]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _atomic_build(out_dir: Path, marker: str, digest: str, build: Callable[[Path], dict[str, Any]]) -> Path:
    """Build into a temporary sibling folder and rename it to ``out_dir``. An ``out_dir`` with a
    marker of the same hash is complete: kept. One with another marker is replaced. A non-empty
    folder without a marker is not ours: refused."""
    out_dir = Path(out_dir)
    if out_dir.exists():
        old = _read_marker(out_dir / marker)
        if old is not None and old.get("hash") == digest:
            return out_dir
        if old is None and (not out_dir.is_dir() or any(out_dir.iterdir())):
            raise FileExistsError(f"{out_dir} exists and is not a phantom folder (no {marker}); "
                                  "refusing to overwrite it")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        info = build(tmp)
        info["hash"] = digest
        (tmp / marker).write_text(json.dumps(info, indent=1, sort_keys=True) + "\n")
        trash = None
        if out_dir.exists():
            trash = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
            os.replace(out_dir, trash / "old")
        try:
            os.replace(tmp, out_dir)
        except OSError:
            done = _read_marker(out_dir / marker)  # another process finished first
            if done is None or done.get("hash") != digest:
                raise
        if trash is not None:
            shutil.rmtree(trash, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def generate_phantom(out_dir: str | Path, config: Optional[PhantomConfig] = None, *,
                     kind: Kind = "bcdr_like", progress: bool = True) -> Path:
    """Write a phantom set (docs/DECISIONS.md) to ``out_dir`` and return it.

    Files (paths in the CSVs relative to ``out_dir``): ``images/<rendering>/<case>.png`` (uint16),
    ``masks/<case>.png`` (uint8 0/255), ``confounders/<rendering>/<case>.png`` (uint8 label map
    0/1/2), ``cases.csv`` (generic loader format, :data:`CASE_COLUMNS`), ``confounders.json`` and
    ``phantom.json`` (config + hash, written last). ``bcdr_like``: ``cases.csv`` holds the
    ``train`` rendering and ``cases_shifted.csv`` the ``shifted`` one (same ids and masks), split
    empty; every extra rendering ``e`` (see :func:`extra_renderings`) is ``cases_<e>.csv``. ``ddsm_like``: split ``train`` (rendering ``train``) and ``test`` (``shifted``).
    A folder holding the same generation is returned untouched; see :func:`_atomic_build`.
    """
    config = PhantomConfig() if config is None else config
    if not isinstance(config, PhantomConfig):
        raise TypeError(f"config must be a PhantomConfig, got {type(config).__name__}")
    plans = plan_cases(kind, config)
    if not plans:
        raise ValueError(f"{kind} phantom with no cases: check the n_* counts of the config")

    def build(root: Path) -> dict[str, Any]:
        extras = extra_renderings(config) if kind == "bcdr_like" else ()
        rows: dict[str, list[dict[str, Any]]] = {"train": [], "shifted": [], **{e: [] for e in extras}}
        confs: list[dict[str, Any]] = []
        for plan in tqdm(plans, desc=f"phantom {kind}", disable=not progress):
            if kind == "bcdr_like":
                renderings: tuple[Rendering, ...] = ("train", "shifted", *extras)
            else:
                renderings = ("train",) if plan.split == "train" else ("shifted",)
            case_rows, case_conf = _case_rows(plan, config, root, renderings)
            for row in case_rows:
                rows["train" if kind == "ddsm_like" else row["rendering"]].append(row)
            confs += case_conf
        _write_csv(root / "cases.csv", rows["train"])
        if kind == "bcdr_like":
            _write_csv(root / "cases_shifted.csv", rows["shifted"])
            for e in extras:
                _write_csv(root / f"cases_{e}.csv", rows[e])
        (root / "confounders.json").write_text(json.dumps(confs, indent=1) + "\n")
        return {"format": "mammo-kt phantom", "version": PHANTOM_VERSION, "kind": kind,
                "n_cases": len(plans), "config": config.to_dict()}

    return _atomic_build(Path(out_dir), MARKER, config_hash(config, kind), build)


# --------------------------------------------------------------------------------------------
# CBIS-DDSM style DICOM tree
# --------------------------------------------------------------------------------------------

_CBIS_UID_ROOT = "1.3.6.1.4.1.9590.100.1.2."


def _uid(rng: np.random.Generator, used: set[str]) -> str:
    """A UID in the form CBIS-DDSM uses (its root + one long number, <= 64 characters)."""
    while True:
        n = int(rng.integers(30, 40))
        digits = str(int(rng.integers(1, 10))) + "".join(map(str, rng.integers(0, 10, n - 1)))
        uid = _CBIS_UID_ROOT + digits
        if uid not in used:
            used.add(uid)
            return uid


def _write_dicom(path: Path, arr: np.ndarray, *, patient_id: str, study_uid: str, series_uid: str,
                 sop_uid: str, description: str, side: str, view: str, rle: bool) -> None:
    """Single-frame MONOCHROME2 DICOM (Secondary Capture, like CBIS-DDSM), Explicit VR Little
    Endian or RLE Lossless."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, RLELossless, SecondaryCaptureImageStorage

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.PatientID = patient_id
    ds.PatientName = patient_id
    ds.Modality = "MG"
    ds.SeriesDescription = description
    ds.BodyPartExamined = "BREAST"
    ds.ImageLaterality = side[0]
    ds.ViewPosition = view
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = int(arr.shape[0]), int(arr.shape[1])
    bits = 8 * arr.dtype.itemsize
    ds.BitsAllocated = bits
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    ds.PixelData = np.ascontiguousarray(arr).tobytes()
    if rle:
        ds.compress(RLELossless, np.ascontiguousarray(arr), generate_instance_uid=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def write_cbis_tree(out_dir: str | Path, config: Optional[PhantomConfig] = None, *, n_cases: int = 12,
                    renamed: bool = True, seed: Optional[int] = None, progress: bool = False) -> Path:
    """Tiny CBIS-DDSM style data set (Sec. 3.1) for loader tests; returns its root.

    ``root`` holds ``mass_case_description_{train,test}_set.csv`` in the real format (CRLF rows,
    the ROI mask path ends in a quoted embedded newline) and the DICOMs of ``n_cases``
    abnormalities (about 2/3 train): full mammograms (uint16 MONOCHROME2, every other one RLE
    Lossless), cropped images (uint16) and ROI masks (uint8 0/255 at full size). Classes
    alternate by row; every other benign row is BENIGN_WITHOUT_CALLBACK. No confounders. Quirks,
    as in the real data: the first image holds two abnormalities (ids 1 and 2); every third row has
    its mask as ``000000.dcm`` in a separate series; one mask is 3 rows and 2 columns larger
    than its image; pairs of images are CC + MLO views of one patient. With ``renamed=True``
    folders are named like a TCIA download (``<subject>/MM-DD-YYYY-DDSM-NNNNN/1.000000-<series
    description>-NNNNN/1-k.dcm``, NNNNN = last 5 UID digits); UIDs are then only in the headers
    and the CSVs. ``phantom_cbis_tree.json`` lists every row's files and quirks (ground truth).
    """
    config = PhantomConfig() if config is None else config
    if not isinstance(config, PhantomConfig):
        raise TypeError(f"config must be a PhantomConfig, got {type(config).__name__}")
    if not isinstance(n_cases, (int, np.integer)) or isinstance(n_cases, bool) or n_cases < 4:
        raise ValueError(f"n_cases must be an int >= 4, got {n_cases!r}")
    seed = config.seed if seed is None else seed
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be an int >= 0, got {seed!r}")
    cfg = replace(config, seed=int(seed))
    digest = hashlib.sha256(json.dumps({"cbis": config_hash(cfg, "cbis_tree"), "n": int(n_cases),
                                        "renamed": bool(renamed)}).encode()).hexdigest()

    def build(root: Path) -> dict[str, Any]:
        return _build_cbis(root, cfg, int(n_cases), bool(renamed), progress)

    return _atomic_build(Path(out_dir), CBIS_MARKER, digest, build)


@dataclass
class _CbisImage:
    """One full mammogram of the CBIS tree: its split, patient, side, view and mass labels."""

    split: str
    patient: str
    side: str
    view: str
    labels: list[int]
    rle: bool


def _cbis_plan(n_cases: int, rng: np.random.Generator) -> list[_CbisImage]:
    """Images of the tree: the first holds abnormalities 1 and 2, the others one each; about
    2/3 train; some patients get a CC and an MLO view of one breast; classes alternate by row."""
    n_images = n_cases - 1
    n_train = max(1, min(n_images - 1, round(n_images * 2 / 3)))
    images: list[_CbisImage] = []
    pid = 0
    for i in range(n_images):
        split = "train" if i < n_train else "test"
        if i in (0, n_train) or images[-1].view == "MLO" or rng.random() < 0.5:
            pid += 1
            side, view = ("LEFT" if rng.random() < 0.5 else "RIGHT"), "CC"
        else:  # second view of the previous patient's breast
            side, view = images[-1].side, "MLO"
        labels = [BENIGN, MALIGNANT] if i == 0 else [(i + 1) % 2]
        images.append(_CbisImage(split, f"P_{pid:05d}", side, view, labels, rle=i % 2 == 0))
    return images


def _cbis_render(cfg: PhantomConfig, index: int, im: _CbisImage) -> tuple[np.ndarray, list[MassLayer]]:
    """Full mammogram (uint16) and its mass layers; a second mass keeps clear of the first."""
    rng = np.random.default_rng([cfg.seed, _KIND_CODES["cbis_tree"], 0, 0, index, _STREAM_ANATOMY])
    case = simulate_anatomy(cfg, im.labels[0], rng, side=im.side, need_confounders=False)
    layers, image = [case.mass], case.base
    for label in im.labels[1:]:
        avoid = distance_transform_edt(~case.mass.footprint) < cfg.confounder_gap_px
        layer = _place_mass(draw_mass(label, cfg, rng), case.breast, cfg, rng, avoid=avoid,
                            need_confounders=False)
        layers.append(layer)
        image = image + layer.signal * case.breast.mask
    return _to_uint16(image), layers


def _build_cbis(root: Path, cfg: PhantomConfig, n_cases: int, renamed: bool, progress: bool) -> dict[str, Any]:
    """Write the tree of :func:`write_cbis_tree` into ``root``; return the ground-truth record."""
    rng = np.random.default_rng([cfg.seed, _KIND_CODES["cbis_tree"], 99])
    used: set[str] = set()
    rows: dict[str, list[list[str]]] = {"train": [], "test": []}
    truth: list[dict[str, Any]] = []
    row_index = n_benign = 0
    for i, im in enumerate(tqdm(_cbis_plan(n_cases, rng), desc="CBIS tree", disable=not progress)):
        full, layers = _cbis_render(cfg, i, im)
        subject = f"{'Mass-Training' if im.split == 'train' else 'Mass-Test'}_{im.patient}_{im.side}_{im.view}"
        full_study, full_series = _uid(rng, used), _uid(rng, used)
        full_rel = _cbis_rel(subject, full_study, full_series, "full mammogram images", 1, renamed)
        _write_dicom(root / full_rel, full, patient_id=subject, study_uid=full_study, series_uid=full_series,
                     sop_uid=_uid(rng, used), description="full mammogram images", side=im.side,
                     view=im.view, rle=im.rle)
        for abn, (label, layer) in enumerate(zip(im.labels, layers), start=1):
            sub = f"{subject}_{abn}"
            separate = row_index % 3 == 1  # mask as 000000.dcm in a series of its own
            mask = layer.mask.astype(np.uint8) * 255
            if row_index == 2:  # a mask a few pixels larger than its image
                mask = np.pad(mask, ((0, 3), (0, 2)))
            rr, cc = np.flatnonzero(layer.mask.any(1)), np.flatnonzero(layer.mask.any(0))
            m = int(rng.integers(0, 12))
            crop = full[max(rr[0] - m, 0):rr[-1] + m + 1, max(cc[0] - m, 0):cc[-1] + m + 1]
            crop_study, crop_series = _uid(rng, used), _uid(rng, used)
            if separate:
                mask_study, mask_series = _uid(rng, used), _uid(rng, used)
                crop_rel = _cbis_rel(sub, crop_study, crop_series, "cropped images", 1, renamed)
                mask_rel = _cbis_rel(sub, mask_study, mask_series, "ROI mask images", 1, renamed)
            else:  # one folder; TCIA's 1-1 / 1-2 numbering does not tell which file is the mask
                mask_study, mask_series = crop_study, crop_series
                k_crop = 1 + int(rng.integers(2))
                crop_rel = _cbis_rel(sub, crop_study, crop_series, "ROI mask images", k_crop, renamed)
                mask_rel = _cbis_rel(sub, mask_study, mask_series, "ROI mask images", 3 - k_crop, renamed,
                                     literal_name="000001.dcm")
            common = dict(patient_id=sub, side=im.side, view=im.view, rle=False)
            _write_dicom(root / crop_rel, crop, study_uid=crop_study, series_uid=crop_series,
                         sop_uid=_uid(rng, used), description="cropped images", **common)
            _write_dicom(root / mask_rel, mask, study_uid=mask_study, series_uid=mask_series,
                         sop_uid=_uid(rng, used), description="ROI mask images", **common)
            if label == MALIGNANT:
                pathology, assessment = "MALIGNANT", int(rng.integers(4, 6))
            else:  # every other benign row is BENIGN_WITHOUT_CALLBACK (benign, Sec. 3.1)
                n_benign += 1
                pathology = "BENIGN_WITHOUT_CALLBACK" if n_benign % 2 == 1 else "BENIGN"
                assessment = int(rng.integers(2, 5))
            paths = [f"{subject}/{full_study}/{full_series}/000000.dcm",
                     f"{sub}/{crop_study}/{crop_series}/000000.dcm",
                     f"{sub}/{mask_study}/{mask_series}/{'000000' if separate else '000001'}.dcm\n"]
            rows[im.split].append([im.patient, str(int(rng.integers(1, 5))), im.side, im.view, str(abn),
                                   "mass", layer.spec.shape, layer.spec.margin, str(assessment), pathology,
                                   str(int(rng.integers(2, 6))), *paths])
            truth.append({"split": im.split, "csv_row": len(rows[im.split]) + 1,
                          "case_id": f"{im.patient}_{im.side}_{im.view}_{abn}", "label": label,
                          "pathology": pathology, "abnormality_id": abn,
                          "full": str(full_rel), "cropped": str(crop_rel), "mask": str(mask_rel),
                          "full_series_uid": full_series, "cropped_series_uid": crop_series,
                          "mask_series_uid": mask_series, "mask_separate_series": separate,
                          "mask_shape": list(mask.shape), "image_shape": list(full.shape),
                          "cropped_shape": list(crop.shape), "rle": im.rle})
            row_index += 1
    for split in ("train", "test"):
        with open(root / f"mass_case_description_{split}_set.csv", "w", newline="") as fh:
            writer = csv.writer(fh, lineterminator="\r\n")  # real files: CRLF rows, minimal quoting
            writer.writerow(CBIS_COLUMNS)
            writer.writerows(rows[split])
    return {"format": "mammo-kt CBIS-DDSM phantom tree", "version": PHANTOM_VERSION, "renamed": renamed,
            "seed": cfg.seed, "n_cases": n_cases, "rows": truth}


def _cbis_rel(subject: str, study: str, series: str, description: str, k: int, renamed: bool, *,
              literal_name: str = "000000.dcm") -> Path:
    """Relative path of a DICOM: literal CSV form, or TCIA-renamed folders (docstring above)."""
    if not renamed:
        return Path(subject, study, series, literal_name)
    return Path(subject, f"07-20-2016-DDSM-{study[-5:]}", f"1.000000-{description}-{series[-5:]}", f"1-{k}.dcm")
