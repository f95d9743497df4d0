"""CBIS-DDSM mass subset (TCIA, CC BY 3.0): description CSVs and, optionally, the DICOM tree.

Sec. 3.1. One :class:`~mammo_lib.data.records.MassRecord` per CSV row (abnormality):

* label from ``pathology``: MALIGNANT -> 1; BENIGN and BENIGN_WITHOUT_CALLBACK -> 0;
* split from the file name (``mass_case_description_{train,test}_set.csv``) or a ``split`` column;
* ``case_id = f"{patient_id}_{LEFT|RIGHT}_{CC|MLO}_{abnormality id}"``, with ``_{split}`` appended
  when the same id occurs in more than one file.

Without ``dicom_root`` the records hold the CSV's relative paths (metadata only). With it, files
are found by *series UID*, because TCIA downloads rename folders: the folders holding ``.dcm``
files are indexed once by the UID in their name or, failing that, by the SeriesInstanceUID in the
header of a file inside. The ROI mask is told from the cropped image by content: among the files
of the cropped-image and ROI-mask series, it is the one whose size (Rows x Columns, from the
header) is closest to the full mammogram's and within ``mask_size_tolerance``; when several
qualify, the one with binary pixels.
"""
from __future__ import annotations

import os
import re
from collections import Counter, defaultdict
from pathlib import Path
from typing import Optional, Sequence

import pandas as pd

from mammo_lib.utils.progress import tqdm
from mammo_lib.data.generic_csv import read_csv_strings
from mammo_lib.data.images import binary_mask, read_dicom_header, read_image
from mammo_lib.data.records import (BENIGN, MALIGNANT, DataError, LoadResult, MassRecord, OnError,
                      check_on_error, handle_error, load_rows)

__all__ = ["PATHOLOGY_LABELS", "REQUIRED_COLUMNS", "SeriesIndex", "label_counts", "load_cbis_ddsm",
           "read_description_csv", "split_from_filename"]

DATASET = "CBIS-DDSM"

#: ``pathology`` -> label (Sec. 3.1: BENIGN_WITHOUT_CALLBACK is benign).
PATHOLOGY_LABELS = {"MALIGNANT": MALIGNANT, "BENIGN": BENIGN, "BENIGN_WITHOUT_CALLBACK": BENIGN}

IMAGE_COL, CROP_COL, ROI_COL = "image file path", "cropped image file path", "ROI mask file path"
REQUIRED_COLUMNS = ("patient_id", "left or right breast", "image view", "abnormality id", "pathology",
                    IMAGE_COL, CROP_COL, ROI_COL)

#: Ordinal columns kept as integers in ``meta``.
_INT_META = {"breast_density", "assessment", "subtlety"}

_SPLIT_RE = re.compile(r"(?:^|[_\-.])(train|training|test)(?:[_\-.]|$)", re.IGNORECASE)
#: A DICOM UID: numeric components separated by dots, at least five of them (TCIA's
#: renamed folders such as "1.000000-full mammogram images-12345" do not qualify).
_UID_RE = re.compile(r"(?<![\d.])([0-2](?:\.(?:0|[1-9]\d*)){4,})(?![\d.])")


def split_from_filename(path: str | Path) -> Optional[str]:
    """'train' or 'test' from a CBIS-DDSM CSV name such as ``mass_case_description_train_set.csv``."""
    m = _SPLIT_RE.search(Path(path).stem)
    if m is None:
        return None
    return "test" if m.group(1).lower() == "test" else "train"


def read_description_csv(csv_file: str | Path) -> pd.DataFrame:
    """Read a description CSV as stripped text (path values end in a quoted embedded newline)."""
    return read_csv_strings(csv_file, REQUIRED_COLUMNS)


def _uid_in_name(name: str) -> Optional[str]:
    m = _UID_RE.search(name)
    return m.group(1) if m else None


