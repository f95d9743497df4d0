"""Records shared by every dataset loader: one :class:`MassRecord` per mass.

A loader never drops a row silently: a row it cannot use either raises a
:class:`DataError` naming the file and row, or (with ``on_error="skip"``) becomes
an :class:`Exclusion` with its reason in the :class:`LoadResult`.
"""
from __future__ import annotations

import csv

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Literal, Optional

if TYPE_CHECKING:
    import pandas as pd


#: Integer class labels used everywhere in the package.
BENIGN, MALIGNANT = 0, 1
LABEL_NAMES = {BENIGN: "benign", MALIGNANT: "malignant"}

OnError = Literal["raise", "skip"]


class DataError(ValueError):
    """Bad input, reported with the file and (1-based, header = row 1) CSV row it came from.

    ``line`` is the physical line on which that row starts, given when it differs from ``row``
    (a quoted value with an embedded newline makes a row span two lines): ``row 12 (line 14)``.
    """

    def __init__(self, message: str, file: str | Path | None = None, row: int | None = None,
                 line: int | None = None):
        self.reason = message
        self.file = None if file is None else str(file)
        self.row = row
        self.line = line if line != row else None
        at = "" if row is None else f"row {row}" + ("" if self.line is None else f" (line {self.line})")
        where = ""
        if self.file is not None:
            where = self.file + (f", {at}" if at else "") + ": "
        elif at:
            where = f"{at}: "
        super().__init__(where + message)


class DamagedCacheError(OSError):
    """A cache or checkpoint file that exists but cannot be read back whole; the message names it
    (the caller warns and rebuilds: docs/DECISIONS.md "Data-side fault cases")."""


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
    source_line: Optional[int] = None

    @classmethod
    def from_error(cls, err: DataError, case_id: str | None = None, stage: str = "load") -> "Exclusion":
        return cls(source_file=err.file or "", source_row=err.row, reason=err.reason,
                   case_id=case_id, stage=stage, source_line=getattr(err, "line", None))


@dataclass
class LoadResult:
    """What a loader returns: the usable records and the recorded exclusions."""

    records: list[MassRecord] = field(default_factory=list)
    exclusions: list[Exclusion] = field(default_factory=list)

    def to_frame(self) -> "pd.DataFrame":
        import pandas as pd

        return pd.DataFrame([r.to_row() for r in self.records])

    def exclusions_frame(self) -> "pd.DataFrame":
        import pandas as pd

        cols = ["source_file", "source_row", "reason", "case_id", "stage", "source_line"]
        return pd.DataFrame([asdict(e) for e in self.exclusions], columns=cols)

    def extend(self, other: "LoadResult") -> "LoadResult":
        self.records.extend(other.records)
        self.exclusions.extend(other.exclusions)
        return self

    def __len__(self) -> int:
        return len(self.records)


def check_on_error(on_error: object) -> None:
    """``ValueError`` unless ``on_error`` is ``"raise"`` or ``"skip"``: checked when a loader starts,
    not when its first bad row comes.

    >>> check_on_error("skip")
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")


def handle_error(err: DataError, on_error: OnError, result: LoadResult,
                 case_id: str | None = None, stage: str = "load") -> None:
    """Raise ``err`` or record it as an exclusion, as the caller asked."""
    if on_error == "raise":
        raise err
    if on_error != "skip":
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    result.exclusions.append(Exclusion.from_error(err, case_id=case_id, stage=stage))


def csv_record_lines(csv_file: str | Path) -> Optional[list[int]]:
    """The physical line (1-based) on which each data row of a CSV starts, blank lines skipped as
    pandas skips them; None when the file cannot be read this way."""
    try:
        with open(csv_file, newline="", encoding="utf-8", errors="replace") as fh:
            reader = csv.reader(fh)
            starts, end = [], 0
            for values in reader:
                start, end = end + 1, reader.line_num
                if values:
                    starts.append(start)
    except (OSError, csv.Error):
        return None
    return starts[1:]  # the first non-blank record is the header


RowBuilder = Callable[[dict[str, str], int], MassRecord]
#: ``exclude(record, row) -> (reason, stage)`` for a valid row that is left out by choice, else None.
RowFilter = Callable[[MassRecord, dict[str, str]], Optional[tuple[str, str]]]


def load_rows(rows: list[dict[str, str]], csv_file: str | Path, build: RowBuilder, on_error: OnError,
              result: LoadResult, *, exclude: Optional[RowFilter] = None,
              id_column: Optional[str] = None) -> list[MassRecord]:
    """The one row loop of every CSV loader (CBIS-DDSM, BCDR, generic).

    Row ``i`` (0-based) of ``rows`` is spreadsheet row ``i + 2``; ``build(row, row_no)`` returns its
    record or raises :class:`DataError`. A repeated ``case_id`` is an error naming the first row.
    Errors raise or (``on_error="skip"``) become exclusions, with the physical line when a row
    does not start on line ``row_no`` (:func:`csv_record_lines`; the record's ``meta`` then holds
    ``source_line``). ``exclude`` may leave valid rows out with a recorded reason and stage.
    Returns the records kept (the caller appends them to ``result.records``).

    >>> load_rows([], "none.csv", lambda row, n: None, "raise", LoadResult())
    []
    """
    check_on_error(on_error)
    csv_file = Path(csv_file)
    lines = csv_record_lines(csv_file) if rows else None
    if lines is not None and len(lines) != len(rows):
        lines = None  # a layout this count cannot follow: report rows only
    kept: list[MassRecord] = []
    seen: dict[str, int] = {}
    for i, row in enumerate(rows):
        row_no = i + 2
        line = None if lines is None or lines[i] == row_no else lines[i]
        try:
            rec = build(row, row_no)
            if rec.case_id in seen:
                raise DataError(f"duplicate case_id {rec.case_id!r} (also row {seen[rec.case_id]})", csv_file, row_no)
        except DataError as err:
            if line is not None and err.row == row_no and err.line is None:
                err = DataError(err.reason, err.file, err.row, line=line)
            handle_error(err, on_error, result, case_id=(row.get(id_column) or None) if id_column else None)
            continue
        seen[rec.case_id] = row_no
        if line is not None:
            rec.meta["source_line"] = line
        if exclude is not None:
            why = exclude(rec, row)
            if why is not None:
                result.exclusions.append(Exclusion(str(csv_file), row_no, why[0], case_id=rec.case_id,
                                                   stage=why[1], source_line=line))
                continue
        kept.append(rec)
    return kept


def check_unique_ids(records: Iterable[MassRecord]) -> None:
    """Raise :class:`DataError` (file and row) at the first repeated ``case_id``."""
    seen: dict[str, MassRecord] = {}
    for r in records:
        if r.case_id in seen:
            raise DataError(f"duplicate case_id {r.case_id!r} (also row {seen[r.case_id].source_row})",
                            r.source_file, r.source_row)
        seen[r.case_id] = r
