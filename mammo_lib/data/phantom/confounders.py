"""Phantom confounders (Sec. 5, Fig. 7 failure mode): dense-tissue patches and
micro-calcification clusters drawn inside the ROI window but outside the mass, per
rendering (``train``, ``shifted``, extras) with ``P(confounder | label, split)``."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np

from mammo_lib.data.phantom.config import CONFOUNDER_CALCIFICATION, CONFOUNDER_DENSE, PhantomConfig, Rendering, SCALES
from mammo_lib.data.phantom.anatomy import SimulatedCase, calcification_room, valid_centres


#: Rendering -> key of the confounder probability tables.
RENDERING_PROBS: dict[str, str] = {"train": "train", "shifted": "test"}


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


def _pick_centre(ext_of_scale: Callable[[float], float], case: SimulatedCase, forbid: np.ndarray,
                 config: PhantomConfig, rng: np.random.Generator, *,
                 room_for: Optional[float] = None) -> tuple[float, tuple[int, int]]:
    """Uniform random valid centre, shrinking the confounder through :data:`SCALES` until one
    exists. Returns ``(scale, (row, col))``."""
    for scale in SCALES:
        cand = valid_centres(ext_of_scale(scale), case.window, forbid, case.breast.dist, config,
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
        room = calcification_room(config) if has_calc else None
        found.append(_render_dense(config, case, forbid, rng, signal, labels, room_for=room))
    if has_calc:
        found.append(_render_calcifications(config, case, forbid, rng, signal, labels))
    image = np.clip(case.base + signal * case.breast.mask, 0.0, 1.0).astype(np.float32)
    return Rendered(image=image, confounder_map=labels, confounders=found, rendering=rendering)