class SeriesIndex:
    """Series UID -> ``.dcm`` files under a root, built once by walking the tree.

    A folder's series UID is the UID-looking token in its name; otherwise the SeriesInstanceUID
    in the header of the first readable ``.dcm`` file inside (TCIA renamed folders). A folder
    whose UID cannot be told raises :class:`DataError`, or with ``on_error="skip"`` is listed in
    ``unreadable`` (folder -> reason) and reported with any series that is then not found.
    """

    def __init__(self, root: str | Path, *, on_error: OnError = "raise", progress: bool = True):
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError("DICOM root folder not found", self.root)
        self.files: dict[str, list[Path]] = defaultdict(list)
        self.unreadable: dict[Path, str] = {}
        walk = os.walk(self.root)
        for folder, _dirs, names in tqdm(walk, desc="indexing DICOM folders", unit="dir", disable=not progress):
            paths = [Path(folder) / n for n in sorted(names) if n.lower().endswith(".dcm")]
            if not paths:
                continue
            try:
                uid = _uid_in_name(Path(folder).name) or self._uid_from_headers(paths)
            except DataError as err:
                if on_error == "raise":
                    raise
                self.unreadable[Path(folder)] = str(err)  # names the file
                continue
            self.files[uid].extend(paths)

    @staticmethod
    def _uid_from_headers(paths: list[Path]) -> str:
        """The SeriesInstanceUID of the first readable file; a header with neither a UID nor
        Rows/Columns (e.g. a file cut to 200 bytes, which pydicom reads without complaint) counts
        as an unreadable file, and the error names the first such file."""
        errors: list[tuple[Path, str]] = []
        for path in paths:
            try:
                ds = read_dicom_header(path)
            except DataError as err:
                errors.append((path, f"unreadable DICOM file ({err.reason})"))
                continue
            uid = str(getattr(ds, "SeriesInstanceUID", "")).strip()
            if uid:
                return uid
            if "Rows" not in ds or "Columns" not in ds:
                errors.append((path, f"unreadable DICOM file (header of {path.stat().st_size} bytes holds no "
                                     "SeriesInstanceUID, Rows or Columns: truncated?)"))
            else:
                errors.append((path, "DICOM header holds no SeriesInstanceUID"))
        path, reason = errors[0]
        raise DataError(f"{reason}; the folder name holds no series UID either", path)

    def __len__(self) -> int:
        return len(self.files)

    def get(self, uid: str) -> list[Path]:
        return self.files.get(uid, [])

    def unreadable_under(self, rel_path: str) -> list[str]:
        """Reasons of the unindexed folders below the subject folder of a CSV path (its first
        component, e.g. ``Mass-Training_P_00001_LEFT_CC``): the ones that may hold its series."""
        parts = [p for p in rel_path.replace("\\", "/").split("/") if p]
        if not parts:
            return []
        out = []
        for folder, reason in self.unreadable.items():
            try:
                rel = folder.relative_to(self.root).parts
            except ValueError:
                continue
            if rel and rel[0] == parts[0]:
                out.append(reason)
        return out


def _series_uid(rel_path: str) -> str:
    """The series UID of a CSV path ``<first>/<study uid>/<series uid>/<file>.dcm``."""
    parts = [p for p in rel_path.replace("\\", "/").split("/") if p]
    if len(parts) < 2:
        raise ValueError(f"path {rel_path!r} has no series folder")
    return parts[-2]


