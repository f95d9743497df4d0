"""Cached, parallel ROI extraction for a list of :class:`~mammo_lib.data.records.MassRecord` (Sec. 3.2).

:func:`preprocess` loads every record (``mammo_lib.data.images.load_record``), extracts its ROI with
:func:`mammo_lib.data.roi.extract_roi` in worker processes, and returns a :class:`RoiSet`.

Cache layout under ``cache_dir``::

    <variant>-<size>-<key[:16]>/             complete result (RoiSet.save; appears by one rename)
    .partial-<variant>-<size>-<key[:16]>/    successful records of an unfinished run
        000000.npz ...                        (each written atomically; a rerun resumes from them,
                                              failed records are retried; removed when complete)

``key`` is the SHA-256 of the parameters, of the source of ``roi.py``, ``preprocess.py`` and the
loader's module, and, for every record, of its fields, image / mask paths with their file size
and ``mtime_ns``, and its outline: a changed parameter, code or touched input file gives a new
key and a fresh computation (old folders are left in place; delete ``cache_dir`` to reclaim).  ``on_error`` is not part of the key: a cached set
that holds ROI-stage exclusions raises when loaded with ``on_error="raise"``.
"""
from __future__ import annotations

import hashlib
import inspect
import json
import os
import shutil
import sys
import warnings
import zipfile
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import pandas as pd

from mammo_lib.utils.files import atomic_dir, atomic_write
from mammo_lib.utils.progress import tqdm
from mammo_lib.data.images import DEFAULT_INTENSITY, INTENSITY_MODES
from mammo_lib.data.records import DamagedCacheError, DataError, Exclusion, MassRecord, OnError, check_unique_ids
from mammo_lib.data.roi import MIN_ROI_SIZE, RANDOM_VARIANTS, VARIANTS, Variant, extract_roi

#: Bump when the ROI computation changes, so that old caches are not reused.
CACHE_VERSION = 1

INDEX_COLUMNS = ["case_id", "patient_id", "label", "split", "dataset", "source_file", "source_row",
                 "variant", "box_y0", "box_x0", "box_y1", "box_x1", "bbox_y0", "bbox_x0", "bbox_y1",
                 "bbox_x1", "pad_top", "pad_bottom", "pad_left", "pad_right", "padded", "notes"]
EXCLUSION_COLUMNS = ["source_file", "source_row", "reason", "case_id", "stage"]
_STR_COLUMNS = ["case_id", "patient_id", "split", "dataset", "source_file", "variant", "notes"]

_EXCL_STR_COLUMNS = ["source_file", "reason", "case_id", "stage"]
_FILES = ("arrays.npz", "index.csv", "exclusions.csv", "params.json")
#: Members every per-record file of an unfinished run holds (:func:`_process_one`).
_PARTIAL_MEMBERS = ("meta", "image", "mask")

#: What reading a damaged ``.npz`` raises (truncated zip, torn member, bad pickle-free header).
_NPZ_ERRORS: tuple[type[BaseException], ...] = (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile)
#: The ``intensity`` values the default loader accepts (``mammo_lib.data.images.INTENSITY_MODES``).
_INTENSITIES = INTENSITY_MODES

#: ``loader(rec, intensity=...) -> LoadedCase`` (``image``, ``mask``, ``notes``, ``confounders``).
Loader = Callable[..., Any]


def _normalise(df: pd.DataFrame, str_columns: Sequence[str], optional: Sequence[str]) -> pd.DataFrame:
    """One dtype per column whether built or read from CSV: text as ``str`` with NaN for missing
    (``""`` in the ``optional`` columns means missing), ``source_row`` as nullable ``Int64``."""
    for c in str_columns:
        if c in df.columns:
            col = df[c].astype("str")
            df[c] = col.mask(col == "") if c in optional else col
    if "source_row" in df.columns:
        df["source_row"] = df["source_row"].astype("Int64")
    return df


