"""Pinning the input data: ``data_manifest.csv`` lists each file with its size and SHA-256.

Columns: ``dataset, relative_path, size_bytes, sha256, source, licence, notes``. A row with an
empty ``relative_path`` is a note (e.g. the synthetic phantom: generated, checked by its
determinism tests instead); a row with an empty ``sha256`` (e.g. registration-only BCDR files,
whose published hashes are unknown) can only be checked for presence and size.
:func:`generate_manifest` pins a lab's own copy; :func:`verify_manifest` checks a copy against it.
"""
from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Optional, Sequence

import pandas as pd

from mammo_lib.utils.progress import tqdm
from mammo_lib.utils.files import write_csv
from mammo_lib.data.records import DataError

__all__ = ["MANIFEST_COLUMNS", "VerifyReport", "canonical_dataset", "dataset_folder",
           "default_manifest_path", "generate_manifest", "read_manifest", "sha256_file", "verify_manifest"]

MANIFEST_COLUMNS = ["dataset", "relative_path", "size_bytes", "sha256", "source", "licence", "notes"]


def sha256_file(path: str | Path, chunk_size: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk_size), b""):
            digest.update(block)
    return digest.hexdigest()


def default_manifest_path() -> Path:
    """``data_manifest.csv`` of the project folder the package lives in (``<project>/mammo_lib/..``).

    An installed package (site-packages) has no project folder beside it: :class:`DataError`
    naming the expected path and ``--manifest``.
    """
    path = Path(__file__).resolve().parents[2] / "data_manifest.csv"
    if not path.is_file():
        raise DataError("no data_manifest.csv beside the mammo_lib package (installed without the project "
                        "folder?): pass --manifest with the project's data_manifest.csv or your own", path)
    return path


def _key(name: str) -> str:
    return "".join(ch for ch in str(name).lower() if ch.isalnum())


def canonical_dataset(name: str, known: Sequence[str]) -> str:
    """The entry of ``known`` that ``name`` spells, ignoring case, ``-``, ``_`` and spaces
    (``cbis-ddsm``, ``cbis_ddsm`` and ``CBIS-DDSM`` are one name); ValueError listing ``known``.

    >>> canonical_dataset("cbis_ddsm", ["BCDR-D01", "CBIS-DDSM"])
    'CBIS-DDSM'
    """
    hits = [k for k in known if _key(k) == _key(name)]
    if not hits:
        raise ValueError(f"unknown dataset {name!r}: use one of {', '.join(sorted(known))}")
    return hits[0]


def dataset_folder(root: str | Path, dataset: str, layout: Mapping[str, Path]) -> Path:
    """Where ``dataset`` lies under the data root ``root``: its folder in ``layout`` (dataset name ->
    folder relative to the root, :func:`mammo_lib.repro.config.data_layout`; e.g.
    ``root/BCDR/BCDR-D01_dataset``) when that exists, else ``root`` itself (a dataset's own folder,
    or a lab's dataset of another name)."""
    root = Path(root)
    sub = layout.get(canonical_dataset(dataset, list(layout))) if _key(dataset) in map(_key, layout) else None
    return root / sub if sub is not None and (root / sub).is_dir() else root


def read_manifest(manifest_csv: str | Path) -> pd.DataFrame:
    """Read a manifest as text (empty cells ""); :class:`DataError` on a missing column."""
    manifest_csv = Path(manifest_csv)
    if not manifest_csv.is_file():
        raise DataError("manifest not found", manifest_csv)
    what = f"not a manifest CSV (UTF-8 text with the columns {', '.join(MANIFEST_COLUMNS)})"
    try:
        text = manifest_csv.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise DataError(f"{what}: byte 0x{err.object[err.start]:02x} at offset {err.start} is not UTF-8 text",
                        manifest_csv) from err
    try:
        df = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise DataError(f"{what}: {type(err).__name__}: {' '.join(str(err).split())[:200]}", manifest_csv) from err
    missing = [c for c in MANIFEST_COLUMNS if c not in df.columns]
    if missing:
        raise DataError(f"missing required column(s) {missing}", manifest_csv)
    return df[MANIFEST_COLUMNS].fillna("").astype(str).apply(lambda c: c.str.strip())