class _Resolver:
    """Finds the full image and its ROI mask for a row, caching DICOM headers."""

    def __init__(self, index: SeriesIndex, tolerance: float):
        self.index, self.tolerance = index, tolerance
        self._shapes: dict[Path, tuple[int, int]] = {}

    def shape(self, path: Path) -> tuple[int, int]:
        if path not in self._shapes:
            ds = read_dicom_header(path)
            try:
                self._shapes[path] = (int(ds.Rows), int(ds.Columns))
            except AttributeError as err:
                raise DataError("DICOM header has no Rows/Columns", path) from err
        return self._shapes[path]

    def series_files(self, rel_path: str, column: str) -> list[Path]:
        try:
            uid = _series_uid(rel_path)
        except ValueError as err:
            raise DataError(f"{column!r}: {err}") from err
        files = self.index.get(uid)
        if not files:
            unreadable = self.index.unreadable_under(rel_path)  # only folders that may hold this series
            hint = ""
            if unreadable:
                hint = (f"; {len(unreadable)} folder(s) of this subject could not be indexed: "
                        f"{unreadable[0]}")
            raise DataError(f"series {uid} of {column!r} ({rel_path}) not found under {self.index.root}{hint}")
        return files

    def full_image(self, rel_path: str) -> Path:
        files = self.series_files(rel_path, IMAGE_COL)
        if len(files) == 1:
            return files[0]
        wanted = rel_path.replace("\\", "/").rsplit("/", 1)[-1]
        named = [f for f in files if f.name == wanted]
        if len(named) == 1:
            return named[0]
        raise DataError(f"full-image series of {rel_path} holds {len(files)} files; cannot tell which "
                        "is the mammogram")

    def mask(self, crop_rel: str, roi_rel: str, image_shape: tuple[int, int]) -> Path:
        """The ROI mask among the files of both series; one missing series is named beside what
        the other holds (TCIA often keeps crop and mask in one series)."""
        found: list[Path] = []
        missing: list[str] = []
        for rel, col in ((crop_rel, CROP_COL), (roi_rel, ROI_COL)):
            try:
                found += self.series_files(rel, col)
            except DataError as err:
                missing.append(err.reason)
        if not found:
            raise DataError("; ".join(missing))
        candidates = list(dict.fromkeys(found))
        h, w = image_shape
        scored = []
        for path in candidates:
            r, c = self.shape(path)
            rel = max(abs(r - h) / h, abs(c - w) / w)
            scored.append((rel, str(path), path))
        scored.sort()
        close = [s for s in scored if s[0] <= self.tolerance]
        if not close:
            sizes = ", ".join(f"{p.name} {self.shape(p)[0]}x{self.shape(p)[1]}" for _, _, p in scored)
            raise DataError(f"no ROI mask of the full image's size {h}x{w} (within {self.tolerance:.0%}) "
                            f"among {sizes}" + "".join(f"; {m}" for m in missing))
        if len(close) == 1:
            return close[0][2]
        binary = [s for s in close if _is_binary(s[2])]
        if len(binary) == 1:
            return binary[0][2]
        raise DataError(f"{len(binary)} of {len(close)} image-sized files are binary; cannot tell the ROI mask "
                        f"({', '.join(s[1] for s in close)})")


def _is_binary(path: Path) -> bool:
    try:
        binary_mask(read_image(path), path)
    except DataError:
        return False
    return True


def _row_record(row: dict[str, str], csv_file: Path, row_no: int, split: Optional[str]) -> MassRecord:
    """Validate one CSV row and build its record (paths still the CSV's relative paths)."""
    def need(col: str) -> str:
        value = row[col]
        if not value:
            raise DataError(f"empty value in column {col!r}", csv_file, row_no)
        return value

    patient = need("patient_id")
    side = need("left or right breast").upper()
    if side not in ("LEFT", "RIGHT"):
        raise DataError(f"unknown breast side {side!r} (expected LEFT or RIGHT)", csv_file, row_no)
    view = need("image view").upper()
    if view not in ("CC", "MLO"):
        raise DataError(f"unknown image view {view!r} (expected CC or MLO)", csv_file, row_no)
    abn = need("abnormality id")
    if not abn.isdigit():
        raise DataError(f"abnormality id {abn!r} is not a positive integer", csv_file, row_no)
    pathology = need("pathology").upper()
    if pathology not in PATHOLOGY_LABELS:
        raise DataError(f"unknown pathology {pathology!r} (expected one of {sorted(PATHOLOGY_LABELS)})",
                        csv_file, row_no)
    abn_type = row.get("abnormality type", "mass")
    if abn_type and abn_type.lower() != "mass":
        raise DataError(f"abnormality type {abn_type!r} is not a mass", csv_file, row_no)
    paths = {col: need(col) for col in (IMAGE_COL, CROP_COL, ROI_COL)}
    meta: dict[str, object] = {"side": side, "view": view, "abnormality_id": int(abn), "pathology": pathology}
    for col, value in row.items():
        if col not in ("patient_id", "left or right breast", "image view", "abnormality id", "pathology", "split"):
            key = re.sub(r"\W+", "_", col.strip().lower())
            meta[key] = int(value) if key in _INT_META and value.isdigit() else value
    return MassRecord(case_id=f"{patient}_{side}_{view}_{int(abn)}", dataset=DATASET, patient_id=patient,
                      label=PATHOLOGY_LABELS[pathology], image_path=paths[IMAGE_COL],
                      mask_path=paths[ROI_COL], source_file=str(csv_file), source_row=row_no,
                      split=split, meta=meta)


