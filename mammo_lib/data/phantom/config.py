"""Phantom settings (the decisions in :mod:`mammo_lib.data.phantom`): :class:`PhantomConfig` with its checks,
the shared constants (label-map values, generator streams, shrink factors) and
:func:`config_hash`, which identifies a generation."""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

import numpy as np

from mammo_lib.data.records import BENIGN, MALIGNANT


#: ``"train"``, ``"shifted"`` (the ``"test"`` probabilities) or the name of an extra rendering:
#: any further key of ``calcification_prob`` (e.g. ``"reversed"``), written as ``cases_<name>.csv``.
Rendering = str
#: Version of the rendering code; part of the generation hash (bump when the pixels change).
PHANTOM_VERSION = 2
#: Values of the confounder label map written next to every image.
CONFOUNDER_NONE, CONFOUNDER_CALCIFICATION, CONFOUNDER_DENSE = 0, 1, 2
CONFOUNDER_TYPES = {CONFOUNDER_CALCIFICATION: "calcification", CONFOUNDER_DENSE: "dense_tissue"}
KIND_CODES = {"bcdr_like": 1, "ddsm_like": 2, "cbis_tree": 3}
STREAM_ANATOMY, STREAM_MASS, STREAM_PATIENT = 0, 1, 2
#: Shrink factors tried, in order, for a mass that does not fit or a confounder without room.
SCALES = tuple(0.85 ** k for k in range(8))  # 1 ... 0.32


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
