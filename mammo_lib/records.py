"""Records shared by every dataset loader: one :class:`MassRecord` per mass.

A loader never drops a row silently: a row it cannot use either raises a
:class:`DataError` naming the file and row, or (with ``on_error="skip"``) becomes
an :class:`Exclusion` with its reason in the :class:`LoadResult`.
"""
from __future__ import annotations


from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Literal, Optional

import pandas as pd

#: Integer class labels used everywhere in the package.
BENIGN, MALIGNANT = 0, 1
LABEL_NAMES = {BENIGN: "benign", MALIGNANT: "malignant"}

OnError = Literal["raise", "skip"]


class DataError(ValueError):
    """Bad input, reported with the file and (1-based, header = row 1) CSV row it came from."""

    def __init__(self, message: str, file: str | Path | None = None, row: int | None = None):
        self.reason = message
        self.file = None if file is None else str(file)
        self.row = row
        where = ""
        if self.file is not None:
            where = self.file + (f", row {row}" if row is not None else "") + ": "
        elif row is not None:
            where = f"row {row}: "
        super().__init__(where + message)


@dataclass
class MassRecord:
    """One mass (abnormality) of one image.

    ``source_row`` is the line number in ``source_file`` as a spreadsheet shows it
    (header is row 1, first data row is row 2).  ``label`` is 0 (benign) or 1 (malignant).
    Exactly one of ``mask_path`` or ``outline`` is set: ``outline`` holds the (x, y)
    polygon vertices in pixel coordinates (BCDR).
    """

    case_id: str
    dataset: str
    patient_id: str
    label: int
    image_path: str
    source_file: str
    source_row: int
    split: Optional[str] = None
    mask_path: Optional[str] = None
    outline: Optional[tuple[tuple[float, ...], tuple[float, ...]]] = None
    meta: dict[str, Any] = field(default_factory=dict)

    def to_row(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("outline")
        meta = d.pop("meta")
        d.update({f"meta_{k}": v for k, v in meta.items()})
        return d


@dataclass
class Exclusion:
    """A row (or case) left out, and why. Nothing is dropped without one."""

    source_file: str
    source_row: Optional[int]
    reason: str
    case_id: Optional[str] = None
    stage: str = "load"

    @classmethod
    def from_error(cls, err: DataError, case_id: str | None = None, stage: str = "load") -> "Exclusion":
        return cls(source_file=err.file or "", source_row=err.row, reason=err.reason,
                   case_id=case_id, stage=stage)


@dataclass
class LoadResult:
    """What a loader returns: the usable records and the recorded exclusions."""

    records: list[MassRecord] = field(default_factory=list)
    exclusions: list[Exclusion] = field(default_factory=list)

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame([r.to_row() for r in self.records])

    def exclusions_frame(self) -> pd.DataFrame:
        cols = ["source_file", "source_row", "reason", "case_id", "stage"]
        return pd.DataFrame([asdict(e) for e in self.exclusions], columns=cols)

    def extend(self, other: "LoadResult") -> "LoadResult":
        self.records.extend(other.records)
        self.exclusions.extend(other.exclusions)
        return self

    def __len__(self) -> int:
        return len(self.records)


def handle_error(err: DataError, on_error: OnError, result: LoadResult,
                 case_id: str | None = None, stage: str = "load") -> None:
    """Raise ``err`` or record it as an exclusion, as the caller asked."""
    if on_error == "raise":
        raise err
    if on_error != "skip":
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    result.exclusions.append(Exclusion.from_error(err, case_id=case_id, stage=stage))


def check_unique_ids(records: Iterable[MassRecord]) -> None:
    """Raise :class:`DataError` (file and row) at the first repeated ``case_id``."""
    seen: dict[str, MassRecord] = {}
    for r in records:
        if r.case_id in seen:
            raise DataError(f"duplicate case_id {r.case_id!r} (also row {seen[r.case_id].source_row})",
                            r.source_file, r.source_row)
        seen[r.case_id] = r
