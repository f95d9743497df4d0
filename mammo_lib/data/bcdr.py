"""BCDR (Breast Cancer Digital Repository) outline files: BCDR-D01 (digital) and BCDR-F01 (film).

Sec. 3.1 / paper Sec. 3.1. One :class:`~mammo_lib.data.records.MassRecord` per segmentation
(an outline of one lesion in one view; the paper counts these as "lesions": D01 has 141, 85
benign / 56 malignant). Values carry a leading space (stripped); ``lw_x_points``/``lw_y_points``
are space-separated outline pixel coordinates stored as ``rec.outline``; the mask is the filled
polygon (:func:`mammo_lib.data.images.polygon_mask`, boundary included).

:func:`balanced_draw` draws the paper's balanced F01 subset (59 benign / 74 malignant of the 231
mass segmentations) with a fixed, recorded seed (docs/DECISIONS.md).
"""
from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path
from typing import Optional

import numpy as np

from mammo_lib.data.generic_csv import read_csv_strings
from mammo_lib.data.images import polygon_mask
from mammo_lib.data.records import (BENIGN, MALIGNANT, DataError, Exclusion, LoadResult, MassRecord, OnError,
                      check_on_error, load_rows)

__all__ = ["CLASSIFICATION_LABELS", "IMAGE_VIEWS", "REQUIRED_COLUMNS", "balanced_draw", "load_bcdr",
           "parse_points", "polygon_mask"]

#: ``classification`` -> label.
CLASSIFICATION_LABELS = {"benign": BENIGN, "malign": MALIGNANT}
#: ``image_view`` code -> view name (Sec. 3.1).
IMAGE_VIEWS = {1: "RCC", 2: "LCC", 3: "RO", 4: "LO"}
REQUIRED_COLUMNS = ("patient_id", "study_id", "lesion_id", "segmentation_id", "image_view", "image_filename",
                    "lw_x_points", "lw_y_points", "classification")
_ID_COLUMNS = ("patient_id", "study_id", "lesion_id", "segmentation_id")
_SUBSET_RE = re.compile(r"^[A-Z]{1,3}\d{2}$")


def parse_points(text: str, column: str, file: str | Path, row: int) -> np.ndarray:
    """Space-separated pixel coordinates -> float64 array; :class:`DataError` on a non-number."""
    try:
        return np.array(text.split(), dtype=np.float64)
    except ValueError as err:
        raise DataError(f"non-numeric value in {column!r} ({err})", file, row) from err


def _row_record(row: dict[str, str], csv_file: Path, row_no: int, subset: str,
                image_root: Optional[Path]) -> MassRecord:
    for col in _ID_COLUMNS + ("image_filename",):
        if not row[col]:
            raise DataError(f"empty value in column {col!r}", csv_file, row_no)
    label = CLASSIFICATION_LABELS.get(row["classification"].lower())
    if label is None:
        raise DataError(f"unknown classification {row['classification']!r} (expected Benign or Malign)",
                        csv_file, row_no)
    try:
        view = IMAGE_VIEWS[int(row["image_view"])]
    except (KeyError, ValueError):
        raise DataError(f"unknown image_view {row['image_view']!r} (expected 1=RCC, 2=LCC, 3=RO, 4=LO)",
                        csv_file, row_no) from None
    xs = parse_points(row["lw_x_points"], "lw_x_points", csv_file, row_no)
    ys = parse_points(row["lw_y_points"], "lw_y_points", csv_file, row_no)
    if xs.size != ys.size:
        raise DataError(f"lw_x_points has {xs.size} values but lw_y_points has {ys.size}", csv_file, row_no)
    if xs.size < 3:
        raise DataError(f"outline has {xs.size} vertices; a polygon needs at least 3", csv_file, row_no)
    if xs.min() < 0 or ys.min() < 0:
        raise DataError("outline outside image: negative coordinates", csv_file, row_no)
    image_path = row["image_filename"]
    if image_root is not None:
        full = image_root / image_path
        if not full.is_file():
            raise DataError(f"image file not found: {full}", csv_file, row_no)
        image_path = str(full)
    patient, study, lesion, seg = (row[c] for c in _ID_COLUMNS)
    meta: dict[str, object] = {"subset": subset, "view": view, "side": view[0], "classification": row["classification"],
                               "study_id": study, "lesion_id": lesion, "segmentation_id": seg}
    for col, value in row.items():
        if col not in REQUIRED_COLUMNS:
            meta[col] = int(value) if value.isdigit() else value
    return MassRecord(case_id=f"bcdr{subset}_{patient}_{study}_{lesion}_{seg}", dataset=f"BCDR-{subset}",
                      patient_id=f"bcdr_{patient}", label=label, image_path=image_path,
                      source_file=str(csv_file), source_row=row_no, split=None,
                      outline=(tuple(xs.tolist()), tuple(ys.tolist())), meta=meta)