def _exclusions_frame(exclusions: Sequence[Exclusion] = ()) -> pd.DataFrame:
    df = pd.DataFrame([vars(e) for e in exclusions], columns=EXCLUSION_COLUMNS)
    return _normalise(df, _EXCL_STR_COLUMNS, ["case_id"])


@dataclass
class RoiSet:
    """ROIs of many records: ``index`` has one row per ROI (columns :data:`INDEX_COLUMNS`),
    aligned with ``images`` (N, S, S) float32 in [0, 1], ``masks`` (N, S, S) uint8 {0, 1} and,
    for phantom data, ``confounders`` (N, S, S) uint8 labels.  ``exclusions`` lists the records
    left out (columns of :class:`~mammo_lib.data.records.Exclusion`); ``params`` how the set was made."""

    index: pd.DataFrame
    images: np.ndarray
    masks: np.ndarray
    confounders: Optional[np.ndarray] = None
    exclusions: pd.DataFrame = field(default_factory=_exclusions_frame)
    params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.index)
        arrays = {"images": self.images, "masks": self.masks, "confounders": self.confounders}
        for name, arr in arrays.items():
            if arr is not None and (arr.ndim != 3 or arr.shape[0] != n):
                raise ValueError(f"RoiSet.{name} must have shape (N={n}, S, S), got {arr.shape}")
        if self.masks.shape != self.images.shape:
            raise ValueError(f"RoiSet.masks shape {self.masks.shape} != images shape {self.images.shape}")
        if "case_id" not in self.index.columns:
            raise ValueError("RoiSet.index needs a 'case_id' column")

    def __len__(self) -> int:
        return len(self.index)

    @property
    def labels(self) -> np.ndarray:
        """Integer labels (0 benign, 1 malignant), one per ROI."""
        return self.index["label"].to_numpy(dtype=np.int64)

    @property
    def groups(self) -> np.ndarray:
        """Patient ids, for patient-grouped splits."""
        return self.index["patient_id"].astype(str).to_numpy()

    def subset(self, idx: np.ndarray | Sequence[int] | Sequence[bool]) -> "RoiSet":
        """The ROIs at integer positions ``idx`` (in that order) or where a boolean mask is True."""
        idx = np.asarray(idx)
        if idx.dtype == bool:
            if idx.shape != (len(self),):
                raise ValueError(f"boolean subset mask has shape {idx.shape}, expected ({len(self)},)")
            idx = np.flatnonzero(idx)
        elif idx.size == 0:
            idx = idx.astype(np.int64)
        elif not np.issubdtype(idx.dtype, np.integer):
            raise TypeError(f"subset takes integer positions or a boolean mask, got dtype {idx.dtype}")
        if idx.size and (idx.min() < -len(self) or idx.max() >= len(self)):
            raise IndexError(f"subset position out of range for a RoiSet of {len(self)}")
        conf = None if self.confounders is None else self.confounders[idx]
        return RoiSet(index=self.index.iloc[idx].reset_index(drop=True), images=self.images[idx],
                      masks=self.masks[idx], confounders=conf, exclusions=self.exclusions.copy(),
                      params=dict(self.params))

    def by_case_ids(self, ids: Sequence[str]) -> "RoiSet":
        """The ROIs of ``ids``, in the given order; KeyError names the first unknown id."""
        pos = {cid: i for i, cid in enumerate(self.index["case_id"])}
        missing = [cid for cid in ids if cid not in pos]
        if missing:
            raise KeyError(f"case_id {missing[0]!r} not in this RoiSet ({len(missing)} missing)")
        return self.subset(np.array([pos[cid] for cid in ids], dtype=np.int64))

    def save(self, directory: str | Path) -> Path:
        """Write ``arrays.npz``, ``index.csv``, ``exclusions.csv``, ``params.json`` atomically."""
        directory = Path(directory)

        def write(tmp: Path) -> None:
            arrays = {"images": self.images, "masks": self.masks}
            if self.confounders is not None:
                arrays["confounders"] = self.confounders
            np.savez(tmp / "arrays.npz", **arrays)
            self.index.to_csv(tmp / "index.csv", index=False)
            self.exclusions.to_csv(tmp / "exclusions.csv", index=False)
            (tmp / "params.json").write_text(json.dumps(self.params, indent=2, sort_keys=True, default=str))

        atomic_dir(directory, write)
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> "RoiSet":
        """Read a folder written by :meth:`save`; a damaged ``arrays.npz`` raises
        :class:`~mammo_lib.data.records.DamagedCacheError` naming it."""
        directory = Path(directory)
        missing = [f for f in _FILES if not (directory / f).is_file()]
        if missing:
            raise FileNotFoundError(f"{directory} is not a complete RoiSet folder (missing {missing})")
        try:
            with np.load(directory / "arrays.npz") as z:
                images, masks = z["images"], z["masks"]
                conf = z["confounders"] if "confounders" in z.files else None
        except _NPZ_ERRORS as err:
            raise DamagedCacheError(f"damaged file {directory / 'arrays.npz'} ({type(err).__name__}: {err})") from err
        index = pd.read_csv(directory / "index.csv", keep_default_na=False, na_values={"source_row": [""]},
                            dtype={c: str for c in _STR_COLUMNS})
        index = _normalise(index, _STR_COLUMNS, ["split"])
        excl = pd.read_csv(directory / "exclusions.csv", keep_default_na=False, na_values={"source_row": [""]},
                           dtype={c: str for c in _EXCL_STR_COLUMNS})
        excl = _normalise(excl, _EXCL_STR_COLUMNS, ["case_id"])
        params = json.loads((directory / "params.json").read_text())
        return cls(index=index, images=images, masks=masks, confounders=conf, exclusions=excl, params=params)


