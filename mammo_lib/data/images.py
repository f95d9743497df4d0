"""Reading mammograms and masks: PNG, TIFF and DICOM to 2-D arrays, and one record to a case.

* :func:`read_image` returns the stored pixels (2-D, native dtype). The format is told from the
  file's content (magic bytes), not from its name. DICOM: RLE Lossless is decoded by pydicom's
  own numpy decoder; MONOCHROME1 is inverted so that bright always means dense; multi-frame
  and colour files are refused.
* :func:`to_unit_float` maps an image to float32 in [0, 1] (**Decision** ``intensity="percentile"``,
  :data:`DEFAULT_INTENSITY`: 0.5-99.5 percentile scaling; ``"minmax"`` per-image min-max; ``"dtype"``
  divides by the dtype's maximum or ``2**bits - 1``; the profiles set theirs, docs/DECISIONS.md).
* :func:`load_record` turns a :class:`~mammo_lib.data.records.MassRecord` into a :class:`LoadedCase`
  (image, binary mask, notes, optional confounder label map). Masks come from a mask file
  (binary by content) or from an outline polygon (:func:`polygon_mask`, BCDR, Sec. 3.1).
  A mask a few pixels off the image size is resized with nearest neighbour and noted
  (CBIS-DDSM, Sec. 3.1).

Every failure is a :class:`~mammo_lib.data.records.DataError` that names the file.
"""
from __future__ import annotations

import struct
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional, Sequence

import numpy as np
import pydicom
import tifffile
from PIL import Image
from pydicom.errors import InvalidDicomError
from skimage.draw import polygon

from mammo_lib.data.records import DataError, MassRecord

__all__ = [
    "INTENSITY_MODES", "DEFAULT_INTENSITY", "MAX_PIXELS", "MIN_IMAGE_SIDE", "NEAR_FULL_MASK", "IntensityMode",
    "LoadedCase", "read_image", "read_dicom_header", "to_unit_float",
    "polygon_mask", "resize_nearest", "binary_mask", "load_record", "read_unit_float", "image_notes",
    "GREYSCALE_PHOTOMETRIC", "MAMMOGRAPHY_MODALITY", "NO_TISSUE_LEVEL",
]

IntensityMode = Literal["minmax", "percentile", "dtype"]
#: The values ``intensity`` accepts (:func:`to_unit_float`) and the default (mammo_lib.utils.options).
from mammo_lib.utils.options import DEFAULT_INTENSITY, INTENSITY_MODES  # noqa: E402

#: Largest image decoded, in pixels, checked from the file's header before any pixel is decoded
#: (docs/DECISIONS.md "Data-side fault cases"): 64 Mpx = 2**26, twice a full-field mammogram of
#: ~5000 x 7000 (35 Mpx); a 30000 x 30000 "decompression bomb" (900 Mpx) is refused.
MAX_PIXELS = 2 ** 26
#: A record's image must be at least this many pixels on each side (a 1 x 1 image has no background).
MIN_IMAGE_SIDE = 2
#: A mask covering at least this fraction of its image gets a note (an inverted mask?); a mask
#: covering all of it is an error (no background: docs/DECISIONS.md).
NEAR_FULL_MASK = 0.9
#: DICOM PhotometricInterpretation values read as grey levels; any other (PALETTE COLOR, RGB, YBR_*)
#: is refused: its values are colour indices or components, not intensities.
GREYSCALE_PHOTOMETRIC: tuple[str, ...] = ("MONOCHROME1", "MONOCHROME2")
#: DICOM Modality of a mammogram; an image of another modality (CT, MR, ...) gets a note.
MAMMOGRAPHY_MODALITY = "MG"
#: A mask region whose pixels all lie within this fraction of the image's range above its darkest
#: value holds no tissue (the mask is in the air outside the breast): the case gets a note.
NO_TISSUE_LEVEL = 0.01
#: Rows converted at a time by :func:`to_unit_float` (bounds the float64 intermediate to ~8 MB).
_CHUNK_PIXELS = 2 ** 20

#: Exceptions the readers (PIL, tifffile, pydicom, struct) raise on unreadable or truncated files.
_READ_ERRORS: tuple[type[BaseException], ...] = (
    OSError, ValueError, EOFError, AttributeError, KeyError, IndexError, TypeError,
    NotImplementedError, RuntimeError, struct.error, InvalidDicomError,
)

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_TIFF_MAGICS = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_DICOM_SUFFIXES = {".dcm", ".dicom", ""}