def load_bcdr(outlines_csv: str | Path, image_root: str | Path | None = None, *, subset: str = "D01",
              on_error: OnError = "raise", masses_only: bool = True) -> LoadResult:
    """Load a BCDR ``*_outlines.csv`` (Sec. 3.1).

    ``case_id = f"bcdr{subset}_{patient}_{study}_{lesion}_{segmentation}"``; ``patient_id`` is
    ``f"bcdr_{patient}"`` (BCDR patient numbers are shared by its subsets, so patient-grouped
    splits stay grouped across D01 and F01). ``image_path`` is ``image_root / image_filename``
    (checked to exist) or the relative file name. With ``masses_only`` (paper: only mass
    segmentations are used) a row whose ``mammography_nodule`` is not 1 becomes an exclusion
    (stage ``"filter"``). A bad row raises :class:`DataError` with its row, or is excluded with
    ``on_error="skip"``; a missing required column always raises.
    """
    check_on_error(on_error)
    if not _SUBSET_RE.match(subset):
        raise ValueError(f"subset must look like 'D01' or 'F01', got {subset!r}")
    csv_file = Path(outlines_csv)
    root = None if image_root is None else Path(image_root)
    if root is not None and not root.is_dir():
        raise DataError("image root folder not found", root)
    df = read_csv_strings(csv_file, REQUIRED_COLUMNS)
    if masses_only and "mammography_nodule" not in df.columns:
        raise DataError("missing required column(s) ['mammography_nodule'] (needed by masses_only=True)", csv_file)

    def not_a_mass(rec: MassRecord, row: dict[str, str]) -> Optional[tuple[str, str]]:
        if masses_only and row["mammography_nodule"] != "1":
            return f"not a mass segmentation (mammography_nodule={row['mammography_nodule']!r})", "filter"
        return None

    result = LoadResult()
    result.records.extend(load_rows(df.to_dict("records"), csv_file,
                                    lambda row, n: _row_record(row, csv_file, n, subset, root), on_error, result,
                                    exclude=not_a_mass))
    return result


def balanced_draw(result: LoadResult, n_benign: int = 59, n_malignant: int = 74, seed: int = 2025) -> LoadResult:
    """Stratified random draw without replacement (docs/DECISIONS.md: paper's F01 subset, 59/74).

    Candidates of each class are sorted by ``case_id`` before drawing, so the draw depends only on
    the set of records and ``seed``. Drawn records are copies whose ``meta`` records ``draw_seed``,
    ``draw_n_benign``, ``draw_n_malignant``, ``draw_population`` and ``draw_rank`` (their position
    in their class's draw); every record not drawn becomes an exclusion (stage ``"balanced_draw"``),
    and the input's exclusions are carried over. Too few records of a class -> ValueError.
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an int (it is recorded), got {type(seed).__name__}")
    wanted = {BENIGN: n_benign, MALIGNANT: n_malignant}
    for n in wanted.values():
        if n < 0:
            raise ValueError(f"n_benign and n_malignant must be >= 0, got {n}")
    ids = [r.case_id for r in result.records]
    if len(set(ids)) != len(ids):
        raise ValueError("records have duplicate case_ids; cannot draw reproducibly")
    rng = np.random.default_rng(int(seed))
    drawn: dict[str, int] = {}
    for label, n in wanted.items():
        pool = sorted(r.case_id for r in result.records if r.label == label)
        if len(pool) < n:
            raise ValueError(f"cannot draw {n} {'malignant' if label else 'benign'} cases: only {len(pool)} available")
        for rank, k in enumerate(rng.choice(len(pool), size=n, replace=False)):
            drawn[pool[int(k)]] = rank
    out = LoadResult(exclusions=list(result.exclusions))
    info = {"draw_seed": int(seed), "draw_n_benign": n_benign, "draw_n_malignant": n_malignant,
            "draw_population": len(result.records)}
    for rec in result.records:
        if rec.case_id in drawn:
            meta = {**rec.meta, **info, "draw_rank": drawn[rec.case_id]}
            out.records.append(replace(rec, meta=meta))
        else:
            out.exclusions.append(Exclusion(rec.source_file, rec.source_row,
                                            f"not drawn in balanced draw (seed={int(seed)}, "
                                            f"{n_benign} benign / {n_malignant} malignant)",
                                            case_id=rec.case_id, stage="balanced_draw"))
    return out
