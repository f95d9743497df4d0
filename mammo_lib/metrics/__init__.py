"""Metrics: classification metrics (Table 2) and the significance statistics (Sec. 5.1).
Imports :mod:`mammo_lib.data` (the class labels) only.

The names below are the subpackage's public interface, imported on first use (so that importing
the package stays light).
"""
from importlib import import_module as _import_module

_PUBLIC = {
    "classification_metrics": "classification", "confusion": "classification",
    "paired_t": "stats", "corrected_resampled_t": "stats", "holm": "stats", "mcnemar": "stats", "cohen_kappa":
    "stats", "compare": "stats", "significance_table": "stats",
}
__all__ = sorted(_PUBLIC)


def __getattr__(name: str):
    if name in _PUBLIC:
        return getattr(_import_module(f"{__name__}.{_PUBLIC[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))
