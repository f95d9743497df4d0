"""Protocol: how the paper's numbers are measured: k-fold cross-validation and the pre-training stage,
the stand-in pre-training and the trunk gate, Table 2 as a calibrated instrument, and the mechanism
analysis of a shortcut.

The names below are the subpackage's public interface, imported on first use (so that importing
the package stays light).
"""
from importlib import import_module as _import_module

_PUBLIC = {
    "make_folds": "cross_validation", "inner_split": "cross_validation", "RunSpec": "cross_validation", "CVResult":
    "cross_validation", "run_cv": "cross_validation", "pretrain": "cross_validation",
    "pretrain_generic": "stand_in", "trunk_gate": "stand_in", "shape_task": "stand_in",
    "Instrument": "instrument", "InstrumentResult": "instrument", "BetaPoint": "instrument", "beta_grid":
    "instrument", "calibration_gate": "instrument",
    "mechanism_table": "mechanism", "contrast_pairs": "mechanism",
}
__all__ = sorted(_PUBLIC)


def __getattr__(name: str):
    if name in _PUBLIC:
        return getattr(_import_module(f"{__name__}.{_PUBLIC[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))