# --------------------------------------------------------------------------------------------
# cache key and per-record work


def _file_stamp(path: Optional[str]) -> Optional[list]:
    if path is None:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return [str(path), None, None]
    return [str(path), st.st_size, st.st_mtime_ns]


def cache_key(records: Sequence[MassRecord], params: dict[str, Any]) -> str:
    """SHA-256 over ``params`` and each record's fields, input file size + mtime and outline."""
    h = hashlib.sha256()
    h.update(json.dumps(params, sort_keys=True, default=str).encode())
    for rec in records:
        entry = [rec.case_id, rec.patient_id, int(rec.label), rec.split, rec.dataset, rec.source_file,
                 rec.source_row, _file_stamp(rec.image_path), _file_stamp(rec.mask_path),
                 None if rec.outline is None else [list(map(float, v)) for v in rec.outline]]
        h.update(json.dumps(entry, default=str).encode())
    return h.hexdigest()


def _process_one(i: int, rec: MassRecord, loader: Loader, params: dict[str, Any],
                 partial_dir: str) -> tuple[int, Optional[str]]:
    """Load record ``i``, extract its ROI and store it atomically as ``<partial_dir>/<i>.npz``.

    Returns ``(i, None)``, or ``(i, reason)`` when loading or ROI extraction failed."""
    meta: dict[str, Any]
    arrays: dict[str, np.ndarray] = {}
    try:
        case = loader(rec, intensity=params["intensity"])
        rng = (np.random.default_rng([params["seed"], i]) if params["variant"] in RANDOM_VARIANTS else None)
        conf = getattr(case, "confounders", None)
        roi = extract_roi(case.image, case.mask, variant=params["variant"], size=params["size"],
                          min_context=params["min_context"], rng=rng, anti_aliasing=params["anti_aliasing"],
                          aux=None if conf is None else {"confounders": conf})
        if not roi.mask.any():
            raise DataError(f"ROI mask is empty after resizing the {roi.box.h}x{roi.box.w} crop to "
                            f"{params['size']}x{params['size']} (mass of {int(np.count_nonzero(case.mask))} "
                            "pixel(s) too small for this ROI size)", rec.source_file, rec.source_row)
        arrays = {"image": roi.image, "mask": roi.mask}
        if roi.aux is not None:
            arrays["confounders"] = roi.aux["confounders"].astype(np.uint8)
        meta = {"box": list(roi.box.as_tuple()), "bbox": list(roi.bbox.as_tuple()),
                "pad": list(roi.pad), "padded": roi.padded, "notes": ";".join(getattr(case, "notes", []) or [])}
    except (ValueError, OSError) as err:  # DataError is a ValueError
        reason = getattr(err, "reason", None) or str(err)
        if isinstance(err, DataError) and err.file is not None and err.file != rec.source_file:
            reason = f"{err.file}: {reason}"
        return i, f"{type(err).__name__}: {reason}"  # failures are not stored: a rerun retries them
    path = Path(partial_dir) / f"{i:06d}.npz"
    atomic_write(path, lambda tmp: np.savez(tmp, meta=np.array(json.dumps(meta)), **arrays), suffix=".npz")
    return i, None


