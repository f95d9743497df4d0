"""A lab's own data (and the synthetic phantom) in one CSV: one row per mass.

Required columns ``image_path, mask_path, label, patient_id``; optional ``split``, ``case_id``
and ``dataset``; any other column is kept in ``meta`` (the phantom's confounder columns and
``confounder_mask_path`` arrive this way). Relative paths resolve against ``base_dir`` or the
CSV's folder; every column whose name ends in ``_path`` is resolved and, when not empty, must
exist. Labels: 0/1, benign/malignant (any case), B/M.
"""
from __future__ import annotations

import csv
import re
from pathlib import Path
from typing import Any, Optional, Sequence

import pandas as pd

from mammo_lib.data.records import BENIGN, MALIGNANT, DataError, LoadResult, MassRecord, OnError, check_on_error, load_rows

__all__ = ["LABEL_VALUES", "REQUIRED_COLUMNS", "load_generic", "parse_label", "read_csv_strings"]

REQUIRED_COLUMNS = ("image_path", "mask_path", "label", "patient_id")
OPTIONAL_COLUMNS = ("split", "case_id", "dataset")
#: Accepted label spellings (compared lower-case) -> label.
LABEL_VALUES = {"0": BENIGN, "1": MALIGNANT, "benign": BENIGN, "malignant": MALIGNANT,
                "b": BENIGN, "m": MALIGNANT}
_INT_RE = re.compile(r"^[+-]?\d+$")
_FLOAT_RE = re.compile(r"^[+-]?(\d+\.\d*|\.\d+|\d+)([eE][+-]?\d+)?$")


def read_csv_strings(csv_file: str | Path, required: Sequence[str] = ()) -> pd.DataFrame:
    """Read a CSV with a real parser as text: every value stripped, empty cells as "".

    Column names are stripped too; a missing ``required`` column raises :class:`DataError`
    naming the file and the column(s) (row None).
    """
    csv_file = Path(csv_file)
    if not csv_file.is_file():
        raise DataError("CSV file not found", csv_file)
    try:
        df = pd.read_csv(csv_file, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise DataError(f"cannot parse CSV ({type(err).__name__}: {err})", csv_file) from err
    header = _header(csv_file)
    repeated = sorted({c for c in header if header.count(c) > 1})
    if repeated:
        raise DataError(f"duplicated column(s) {repeated} in the header (pandas would rename the second "
                        f"{repeated[0]!r} to {repeated[0] + '.1'!r})", csv_file)
    df.columns = [str(c).strip() for c in df.columns]
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise DataError(f"missing required column(s) {missing}", csv_file)
    return df.fillna("").astype(str).apply(lambda col: col.str.strip())


def _header(csv_file: Path) -> list[str]:
    """The header's column names as written (stripped); pandas renames repeats to ``name.1``."""
    with open(csv_file, newline="", encoding="utf-8", errors="replace") as fh:
        for values in csv.reader(fh):
            if values:
                return [v.strip() for v in values]
    return []


def parse_label(value: str, file: str | Path | None = None, row: int | None = None) -> int:
    """0/1, benign/malignant (any case) or B/M -> 0/1; else :class:`DataError` "unknown label"."""
    label = LABEL_VALUES.get(str(value).strip().lower())
    if label is None:
        raise DataError(f"unknown label {value!r} (expected 0/1, benign/malignant or B/M)", file, row)
    return label


def _meta_value(value: str) -> Any:
    """Empty -> None; integer and decimal text -> int / float; true/false -> bool; else the text."""
    if value == "":
        return None
    if _INT_RE.match(value):
        return int(value)
    if _FLOAT_RE.match(value):
        return float(value)
    if value.lower() in ("true", "false"):
        return value.lower() == "true"
    return value


def _resolve(value: str, column: str, base: Path, file: Path, row: int) -> str:
    path = Path(value)
    if not path.is_absolute():
        path = base / path
    if not path.exists():
        raise DataError(f"{column} file not found: {path}", file, row)
    return str(path)


def _row_record(row: dict[str, str], csv_file: Path, row_no: int, base: Path, dataset: str) -> MassRecord:
    for col in REQUIRED_COLUMNS:
        if not row[col]:
            raise DataError(f"empty value in column {col!r}", csv_file, row_no)
    label = parse_label(row["label"], csv_file, row_no)
    image_path = _resolve(row["image_path"], "image_path", base, csv_file, row_no)
    mask_path = _resolve(row["mask_path"], "mask_path", base, csv_file, row_no)
    meta: dict[str, Any] = {}
    for col, value in row.items():
        if col in REQUIRED_COLUMNS or col in OPTIONAL_COLUMNS:
            continue
        if col.endswith("_path"):
            meta[col] = _resolve(value, col, base, csv_file, row_no) if value else None
        else:
            meta[col] = _meta_value(value)
    case_id = row.get("case_id") or f"{Path(row['image_path']).stem}_{row_no}"
    return MassRecord(case_id=case_id, dataset=row.get("dataset") or dataset, patient_id=row["patient_id"],
                      label=label, image_path=image_path, mask_path=mask_path, source_file=str(csv_file),
                      source_row=row_no, split=(row.get("split") or "").lower() or None, meta=meta)


def load_generic(csv_path: str | Path, *, base_dir: str | Path | None = None, on_error: OnError = "raise",
                 dataset: Optional[str] = None) -> LoadResult:
    """Load a generic mass CSV (ARCHITECTURE ``generic.py``) into records.

    ``case_id`` defaults to ``f"{image stem}_{row}"`` (row = spreadsheet row, header = 1);
    ``dataset`` defaults to the ``dataset`` column, else this argument, else the CSV's stem.
    Files are checked with ``Path.exists()`` here, so a missing one is reported with its row.
    A missing required column, a column named twice, or a patient in more than one ``split``
    (leakage) always raises :class:`DataError`; a bad row raises or, with ``on_error="skip"``,
    becomes an exclusion.
    """
    check_on_error(on_error)
    csv_file = Path(csv_path)
    base = csv_file.parent if base_dir is None else Path(base_dir)
    if not base.is_dir():
        raise DataError("base_dir folder not found", base)
    df = read_csv_strings(csv_file, REQUIRED_COLUMNS)

    result = LoadResult()
    rows = df.to_dict("records")
    _check_split_leakage(rows, csv_file)
    name = dataset or csv_file.stem
    result.records.extend(load_rows(rows, csv_file, lambda row, n: _row_record(row, csv_file, n, base, name),
                                    on_error, result, id_column="case_id"))
    return result


def _check_split_leakage(rows: list[dict[str, str]], csv_file: Path) -> None:
    """:class:`DataError` when one patient has rows in more than one split (train/test leakage,
    docs/DECISIONS.md "Data-side fault cases"); names the patient and up to 5 rows per split."""
    where: dict[str, dict[str, list[int]]] = {}
    for i, row in enumerate(rows):
        split, patient = (row.get("split") or "").lower(), row.get("patient_id", "")
        if split and patient:
            where.setdefault(patient, {}).setdefault(split, []).append(i + 2)
    for patient, splits in where.items():
        if len(splits) > 1:
            shown = "; ".join(f"{s}: rows {', '.join(map(str, r[:5]))}{', ...' if len(r) > 5 else ''}"
                              for s, r in sorted(splits.items()))
            raise DataError(f"patient {patient!r} is in more than one split ({shown}): a patient's cases must "
                            "all be in one split", csv_file)