def _sniff(path: Path) -> str:
    """'dicom', 'tiff' or 'pil', from magic bytes (DICOM: 'DICM' at offset 128), else the suffix."""
    with open(path, "rb") as fh:
        head = fh.read(132)
    if len(head) == 132 and head[128:132] == b"DICM":
        return "dicom"
    if head[:4] in _TIFF_MAGICS:
        return "tiff"
    if head.startswith(_PNG_MAGIC):
        return "pil"
    suffix = path.suffix.lower()
    if suffix in _DICOM_SUFFIXES:
        return "dicom"  # DICOM without preamble: read with force=True
    if suffix in {".tif", ".tiff"}:
        return "tiff"
    return "pil"


def _read_error(path: Path, err: BaseException, caught: Sequence[warnings.WarningMessage] = ()) -> DataError:
    extra = "".join(f"; warning: {w.message}" for w in caught)
    return DataError(f"cannot read image ({type(err).__name__}: {err}{extra})", path)


def _check_pixels(shape: Sequence[int], path: Path) -> None:
    """:class:`DataError` when a header's ``shape`` holds more than :data:`MAX_PIXELS` pixels."""
    n = int(np.prod([int(v) for v in shape], dtype=np.int64))
    if n > MAX_PIXELS:
        size = "x".join(str(int(v)) for v in shape)
        raise DataError(f"image too large: header says {size} = {n} pixels > MAX_PIXELS = {MAX_PIXELS} "
                        "(not decoded)", path)


def _check_bits_stored(ds: pydicom.Dataset, path: Path) -> None:
    """Refuse native unsigned pixel data holding values above ``2**BitsStored - 1``.

    pydicom keeps only the low BitsStored bits, so a 16-bit image labelled BitsStored=12 would be
    silently cut (65535 -> 4095, 40000 -> 3136). **Decision** (docs/DECISIONS.md): an error naming
    the file, since the header contradicts the data and no choice of range is safe.
    """
    bits, alloc = int(getattr(ds, "BitsStored", 0) or 0), int(getattr(ds, "BitsAllocated", 0) or 0)
    if not (0 < bits < alloc and alloc in (8, 16, 32)) or int(getattr(ds, "PixelRepresentation", 0)) != 0:
        return
    if ds.file_meta.get("TransferSyntaxUID") is not None and ds.file_meta.TransferSyntaxUID.is_compressed:
        return  # only native data is checked (pydicom's decoders give no access to the raw bits)
    raw = np.frombuffer(ds.PixelData, dtype=f"<u{alloc // 8}")
    top = int(raw.max()) if raw.size else 0
    if top > 2 ** bits - 1:
        raise DataError(f"pixel values up to {top} exceed BitsStored={bits} (max {2 ** bits - 1}); "
                        "the header contradicts the data", path)


def _dicom_pixels(ds: pydicom.Dataset, path: Path) -> np.ndarray:
    """Single-frame greyscale pixels, MONOCHROME1 inverted within the stored bit range."""
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    if frames > 1:
        raise DataError(f"multi-frame DICOM ({frames} frames) is not supported", path)
    if int(getattr(ds, "SamplesPerPixel", 1)) != 1:
        raise DataError(f"expected a greyscale DICOM, got SamplesPerPixel={ds.SamplesPerPixel}", path)
    photometric = str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    if photometric not in GREYSCALE_PHOTOMETRIC:
        raise DataError(f"PhotometricInterpretation {photometric}: the stored values are indices into a colour "
                        f"table, not grey levels; expected one of {GREYSCALE_PHOTOMETRIC} (not read as greyscale)",
                        path)
    _check_pixels((int(ds.Rows), int(ds.Columns)), path)
    _check_bits_stored(ds, path)
    arr = ds.pixel_array
    if str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2")).strip() == "MONOCHROME1":
        bits = int(getattr(ds, "BitsStored", arr.dtype.itemsize * 8))
        if int(getattr(ds, "PixelRepresentation", 0)) == 0:
            lo, hi = 0, 2 ** bits - 1
        else:
            lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
        arr = (lo + hi - arr.astype(np.int64)).astype(arr.dtype)
    return arr