#: Thread limits a worker keeps for its lifetime (see :func:`worker_init`).
_THREAD_LIMITS: list[Any] = []


def worker_init() -> None:
    """Pool initializer: one BLAS / OpenMP / torch thread per worker, so that N workers use N
    cores instead of N x cores threads competing for them (docs/DECISIONS.md, "Preprocessing
    workers"). The results do not depend on thread counts."""
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = "1"  # libraries loaded later in this worker
    try:
        from threadpoolctl import threadpool_limits  # installed with scikit-learn
    except ImportError:  # pragma: no cover - scikit-learn is a dependency
        pass
    else:
        _THREAD_LIMITS.append(threadpool_limits(1))  # libraries already loaded (forked)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(1)


def _submission_order(records: Sequence[MassRecord], todo: Sequence[int]) -> list[int]:
    """``todo`` with the largest inputs (image + mask bytes) first, so that the pool does not end
    on one big image while the other workers idle; ties keep input order. Output order is set by
    the record index, not by this order."""
    def size(i: int) -> int:
        total = 0
        for path in (records[i].image_path, records[i].mask_path):
            stamp = _file_stamp(path)
            total += int(stamp[1] or 0) if stamp is not None else 0
        return total

    return sorted(todo, key=lambda i: (-size(i), i))


def _code_fingerprint(loader: Loader) -> str:
    """SHA-256 of roi.py, preprocess.py and the loader's module source: a code change invalidates."""
    h = hashlib.sha256()
    files = [Path(__file__).with_name("roi.py"), Path(__file__)]
    try:
        files.append(Path(inspect.getsourcefile(loader) or ""))
    except TypeError:  # built-in or C loader: no source to hash
        pass
    for f in files:
        if f.is_file():
            h.update(f.read_bytes())
    return h.hexdigest()


def _default_loader() -> Loader:
    from mammo_lib.data.images import load_record  # imported lazily: written by another module

    return load_record


# --------------------------------------------------------------------------------------------