def generate_manifest(root: str | Path, dataset: str, source: str, licence: str,
                      out_csv: str | Path | None = None, *, notes: str = "",
                      progress: bool = True) -> pd.DataFrame:
    """One row (size, SHA-256) per file under ``root``, paths relative to it, sorted.

    With ``out_csv`` the rows are written atomically; rows of *other* datasets already in
    ``out_csv`` are kept, those of ``dataset`` replaced. ``out_csv`` itself is never listed.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError("data root folder not found", root)
    if not dataset:
        raise ValueError("dataset must be a non-empty name")
    skip = Path(out_csv).resolve() if out_csv is not None else None
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.resolve() != skip)
    rows = [{"dataset": dataset, "relative_path": p.relative_to(root).as_posix(), "size_bytes": str(p.stat().st_size),
             "sha256": sha256_file(p), "source": source, "licence": licence, "notes": notes}
            for p in tqdm(files, desc=f"hashing {dataset}", unit="file", disable=not progress)]
    df = pd.DataFrame(rows, columns=MANIFEST_COLUMNS)
    if out_csv is not None:
        merged = df
        if Path(out_csv).is_file():
            old = read_manifest(out_csv)
            merged = pd.concat([old[old["dataset"] != dataset], df], ignore_index=True)
        write_csv(out_csv, merged)
    return df


@dataclass
class VerifyReport:
    """Outcome of :func:`verify_manifest`: relative paths by status, with a reason per altered file."""

    manifest: str
    root: str
    ok: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    altered: list[str] = field(default_factory=list)
    unchecked: list[str] = field(default_factory=list)
    reasons: dict[str, str] = field(default_factory=dict)

    def to_frame(self) -> pd.DataFrame:
        """One row per file: ``file, status, reason`` (status ok, missing, altered or unchecked)."""
        rows = [{"file": f, "status": status, "reason": self.reasons.get(f, "")}
                for status in ("ok", "missing", "altered", "unchecked") for f in getattr(self, status)]
        return pd.DataFrame(rows, columns=["file", "status", "reason"])

    @property
    def is_ok(self) -> bool:
        """No file missing or altered (unchecked files do not count against it)."""
        return not (self.missing or self.altered)

    def raise_if_bad(self) -> None:
        """:class:`DataError` naming every missing and altered file."""
        if self.is_ok:
            return
        parts = []
        if self.missing:
            parts.append(f"{len(self.missing)} missing: {', '.join(self.missing)}")
        if self.altered:
            parts.append(f"{len(self.altered)} altered: "
                         + ", ".join(f"{p} ({self.reasons[p]})" for p in self.altered))
        raise DataError(f"data under {self.root} does not match the manifest; " + "; ".join(parts), self.manifest)


def verify_manifest(manifest_csv: str | Path, root: str | Path, dataset: Optional[str] = None, *,
                    progress: bool = False) -> VerifyReport:
    """Check the files of ``dataset`` (all datasets when None) under ``root`` against the manifest.

    A file is *missing* when absent, *altered* when its size or SHA-256 differs, *unchecked*
    when present but the manifest has no SHA-256 for it (its size is still compared when
    known), else *ok*. Note rows (empty ``relative_path``) are skipped. An unknown ``dataset``
    raises ValueError; its spelling may differ in case, ``-`` and ``_`` (:func:`canonical_dataset`).
    """
    df = read_manifest(manifest_csv)
    if dataset is not None:
        known = sorted(set(df["dataset"]))
        if _key(dataset) not in map(_key, known):
            raise ValueError(f"dataset {dataset!r} not in {manifest_csv} (has {known})")
        dataset = canonical_dataset(dataset, known)
        df = df[df["dataset"] == dataset]
    root = Path(root)
    report = VerifyReport(manifest=str(manifest_csv), root=str(root))
    rows = [r for r in df.to_dict("records") if r["relative_path"]]
    for row in tqdm(rows, desc="verifying", unit="file", disable=not progress):
        rel = row["relative_path"]
        path = root / rel
        if not path.is_file():
            report.missing.append(rel)
            continue
        size = path.stat().st_size
        if row["size_bytes"] and int(row["size_bytes"]) != size:
            report.altered.append(rel)
            report.reasons[rel] = f"size {size} != {row['size_bytes']}"
        elif not row["sha256"]:
            report.unchecked.append(rel)
        elif sha256_file(path) != row["sha256"].lower():
            report.altered.append(rel)
            report.reasons[rel] = "sha256 differs"
        else:
            report.ok.append(rel)
    return report