def read_image(path: str | Path) -> np.ndarray:
    """Read a 2-D greyscale image in its native dtype (PNG/other PIL formats, TIFF, DICOM).

    RGB(A) files whose colour channels are identical are accepted as greyscale. Raises
    :class:`DataError` naming ``path`` when the file is missing, unreadable, truncated,
    multi-frame, not greyscale, or larger than :data:`MAX_PIXELS` by its header (checked
    before decoding).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError("image file not found", path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            kind = _sniff(path)
            if kind == "dicom":
                ds = pydicom.dcmread(path, force=path.suffix.lower() in _DICOM_SUFFIXES)
                arr = _dicom_pixels(ds, path)
            elif kind == "tiff":
                with tifffile.TiffFile(path) as tif:
                    _check_pixels(tif.series[0].shape, path)
                    arr = tif.asarray()
            else:
                with Image.open(path) as im:
                    _check_pixels((im.size[1], im.size[0]), path)
                    im.load()
                    arr = np.array(im)
        except DataError:
            raise
        except Image.DecompressionBombError as err:  # PIL refuses at open, before our check
            raise DataError(f"image too large: {err} (MAX_PIXELS = {MAX_PIXELS}; not decoded)", path) from err
        except _READ_ERRORS as err:
            raise _read_error(path, err, caught) from err
    arr = np.asarray(arr)
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):
        colour = arr[..., :3]
        if not (colour == colour[..., :1]).all():
            raise DataError(f"expected a greyscale image, got colour of shape {arr.shape}", path)
        arr = np.ascontiguousarray(arr[..., 0])
    if arr.ndim != 2:
        raise DataError(f"expected a 2-D image, got shape {arr.shape}", path)
    if arr.size == 0:
        raise DataError("image has no pixels", path)
    return arr


def read_dicom_header(path: str | Path) -> pydicom.Dataset:
    """DICOM header without pixel data (``stop_before_pixels``); :class:`DataError` names the file."""
    path = Path(path)
    if not path.is_file():
        raise DataError("DICOM file not found", path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return pydicom.dcmread(path, stop_before_pixels=True,
                                   force=path.suffix.lower() in _DICOM_SUFFIXES)
    except _READ_ERRORS as err:
        raise DataError(f"cannot read DICOM header ({type(err).__name__}: {err})", path) from err


def to_unit_float(arr: np.ndarray, intensity: IntensityMode = DEFAULT_INTENSITY, *,
                  bits: Optional[int] = None,
                  percentiles: tuple[float, float] = (0.5, 99.5)) -> np.ndarray:
    """Map an image to float32 in [0, 1].

    ``intensity="minmax"``: ``(x - min) / (max - min)`` per image; a constant image
    becomes zeros. ``"percentile"`` (default, :data:`DEFAULT_INTENSITY`): the same between the image's ``percentiles`` (clipped), so a
    few very bright pixels (micro-calcifications, markers) do not set the scale of the whole
    image: with ``minmax`` their presence changes every other pixel's value, which leaks them
    into the mass's intensity (measured on the phantom: docs/FINDINGS_phantom_kt.md).
    ``"dtype"``: ``x / (2**bits - 1)`` (``bits`` e.g. DICOM BitsStored), else ``x / dtype max``
    for integers; floats must already lie in [0, 1]. No per-image statistics at all: right for a
    calibrated intensity scale such as the phantom's.
    """
    a = np.asarray(arr)
    if a.ndim != 2:
        raise ValueError(f"expected a 2-D image, got shape {a.shape}")
    if a.dtype == bool:
        a = a.astype(np.uint8)
        bits = 1 if bits is None else bits
    if not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
        raise TypeError(f"expected an integer or float image, got dtype {a.dtype}")
    if np.issubdtype(a.dtype, np.floating) and not np.isfinite(a).all():
        raise ValueError("image holds NaN or infinite values")
    if intensity in ("minmax", "percentile"):
        if intensity == "minmax":
            lo, hi = float(a.min()), float(a.max())
        else:
            p_lo, p_hi = percentiles
            if not 0.0 <= p_lo < p_hi <= 100.0:
                raise ValueError(f"percentiles must satisfy 0 <= low < high <= 100, got {percentiles}")
            lo, hi = (float(v) for v in np.percentile(a, [p_lo, p_hi]))
        if hi == lo:
            return np.zeros(a.shape, np.float32)
    elif intensity == "dtype":
        if np.issubdtype(a.dtype, np.floating):
            if bits is not None:
                raise ValueError("bits applies to integer images only")
            if a.min() < 0 or a.max() > 1:
                raise ValueError("intensity='dtype' on a float image needs values in [0, 1]")
            return a.astype(np.float32)
        info = np.iinfo(a.dtype)
        if bits is not None:
            if not 1 <= bits <= info.bits:
                raise ValueError(f"bits must be in [1, {info.bits}] for dtype {a.dtype}, got {bits}")
            lo, hi = (0, 2 ** bits - 1) if info.min == 0 else (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
            if a.min() < lo or a.max() > hi:
                raise ValueError(f"values outside the {bits}-bit range [{lo}, {hi}]")
        else:
            lo, hi = info.min, info.max
    else:
        raise ValueError(f"intensity must be one of {INTENSITY_MODES}, got {intensity!r}")
    return _scale_rows(a, float(lo), float(hi))


def _scale_rows(a: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """``clip((a - lo) / (hi - lo), 0, 1)`` as float32, computed in float64 a block of rows at a
    time: the same numbers as converting the whole image at once, without a float64 copy of it."""
    out = np.empty(a.shape, np.float32)
    step = max(1, _CHUNK_PIXELS // max(1, a.shape[1]))
    for r in range(0, a.shape[0], step):
        block = (a[r:r + step].astype(np.float64) - lo) / (hi - lo)
        out[r:r + step] = np.clip(block, 0.0, 1.0, out=block)
    return out


def read_unit_float(path: str | Path, intensity: IntensityMode = DEFAULT_INTENSITY) -> np.ndarray:
    """:func:`read_image` then :func:`to_unit_float` (DICOM BitsStored for ``"dtype"``); every
    failure, NaN / infinite pixels included, is a :class:`DataError` naming ``path``."""
    raw = read_image(path)
    bits = _stored_bits(path) if intensity == "dtype" else None
    try:
        return to_unit_float(raw, intensity, bits=bits)
    except (ValueError, TypeError) as err:
        raise DataError(str(err), path) from err


def image_notes(path: str | Path, image: Optional[np.ndarray] = None,
                mask: Optional[np.ndarray] = None) -> list[str]:
    """Notes on an image that reads but may be the wrong input (docs/DECISIONS.md, "Data-side
    fault cases"): a DICOM whose Modality is not MG (mammography), and, given the unit-float
    ``image`` and its ``mask``, a mask region with no tissue (every pixel within
    :data:`NO_TISSUE_LEVEL` of the image's range above its darkest value: air outside the breast).

    >>> image_notes("x.png", np.array([[0.0, 1.0], [0.0, 0.0]]), np.array([[1, 0], [0, 0]]))[0][:26]
    'no tissue under the mask: '
    >>> image_notes("x.png", np.array([[0.0, 1.0], [0.0, 0.0]]), np.array([[0, 1], [0, 0]]))
    []
    """
    notes = []
    if Path(path).is_file() and _sniff(Path(path)) == "dicom":
        modality = str(getattr(read_dicom_header(path), "Modality", "") or "").strip().upper()
        if modality and modality != MAMMOGRAPHY_MODALITY:
            notes.append(f"DICOM Modality is {modality}, not {MAMMOGRAPHY_MODALITY} (mammography): "
                         "is this a mammogram?")
    if image is not None and mask is not None and mask.any():
        lo, hi = float(image.min()), float(image.max())
        if float(image[mask > 0].max()) <= lo + NO_TISSUE_LEVEL * (hi - lo):
            notes.append("no tissue under the mask: its pixels are all at the image's darkest level "
                         "(mask in the air outside the breast?)")
    return notes


def _edge_lattice_points(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every integer point on the closed polygon's edges (integer vertices): gcd(|dx|, |dy|) per edge."""
    dx, dy = np.roll(x, -1) - x, np.roll(y, -1) - y
    g = np.gcd(np.abs(dx), np.abs(dy))
    reps = np.maximum(g, 1)                        # a repeated vertex contributes itself
    edge = np.repeat(np.arange(x.size), reps)
    k = np.arange(reps.sum()) - np.repeat(np.cumsum(reps) - reps, reps)
    step_x = np.where(g > 0, dx // reps, 0)
    step_y = np.where(g > 0, dy // reps, 0)
    return y[edge] + k * step_y[edge], x[edge] + k * step_x[edge]


def polygon_mask(xs: Sequence[float], ys: Sequence[float], shape: tuple[int, int]) -> np.ndarray:
    """Filled polygon (x = column, y = row) as a uint8 {0, 1} mask of ``shape``; closes the outline.

    **Decision:** a pixel belongs to the mask when its centre lies inside *or on* the polygon (the
    BCDR ``lw_*_points`` are the outline's own pixels, so they are part of the lesion):
    ``skimage.draw.polygon`` for the interior plus, for integer vertices, every lattice point on
    the edges. For integer vertices the count is Pick's theorem: I + B = shoelace area + B/2 + 1,
    B the lattice points on the boundary. Vertices must lie inside the image
    (0 <= x <= W-1, 0 <= y <= H-1), else ValueError "outline outside image".
    """
    x = np.asarray(xs, dtype=np.float64)
    y = np.asarray(ys, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"xs and ys must be 1-D of equal length, got {x.shape} and {y.shape}")
    if x.size < 3:
        raise ValueError(f"a polygon needs at least 3 vertices, got {x.size}")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError("outline vertices must be finite")
    h, w = int(shape[0]), int(shape[1])
    if x.min() < 0 or y.min() < 0 or x.max() > w - 1 or y.max() > h - 1:
        raise ValueError(f"outline outside image: x in [{x.min():g}, {x.max():g}], "
                         f"y in [{y.min():g}, {y.max():g}], image {h}x{w}")
    mask = np.zeros((h, w), np.uint8)
    rr, cc = polygon(y, x, shape=(h, w))
    mask[rr, cc] = 1
    if np.array_equal(x, np.round(x)) and np.array_equal(y, np.round(y)):
        rr, cc = _edge_lattice_points(x.astype(np.int64), y.astype(np.int64))
        mask[rr, cc] = 1
    return mask


def resize_nearest(arr: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize by pixel-centre sampling (keeps dtype and label values)."""
    h, w = arr.shape
    rows = np.minimum(((np.arange(shape[0]) + 0.5) * h / shape[0]).astype(np.intp), h - 1)
    cols = np.minimum(((np.arange(shape[1]) + 0.5) * w / shape[1]).astype(np.intp), w - 1)
    return arr[rows[:, None], cols[None, :]]


def binary_mask(arr: np.ndarray, path: str | Path | None = None) -> np.ndarray:
    """uint8 {0, 1} from a mask stored as {0, v} (v > 0, e.g. 255 or 1); else :class:`DataError`."""
    hi = arr.max()
    if arr.min() < 0 or not ((arr == 0) | (arr == hi)).all():
        values = np.unique(arr)
        shown = ", ".join(str(v) for v in values[:5]) + (", ..." if values.size > 5 else "")
        raise DataError(f"mask is not binary: {values.size} distinct values ({shown}); expected 0 and one "
                        "foreground value", path)
    return (arr != 0).astype(np.uint8)


@dataclass
class LoadedCase:
    """A record's pixels: ``image`` float32 [0, 1], ``mask`` uint8 {0, 1}, ``confounders`` uint8
    label map (0 none, 1 calcification, 2 dense tissue; phantom only) or None, ``notes`` on repairs."""

    image: np.ndarray
    mask: np.ndarray
    notes: list[str] = field(default_factory=list)
    confounders: Optional[np.ndarray] = None


def _fit_to(arr: np.ndarray, shape: tuple[int, int], what: str, tolerance: float,
            notes: list[str], path: str | Path) -> np.ndarray:
    """Resize ``arr`` to ``shape`` (nearest) when each side is within ``tolerance``; note it."""
    if arr.shape == shape:
        return arr
    rel = max(abs(a - b) / b for a, b in zip(arr.shape, shape))
    if rel > tolerance:
        raise DataError(f"{what} size {arr.shape[0]}x{arr.shape[1]} does not match image size "
                        f"{shape[0]}x{shape[1]} (differs by {rel:.1%} > {tolerance:.0%})", path)
    beyond = int(np.count_nonzero(arr[shape[0]:, :])) + int(np.count_nonzero(arr[:shape[0], shape[1]:]))
    if beyond:
        raise DataError(f"{what} size {arr.shape[0]}x{arr.shape[1]} is larger than the image {shape[0]}x{shape[1]} "
                        f"and {beyond} of its foreground pixel(s) lie beyond the image's last row or column: "
                        "resizing would move them onto the image (a mask outside the image is an error)", path)
    notes.append(f"{what} resized from {arr.shape[0]}x{arr.shape[1]} to {shape[0]}x{shape[1]} (nearest)")
    return resize_nearest(arr, shape)


def _stored_bits(path: str | Path) -> Optional[int]:
    """DICOM BitsStored (for ``intensity="dtype"``); None for other formats."""
    if _sniff(Path(path)) != "dicom":
        return None
    return int(getattr(read_dicom_header(path), "BitsStored", 0)) or None


def _check_coverage(mask: np.ndarray, notes: list[str], path: str | Path) -> None:
    """A mask over the whole image is an error (no background: an inverted mask); one over at
    least :data:`NEAR_FULL_MASK` of it gets a note (docs/DECISIONS.md)."""
    frac = float(mask.mean())
    if frac >= 1.0:
        raise DataError(f"mask covers the whole {mask.shape[0]}x{mask.shape[1]} image (inverted mask?)", path)
    if frac >= NEAR_FULL_MASK:
        notes.append(f"mask covers {frac:.1%} of the image (inverted mask?)")


def load_record(rec: MassRecord, intensity: IntensityMode = DEFAULT_INTENSITY, *,
                mask_size_tolerance: float = 0.05) -> LoadedCase:
    """Read a record's image, mask (file or outline) and optional confounder map.

    The mask must be binary by content (:func:`binary_mask`), not empty and not the whole image
    (one covering :data:`NEAR_FULL_MASK` or more gets a note); the image must have at least
    :data:`MIN_IMAGE_SIDE` pixels a side and at most :data:`MAX_PIXELS`. A mask (or confounder
    map) whose sides differ from the image's by at most ``mask_size_tolerance`` (relative) is
    resized with nearest neighbour and a note is appended (Sec. 3.1, CBIS-DDSM); a larger
    difference is an error. With ``intensity="dtype"`` a DICOM image is divided by
    ``2**BitsStored - 1``. Errors are :class:`DataError` with ``rec.source_file`` /
    ``rec.source_row``; the message names the image or mask file.
    """
    notes: list[str] = []

    def fail(err: DataError) -> DataError:
        where = f" [{err.file}]" if err.file else ""
        return DataError(err.reason + where, rec.source_file, rec.source_row)

    try:
        raw = read_image(rec.image_path)
        if min(raw.shape) < MIN_IMAGE_SIDE:
            raise DataError(f"image is {raw.shape[0]}x{raw.shape[1]} pixels; at least {MIN_IMAGE_SIDE} on each "
                            "side is needed (MIN_IMAGE_SIDE)", rec.image_path)
        bits = _stored_bits(rec.image_path) if intensity == "dtype" else None
        try:
            image = to_unit_float(raw, intensity, bits=bits)
        except (ValueError, TypeError) as err:
            raise DataError(str(err), rec.image_path) from err
        del raw
        if rec.mask_path:
            stored = read_image(rec.mask_path)
            mask = binary_mask(stored, rec.mask_path)
            mask = _fit_to(mask, image.shape, "mask", mask_size_tolerance, notes, rec.mask_path)
        elif rec.outline is not None:
            try:
                mask = polygon_mask(rec.outline[0], rec.outline[1], image.shape)
            except ValueError as err:
                raise DataError(str(err), rec.image_path) from err
        else:
            raise DataError("record has neither mask_path nor outline", rec.image_path)
        if not mask.any():
            raise DataError("empty mask", rec.mask_path or rec.image_path)
        _check_coverage(mask, notes, rec.mask_path or rec.image_path)
        notes += image_notes(rec.image_path, image, mask)
        confounders = None
        conf_path = rec.meta.get("confounder_mask_path")
        if conf_path:
            conf = read_image(conf_path)
            if conf.min() < 0 or conf.max() > 255 or not np.issubdtype(conf.dtype, np.integer):
                raise DataError("confounder map must be an integer label map in [0, 255]", conf_path)
            confounders = _fit_to(conf.astype(np.uint8), image.shape, "confounder map",
                                  mask_size_tolerance, notes, conf_path)
    except DataError as err:
        raise fail(err) from err
    return LoadedCase(image=image, mask=mask, notes=notes, confounders=confounders)
