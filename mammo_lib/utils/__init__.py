"""Utilities below everything else: atomic result files, progress bars, source digests and the
names and bounds shared by the command line and the profiles, the run's float precision. Imports nothing of the package.

The names below are the subpackage's public interface, imported on first use (so that importing
the package stays light).
"""
from importlib import import_module as _import_module

_PUBLIC = {
    "atomic_write": "files", "atomic_dir": "files", "write_text": "files", "write_json": "files", "write_csv":
    "files", "save_figure": "files", "save_torch": "files", "to_jsonable": "files", "read_done_marker": "files",
    "DiskFullError": "files",
    "tqdm": "progress",
    "code_digest": "digest",
    "parse_device": "options",
    "full": "precision", "widen": "precision", "in_precision": "precision", "set_precision": "precision", "PRECISIONS": "precision",
}
__all__ = sorted(_PUBLIC)


def __getattr__(name: str):
    if name in _PUBLIC:
        return getattr(_import_module(f"{__name__}.{_PUBLIC[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))