def preprocess(records: Sequence[MassRecord], cache_dir: str | Path, *, variant: Variant = "mass_centred",
               size: int = 224, min_context: int = 224, seed: int = 0, intensity: str = DEFAULT_INTENSITY,
               anti_aliasing: bool = True, workers: Optional[int] = None, on_error: OnError = "raise",
               progress: bool = True, loader: Optional[Loader] = None) -> RoiSet:
    """Extract the ROI of every record (paper Sec. 3.2), in parallel, cached on disk.

    ``loader(rec, intensity=...)`` returns an object with ``image``, ``mask``, ``notes`` and
    ``confounders`` (default :func:`mammo_lib.data.images.load_record`; give a module-level function
    so that worker processes can use it).  ``workers=1`` runs in this process.  Random variants
    use ``np.random.default_rng([seed, i])`` for record ``i``, so results do not depend on the
    number of workers.  A record whose loading or ROI fails raises a :class:`DataError` naming its
    ``source_file`` and ``source_row`` (``on_error="raise"``) or becomes an ``Exclusion`` with
    ``stage="roi"`` (``on_error="skip"``); so does a ROI whose resized mask is empty (it never
    reaches training).  ``size`` below :data:`~mammo_lib.data.roi.MIN_ROI_SIZE` or an unknown
    ``intensity`` is a ``ValueError`` before any work.  The result keeps the input order,
    exclusions removed.
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown ROI variant {variant!r}; choose one of {VARIANTS}")
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < MIN_ROI_SIZE:
        raise ValueError(f"size must be an int >= MIN_ROI_SIZE = {MIN_ROI_SIZE} (the networks halve the ROI 5 "
                         f"times: mammo_lib.data.roi.MIN_ROI_SIZE), got {size!r}")
    if isinstance(min_context, bool) or not isinstance(min_context, (int, np.integer)) or min_context < 1:
        raise ValueError(f"min_context must be a positive int, got {min_context!r}")
    if intensity not in _INTENSITIES:
        raise ValueError(f"intensity must be one of {_INTENSITIES}, got {intensity!r}")
    workers = (os.cpu_count() or 1) if workers is None else workers
    if not isinstance(workers, (int, np.integer)) or workers < 1:
        raise ValueError(f"workers must be a positive int, got {workers!r}")
    records = list(records)
    if not all(isinstance(r, MassRecord) for r in records):
        raise TypeError("records must be MassRecord objects")
    check_unique_ids(records)
    loader = _default_loader() if loader is None else loader

    params: dict[str, Any] = {"variant": variant, "size": int(size), "min_context": int(min_context),
                              "seed": int(seed), "intensity": intensity, "anti_aliasing": bool(anti_aliasing),
                              "loader": f"{getattr(loader, '__module__', '?')}.{getattr(loader, '__qualname__', '?')}",
                              "cache_version": CACHE_VERSION, "code": _code_fingerprint(loader)}
    key = cache_key(records, params)
    cache_dir = Path(cache_dir)
    name = f"{variant}-{size}-{key[:16]}"
    final = cache_dir / name
    if final.is_dir():
        try:
            cached = RoiSet.load(final)
        except _NPZ_ERRORS as err:  # damaged folder: say so, recompute and replace it
            warnings.warn(f"damaged ROI cache {final} ({type(err).__name__}: {err}); rebuilding it", stacklevel=2)
            cached = None
        if cached is not None and cached.params.get("cache_key") == key:
            _raise_first_roi_exclusion(cached, on_error)
            return cached

    partial = cache_dir / f".partial-{name}"
    partial.mkdir(parents=True, exist_ok=True)
    _drop_damaged_partials(partial, len(records))
    todo = [i for i in range(len(records)) if not (partial / f"{i:06d}.npz").is_file()]
    bar = tqdm(total=len(records), initial=len(records) - len(todo), desc=f"ROIs ({variant})",
               disable=not progress)

    errors: dict[int, str] = {}

    def done(i: int, error: Optional[str]) -> None:
        bar.update()
        if error is not None:
            rec = records[i]
            if on_error == "raise":
                raise DataError(f"case {rec.case_id}: {error}", rec.source_file, rec.source_row)
            errors[i] = error

    try:
        if workers == 1 or len(todo) <= 1:
            for i in todo:
                done(*_process_one(i, records[i], loader, params, str(partial)))
        else:
            pool = ProcessPoolExecutor(max_workers=min(workers, len(todo)), initializer=worker_init)
            try:
                futures = [pool.submit(_process_one, i, records[i], loader, params, str(partial))
                           for i in _submission_order(records, todo)]
                for fut in as_completed(futures):
                    done(*fut.result())
            finally:  # on an error or interrupt: drop queued work, let running records finish
                pool.shutdown(wait=True, cancel_futures=True)
    finally:
        bar.close()

    result = _assemble(records, partial, errors, params, key)
    result.save(final)
    shutil.rmtree(partial, ignore_errors=True)
    return result


def _drop_damaged_partials(partial: Path, n: int) -> None:
    """Delete (with a warning naming it) every per-record file of an unfinished run that cannot be
    read back whole, so that the resumed run recomputes that record."""
    for i in range(n):
        path = partial / f"{i:06d}.npz"
        if not path.is_file():
            continue
        try:
            with np.load(path) as z:
                for name in z.files:
                    z[name]
                absent = sorted(set(_PARTIAL_MEMBERS) - set(z.files))
            if absent:
                raise KeyError(f"members {absent} absent (has {sorted(z.files)})")
        except _NPZ_ERRORS as err:
            warnings.warn(f"damaged partial ROI file {path} ({type(err).__name__}: {err}); recomputing it",
                          stacklevel=3)
            path.unlink()


def _raise_first_roi_exclusion(roiset: RoiSet, on_error: OnError) -> None:
    if on_error != "raise":
        return
    roi_ex = roiset.exclusions[roiset.exclusions["stage"] == "roi"]
    if len(roi_ex):
        e = roi_ex.iloc[0]
        row = None if pd.isna(e["source_row"]) else int(e["source_row"])
        raise DataError(f"case {e['case_id']}: {e['reason']}", e["source_file"], row)


def _assemble(records: list[MassRecord], partial: Path, errors: dict[int, str], params: dict[str, Any],
              key: str) -> RoiSet:
    """Gather per-record results (``partial``) and failures (``errors``) in input order."""
    rows: list[dict[str, Any]] = []
    exclusions: list[Exclusion] = []
    kept: list[int] = []
    for i, rec in enumerate(records):
        if i in errors:
            exclusions.append(Exclusion(rec.source_file, rec.source_row, errors[i], rec.case_id, "roi"))
            continue
        with np.load(partial / f"{i:06d}.npz") as z:
            meta = json.loads(str(z["meta"]))
        kept.append(i)
        box, bbox, pad = meta["box"], meta["bbox"], meta["pad"]
        rows.append({"case_id": rec.case_id, "patient_id": str(rec.patient_id), "label": int(rec.label),
                     "split": rec.split, "dataset": rec.dataset, "source_file": rec.source_file,
                     "source_row": rec.source_row, "variant": params["variant"],
                     **{f"box_{k}": v for k, v in zip(("y0", "x0", "y1", "x1"), box)},
                     **{f"bbox_{k}": v for k, v in zip(("y0", "x0", "y1", "x1"), bbox)},
                     **{f"pad_{k}": v for k, v in zip(("top", "bottom", "left", "right"), pad)},
                     "padded": bool(meta["padded"]), "notes": meta["notes"]})
    s = params["size"]
    images = np.empty((len(kept), s, s), np.float32)
    masks = np.empty((len(kept), s, s), np.uint8)
    confs: Optional[np.ndarray] = None
    n_conf = 0
    for k, i in enumerate(kept):
        with np.load(partial / f"{i:06d}.npz") as z:
            images[k], masks[k] = z["image"], z["mask"]
            if "confounders" in z.files:
                if confs is None:
                    confs = np.zeros((len(kept), s, s), np.uint8)
                confs[k] = z["confounders"]
                n_conf += 1
    if confs is not None and n_conf != len(kept):
        raise ValueError(f"confounder maps present for {n_conf} of {len(kept)} records only: "
                         "do not mix phantom and real records in one preprocess call")
    out_params = dict(params, cache_key=key, n_records=len(records), n_excluded=len(exclusions))
    index = _normalise(pd.DataFrame(rows, columns=INDEX_COLUMNS), _STR_COLUMNS, ["split"])
    return RoiSet(index=index, images=images, masks=masks, confounders=confs,
                  exclusions=_exclusions_frame(exclusions), params=out_params)
