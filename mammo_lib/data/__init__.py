"""Data: the mass records every loader returns, image reading, the dataset loaders (CBIS-DDSM, BCDR,
a lab's own CSV, the synthetic phantom), the data manifest, ROI extraction (Sec. 3.2), cached
preprocessing and joint augmentation. Imports :mod:`mammo_lib.utils` only.

The names below are the subpackage's public interface, imported on first use (so that importing
the package stays light).
"""
from importlib import import_module as _import_module

_PUBLIC = {
    "MassRecord": "records", "LoadResult": "records", "Exclusion": "records", "DataError": "records",
    "DamagedCacheError": "records", "BENIGN": "records", "MALIGNANT": "records",
    "read_image": "images", "load_record": "images", "LoadedCase": "images",
    "load_cbis_ddsm": "cbis_ddsm",
    "load_bcdr": "bcdr",
    "load_generic": "generic_csv",
    "extract_roi": "roi", "Roi": "roi",
    "RoiSet": "preprocess",
    "JointAugment": "augment", "AugmentParams": "augment",
    "PhantomConfig": "phantom", "generate_phantom": "phantom",
}
__all__ = sorted(_PUBLIC)


def __getattr__(name: str):
    if name in _PUBLIC:
        return getattr(_import_module(f"{__name__}.{_PUBLIC[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))
