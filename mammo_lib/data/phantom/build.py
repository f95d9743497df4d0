"""Building a phantom data set: :func:`plan_cases` (ids, patients, splits), rendering every
case, the ``cases*.csv`` rows and :func:`generate_phantom`, which writes the folder atomically
(:func:`mammo_lib.utils.files.atomic_dir`) with a ``phantom.json`` marker keyed by :func:`config_hash`."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Optional, Sequence

import numpy as np
import pandas as pd

from mammo_lib.utils.files import atomic_dir
from mammo_lib.utils.progress import tqdm
from mammo_lib.data.records import BENIGN, LABEL_NAMES, MALIGNANT
from mammo_lib.data.phantom.config import PHANTOM_VERSION, PhantomConfig, Rendering, config_hash, KIND_CODES, STREAM_ANATOMY, STREAM_MASS, STREAM_PATIENT
from mammo_lib.data.phantom.anatomy import simulate_anatomy
from mammo_lib.data.phantom.confounders import add_confounders, extra_renderings


Kind = Literal["bcdr_like", "ddsm_like"]
#: Columns of ``cases.csv`` / ``cases_shifted.csv`` (generic loader format + phantom columns).
CASE_COLUMNS = ("case_id", "image_path", "mask_path", "label", "patient_id", "split",
                "confounder_mask_path", "has_calcification", "has_dense_tissue", "mass_shape",
                "mass_margin", "mass_radius_px", "mass_contrast", "rendering", "side", "view",
                "mass_row", "mass_col", "mass_area_px", "n_spicules", "mass_scale")
MARKER = "phantom.json"
_SPLIT_CODES = {"": 0, "train": 1, "test": 2}
_STREAM_CONFOUNDERS = {"train": 10, "shifted": 11}


def _confounder_stream(rendering: str) -> int:
    """Generator stream of a rendering's confounders: 10 / 11 for train / shifted, else a stable
    number from the name (so adding a rendering never changes the others)."""
    if rendering in _STREAM_CONFOUNDERS:
        return _STREAM_CONFOUNDERS[rendering]
    return 100 + int(hashlib.sha256(rendering.encode()).hexdigest()[:6], 16)


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
            key = (KIND_CODES[kind], _SPLIT_CODES[split], label, k)
            prng = np.random.default_rng([config.seed, *key, STREAM_PATIENT])
            paired = bool(prng.random() < config.paired_patient_prob) and k + 1 < n
            two_views = bool(prng.random() < config.two_view_fraction)
            side = "LEFT" if prng.random() < 0.5 else "RIGHT"
            view = "CC" if prng.random() < 0.5 else "MLO"
            pid = f"P_{prefix}{k:04d}"
            plans.append(CasePlan(f"{prefix}{k:04d}", pid, label, split, side,
                                  "CC" if paired and two_views else view, key, key))
            if paired:
                key2 = (KIND_CODES[kind], _SPLIT_CODES[split], label, k + 1)
                other = side if two_views else ("RIGHT" if side == "LEFT" else "LEFT")
                plans.append(CasePlan(f"{prefix}{k + 1:04d}", pid, label, split, other,
                                      "MLO" if two_views else view, key2, key if two_views else key2))
            k += 2 if paired else 1
    return plans


def to_uint16(image: np.ndarray) -> np.ndarray:
    return np.round(np.clip(image, 0.0, 1.0) * 65535.0).astype(np.uint16)


def _save_png(path: Path, arr: np.ndarray) -> None:
    from skimage.io import imsave

    path.parent.mkdir(parents=True, exist_ok=True)
    imsave(str(path), arr, check_contrast=False)


def _case_rows(plan: CasePlan, config: PhantomConfig, root: Path, renderings: Sequence[Rendering]
               ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Simulate one case, write its mask and renderings; return CSV rows and confounder records."""
    case = simulate_anatomy(config, plan.label, plan.rng(config.seed, STREAM_ANATOMY),
                            mass_rng=plan.rng(config.seed, STREAM_MASS, mass=True), side=plan.side)
    mask_rel = f"masks/{plan.case_id}.png"
    _save_png(root / mask_rel, case.mass.mask.astype(np.uint8) * 255)
    spec = case.mass.spec
    rows, conf = [], []
    for rendering in renderings:
        out = add_confounders(case, config, rendering, plan.rng(config.seed, _confounder_stream(rendering)))
        img_rel = f"images/{rendering}/{plan.case_id}.png"
        conf_rel = f"confounders/{rendering}/{plan.case_id}.png"
        _save_png(root / img_rel, to_uint16(out.image))
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


def atomic_build(out_dir: Path, marker: str, digest: str, build: Callable[[Path], dict[str, Any]]) -> Path:
    """Build a folder once (:func:`mammo_lib.utils.files.atomic_dir`) with ``marker`` written last. An
    ``out_dir`` with a marker of the same hash is complete: kept (also when another process
    finishes it first). One with another marker is replaced. A non-empty folder without a marker
    is not ours: refused."""
    out_dir = Path(out_dir)
    if out_dir.exists():
        old = _read_marker(out_dir / marker)
        if old is not None and old.get("hash") == digest:
            return out_dir
        if old is None and (not out_dir.is_dir() or any(out_dir.iterdir())):
            raise FileExistsError(f"{out_dir} exists and is not a phantom folder (no {marker}); "
                                  "refusing to overwrite it")

    def build_marked(tmp: Path) -> None:
        info = build(tmp)
        info["hash"] = digest
        (tmp / marker).write_text(json.dumps(info, indent=1, sort_keys=True) + "\n")

    def finished(target: Path) -> bool:
        done = _read_marker(target / marker)
        return done is not None and done.get("hash") == digest

    atomic_dir(out_dir, build_marked, accept_existing=finished)
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
    A folder holding the same generation is returned untouched; see :func:`atomic_build`.
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

    return atomic_build(Path(out_dir), MARKER, config_hash(config, kind), build)
