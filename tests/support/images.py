"""Tiny image writers shared by the data-layer tests (DICOM built with pydicom, PNG/TIFF)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import tifffile
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, RLELossless, generate_uid

SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"


def write_dicom(path: Path, arr: np.ndarray, *, rle: bool = False, photometric: str = "MONOCHROME2",
                bits_stored: Optional[int] = None, series_uid: Optional[str] = None,
                frames: int = 1) -> Path:
    """A minimal single- (or multi-) frame greyscale DICOM file (uint8 or uint16)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = SECONDARY_CAPTURE
    ds.SOPClassUID = SECONDARY_CAPTURE
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.SeriesInstanceUID = series_uid or generate_uid()
    bits = arr.dtype.itemsize * 8
    ds.Rows, ds.Columns = arr.shape[-2:]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = bits
    ds.BitsStored = bits_stored or bits
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 0
    if frames > 1:
        ds.NumberOfFrames = frames
        arr = np.stack([arr] * frames)
    ds.PixelData = np.ascontiguousarray(arr).tobytes()
    if rle:
        ds.compress(RLELossless)
    ds.save_as(path, enforce_file_format=True)
    return path


def write_png(path: Path, arr: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


def write_tiff(path: Path, arr: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, arr)
    return path


def truncate(path: Path, keep: int) -> Path:
    """Keep the first ``keep`` bytes (negative: drop that many from the end)."""
    data = path.read_bytes()
    path.write_bytes(data[:keep])
    return path


def ramp(shape: tuple[int, int], dtype=np.uint16, step: int = 1) -> np.ndarray:
    """Distinct values 0, step, 2*step, ... in row-major order."""
    return (np.arange(shape[0] * shape[1]) * step).reshape(shape).astype(dtype)


def rect_mask(shape: tuple[int, int], r0: int, r1: int, c0: int, c1: int, value: int = 255) -> np.ndarray:
    m = np.zeros(shape, np.uint8)
    m[r0:r1, c0:c1] = value
    return m
