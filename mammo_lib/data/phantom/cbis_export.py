"""A tiny CBIS-DDSM style DICOM tree (Sec. 3.1) from phantom cases, with the real
mass-description CSV format, for the CBIS-DDSM loader's tests (:func:`write_cbis_tree`)."""
from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Optional

import numpy as np
from scipy.ndimage import distance_transform_edt

from mammo_lib.utils.progress import tqdm
from mammo_lib.data.records import BENIGN, MALIGNANT
from mammo_lib.data.phantom.config import PHANTOM_VERSION, PhantomConfig, config_hash, KIND_CODES, STREAM_ANATOMY
from mammo_lib.data.phantom.anatomy import MassLayer, draw_mass, simulate_anatomy, place_mass
from mammo_lib.data.phantom.build import atomic_build, to_uint16


#: Header of the CBIS-DDSM mass description CSVs (Sec. 3.1).
CBIS_COLUMNS = ("patient_id", "breast_density", "left or right breast", "image view",
                "abnormality id", "abnormality type", "mass shape", "mass margins", "assessment",
                "pathology", "subtlety", "image file path", "cropped image file path",
                "ROI mask file path")
CBIS_MARKER = "phantom_cbis_tree.json"
_CBIS_UID_ROOT = "1.3.6.1.4.1.9590.100.1.2."


def _uid(rng: np.random.Generator, used: set[str]) -> str:
    """A UID in the form CBIS-DDSM uses (its root + one long number, <= 64 characters)."""
    while True:
        n = int(rng.integers(30, 40))
        digits = str(int(rng.integers(1, 10))) + "".join(map(str, rng.integers(0, 10, n - 1)))
        uid = _CBIS_UID_ROOT + digits
        if uid not in used:
            used.add(uid)
            return uid