def load_cbis_ddsm(csv_files: Sequence[str | Path] | str | Path, dicom_root: str | Path | None = None, *,
                   on_error: OnError = "raise", mask_size_tolerance: float = 0.05,
                   progress: bool = True) -> LoadResult:
    """Load CBIS-DDSM mass description CSVs (Sec. 3.1) into records.

    ``source_row`` is the spreadsheet row (header = 1). A missing required column always raises
    :class:`DataError` (file named, row None); a bad row raises or, with ``on_error="skip"``,
    becomes an :class:`~mammo_lib.data.records.Exclusion`. With ``dicom_root`` each record's
    ``image_path``/``mask_path`` are resolved DICOM files and ``meta`` gains ``image_size`` and
    ``mask_size``; a mask size differing by up to ``mask_size_tolerance`` is accepted here and
    resized (with a note) by :func:`mammo_lib.data.images.load_record`.
    """
    check_on_error(on_error)
    if isinstance(csv_files, (str, Path)):
        csv_files = [csv_files]
    if not csv_files:
        raise ValueError("csv_files is empty")
    resolved = [Path(f).resolve() for f in csv_files]
    if len(set(resolved)) != len(resolved):
        raise ValueError(f"csv_files lists a file more than once: {[str(f) for f in csv_files]}")
    result = LoadResult()
    rows: list[MassRecord] = []
    for csv_file in map(Path, csv_files):
        df = read_description_csv(csv_file)
        file_split = split_from_filename(csv_file)

        def build(row: dict[str, str], row_no: int, csv_file: Path = csv_file,
                  file_split: Optional[str] = file_split) -> MassRecord:
            split = row["split"].lower() if row.get("split") else file_split
            return _row_record(row, csv_file, row_no, split)

        rows.extend(load_rows(df.to_dict("records"), csv_file, build, on_error, result))

    # the same patient/side/view/abnormality in two files: keep both, tell them apart by split
    files_per_id = defaultdict(set)
    for rec in rows:
        files_per_id[rec.case_id].add(rec.source_file)
    for rec in rows:
        if len(files_per_id[rec.case_id]) > 1:
            rec.case_id = f"{rec.case_id}_{rec.split or Path(rec.source_file).stem}"
    counts = Counter(r.case_id for r in rows)
    for rec in [r for r in rows if counts[r.case_id] > 1]:
        handle_error(DataError(f"case_id {rec.case_id!r} occurs in several files even with the split appended",
                               rec.source_file, rec.source_row, rec.meta.get("source_line")), on_error, result,
                     case_id=rec.case_id)
    rows = [r for r in rows if counts[r.case_id] == 1]

    if dicom_root is None:
        result.records.extend(rows)
        return result

    resolver = _Resolver(SeriesIndex(dicom_root, on_error=on_error, progress=progress), mask_size_tolerance)
    for rec in tqdm(rows, desc="resolving CBIS-DDSM files", unit="row", disable=not progress):
        try:
            image = resolver.full_image(rec.meta["image_file_path"])
            image_shape = resolver.shape(image)
            mask = resolver.mask(rec.meta["cropped_image_file_path"], rec.meta["roi_mask_file_path"], image_shape)
        except DataError as err:
            where = f" [{err.file}]" if err.file else ""
            handle_error(DataError(err.reason + where, rec.source_file, rec.source_row, rec.meta.get("source_line")),
                         on_error, result, case_id=rec.case_id)
            continue
        rec.image_path, rec.mask_path = str(image), str(mask)
        rec.meta["image_size"] = image_shape
        rec.meta["mask_size"] = resolver.shape(mask)
        result.records.append(rec)
    return result


def label_counts(result: LoadResult) -> pd.DataFrame:
    """Rows per split and pathology (a check against the published counts)."""
    df = result.to_frame()
    return pd.crosstab(df["split"], df["meta_pathology"]) if len(df) else pd.DataFrame()