def _write_dicom(path: Path, arr: np.ndarray, *, patient_id: str, study_uid: str, series_uid: str,
                 sop_uid: str, description: str, side: str, view: str, rle: bool) -> None:
    """Single-frame MONOCHROME2 DICOM (Secondary Capture, like CBIS-DDSM), Explicit VR Little
    Endian or RLE Lossless."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, RLELossless, SecondaryCaptureImageStorage

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.PatientID = patient_id
    ds.PatientName = patient_id
    ds.Modality = "MG"
    ds.SeriesDescription = description
    ds.BodyPartExamined = "BREAST"
    ds.ImageLaterality = side[0]
    ds.ViewPosition = view
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = int(arr.shape[0]), int(arr.shape[1])
    bits = 8 * arr.dtype.itemsize
    ds.BitsAllocated = bits
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    ds.PixelData = np.ascontiguousarray(arr).tobytes()
    if rle:
        ds.compress(RLELossless, np.ascontiguousarray(arr), generate_instance_uid=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def write_cbis_tree(out_dir: str | Path, config: Optional[PhantomConfig] = None, *, n_cases: int = 12,
                    renamed: bool = True, seed: Optional[int] = None, progress: bool = False) -> Path:
    """Tiny CBIS-DDSM style data set (Sec. 3.1) for loader tests; returns its root.

    ``root`` holds ``mass_case_description_{train,test}_set.csv`` in the real format (CRLF rows,
    the ROI mask path ends in a quoted embedded newline) and the DICOMs of ``n_cases``
    abnormalities (about 2/3 train): full mammograms (uint16 MONOCHROME2, every other one RLE
    Lossless), cropped images (uint16) and ROI masks (uint8 0/255 at full size). Classes
    alternate by row; every other benign row is BENIGN_WITHOUT_CALLBACK. No confounders. Quirks,
    as in the real data: the first image holds two abnormalities (ids 1 and 2); every third row has
    its mask as ``000000.dcm`` in a separate series; one mask is 3 rows and 2 columns larger
    than its image; pairs of images are CC + MLO views of one patient. With ``renamed=True``
    folders are named like a TCIA download (``<subject>/MM-DD-YYYY-DDSM-NNNNN/1.000000-<series
    description>-NNNNN/1-k.dcm``, NNNNN = last 5 UID digits); UIDs are then only in the headers
    and the CSVs. ``phantom_cbis_tree.json`` lists every row's files and quirks (ground truth).
    """
    config = PhantomConfig() if config is None else config
    if not isinstance(config, PhantomConfig):
        raise TypeError(f"config must be a PhantomConfig, got {type(config).__name__}")
    if not isinstance(n_cases, (int, np.integer)) or isinstance(n_cases, bool) or n_cases < 4:
        raise ValueError(f"n_cases must be an int >= 4, got {n_cases!r}")
    seed = config.seed if seed is None else seed
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be an int >= 0, got {seed!r}")
    cfg = replace(config, seed=int(seed))
    digest = hashlib.sha256(json.dumps({"cbis": config_hash(cfg, "cbis_tree"), "n": int(n_cases),
                                        "renamed": bool(renamed)}).encode()).hexdigest()

    def build(root: Path) -> dict[str, Any]:
        return _build_cbis(root, cfg, int(n_cases), bool(renamed), progress)

    return atomic_build(Path(out_dir), CBIS_MARKER, digest, build)


@dataclass
class _CbisImage:
    """One full mammogram of the CBIS tree: its split, patient, side, view and mass labels."""

    split: str
    patient: str
    side: str
    view: str
    labels: list[int]
    rle: bool


def _cbis_plan(n_cases: int, rng: np.random.Generator) -> list[_CbisImage]:
    """Images of the tree: the first holds abnormalities 1 and 2, the others one each; about
    2/3 train; some patients get a CC and an MLO view of one breast; classes alternate by row."""
    n_images = n_cases - 1
    n_train = max(1, min(n_images - 1, round(n_images * 2 / 3)))
    images: list[_CbisImage] = []
    pid = 0
    for i in range(n_images):
        split = "train" if i < n_train else "test"
        if i in (0, n_train) or images[-1].view == "MLO" or rng.random() < 0.5:
            pid += 1
            side, view = ("LEFT" if rng.random() < 0.5 else "RIGHT"), "CC"
        else:  # second view of the previous patient's breast
            side, view = images[-1].side, "MLO"
        labels = [BENIGN, MALIGNANT] if i == 0 else [(i + 1) % 2]
        images.append(_CbisImage(split, f"P_{pid:05d}", side, view, labels, rle=i % 2 == 0))
    return images


def _cbis_render(cfg: PhantomConfig, index: int, im: _CbisImage) -> tuple[np.ndarray, list[MassLayer]]:
    """Full mammogram (uint16) and its mass layers; a second mass keeps clear of the first."""
    rng = np.random.default_rng([cfg.seed, KIND_CODES["cbis_tree"], 0, 0, index, STREAM_ANATOMY])
    case = simulate_anatomy(cfg, im.labels[0], rng, side=im.side, need_confounders=False)
    layers, image = [case.mass], case.base
    for label in im.labels[1:]:
        avoid = distance_transform_edt(~case.mass.footprint) < cfg.confounder_gap_px
        layer = place_mass(draw_mass(label, cfg, rng), case.breast, cfg, rng, avoid=avoid,
                            need_confounders=False)
        layers.append(layer)
        image = image + layer.signal * case.breast.mask
    return to_uint16(image), layers


def _build_cbis(root: Path, cfg: PhantomConfig, n_cases: int, renamed: bool, progress: bool) -> dict[str, Any]:
    """Write the tree of :func:`write_cbis_tree` into ``root``; return the ground-truth record."""
    rng = np.random.default_rng([cfg.seed, KIND_CODES["cbis_tree"], 99])
    used: set[str] = set()
    rows: dict[str, list[list[str]]] = {"train": [], "test": []}
    truth: list[dict[str, Any]] = []
    row_index = n_benign = 0
    for i, im in enumerate(tqdm(_cbis_plan(n_cases, rng), desc="CBIS tree", disable=not progress)):
        full, layers = _cbis_render(cfg, i, im)
        subject = f"{'Mass-Training' if im.split == 'train' else 'Mass-Test'}_{im.patient}_{im.side}_{im.view}"
        full_study, full_series = _uid(rng, used), _uid(rng, used)
        full_rel = _cbis_rel(subject, full_study, full_series, "full mammogram images", 1, renamed)
        _write_dicom(root / full_rel, full, patient_id=subject, study_uid=full_study, series_uid=full_series,
                     sop_uid=_uid(rng, used), description="full mammogram images", side=im.side,
                     view=im.view, rle=im.rle)
        for abn, (label, layer) in enumerate(zip(im.labels, layers), start=1):
            sub = f"{subject}_{abn}"
            separate = row_index % 3 == 1  # mask as 000000.dcm in a series of its own
            mask = layer.mask.astype(np.uint8) * 255
            if row_index == 2:  # a mask a few pixels larger than its image
                mask = np.pad(mask, ((0, 3), (0, 2)))
            rr, cc = np.flatnonzero(layer.mask.any(1)), np.flatnonzero(layer.mask.any(0))
            m = int(rng.integers(0, 12))
            crop = full[max(rr[0] - m, 0):rr[-1] + m + 1, max(cc[0] - m, 0):cc[-1] + m + 1]
            crop_study, crop_series = _uid(rng, used), _uid(rng, used)
            if separate:
                mask_study, mask_series = _uid(rng, used), _uid(rng, used)
                crop_rel = _cbis_rel(sub, crop_study, crop_series, "cropped images", 1, renamed)
                mask_rel = _cbis_rel(sub, mask_study, mask_series, "ROI mask images", 1, renamed)
            else:  # one folder; TCIA's 1-1 / 1-2 numbering does not tell which file is the mask
                mask_study, mask_series = crop_study, crop_series
                k_crop = 1 + int(rng.integers(2))
                crop_rel = _cbis_rel(sub, crop_study, crop_series, "ROI mask images", k_crop, renamed)
                mask_rel = _cbis_rel(sub, mask_study, mask_series, "ROI mask images", 3 - k_crop, renamed,
                                     literal_name="000001.dcm")
            common = dict(patient_id=sub, side=im.side, view=im.view, rle=False)
            _write_dicom(root / crop_rel, crop, study_uid=crop_study, series_uid=crop_series,
                         sop_uid=_uid(rng, used), description="cropped images", **common)
            _write_dicom(root / mask_rel, mask, study_uid=mask_study, series_uid=mask_series,
                         sop_uid=_uid(rng, used), description="ROI mask images", **common)
            if label == MALIGNANT:
                pathology, assessment = "MALIGNANT", int(rng.integers(4, 6))
            else:  # every other benign row is BENIGN_WITHOUT_CALLBACK (benign, Sec. 3.1)
                n_benign += 1
                pathology = "BENIGN_WITHOUT_CALLBACK" if n_benign % 2 == 1 else "BENIGN"
                assessment = int(rng.integers(2, 5))
            paths = [f"{subject}/{full_study}/{full_series}/000000.dcm",
                     f"{sub}/{crop_study}/{crop_series}/000000.dcm",
                     f"{sub}/{mask_study}/{mask_series}/{'000000' if separate else '000001'}.dcm\n"]
            rows[im.split].append([im.patient, str(int(rng.integers(1, 5))), im.side, im.view, str(abn),
                                   "mass", layer.spec.shape, layer.spec.margin, str(assessment), pathology,
                                   str(int(rng.integers(2, 6))), *paths])
            truth.append({"split": im.split, "csv_row": len(rows[im.split]) + 1,
                          "case_id": f"{im.patient}_{im.side}_{im.view}_{abn}", "label": label,
                          "pathology": pathology, "abnormality_id": abn,
                          "full": str(full_rel), "cropped": str(crop_rel), "mask": str(mask_rel),
                          "full_series_uid": full_series, "cropped_series_uid": crop_series,
                          "mask_series_uid": mask_series, "mask_separate_series": separate,
                          "mask_shape": list(mask.shape), "image_shape": list(full.shape),
                          "cropped_shape": list(crop.shape), "rle": im.rle})
            row_index += 1
    for split in ("train", "test"):
        with open(root / f"mass_case_description_{split}_set.csv", "w", newline="") as fh:
            writer = csv.writer(fh, lineterminator="\r\n")  # real files: CRLF rows, minimal quoting
            writer.writerow(CBIS_COLUMNS)
            writer.writerows(rows[split])
    return {"format": "mammo-kt CBIS-DDSM phantom tree", "version": PHANTOM_VERSION, "renamed": renamed,
            "seed": cfg.seed, "n_cases": n_cases, "rows": truth}


def _cbis_rel(subject: str, study: str, series: str, description: str, k: int, renamed: bool, *,
              literal_name: str = "000000.dcm") -> Path:
    """Relative path of a DICOM: literal CSV form, or TCIA-renamed folders (docstring above)."""
    if not renamed:
        return Path(subject, study, series, literal_name)
    return Path(subject, f"07-20-2016-DDSM-{study[-5:]}", f"1.000000-{description}-{series[-5:]}", f"1-{k}.dcm")
