"""The reproduction: run profiles and cache keys, the profile's datasets, the pre-trained trunks and
Table 2 as jobs, the notebook steps (:mod:`mammo_lib.repro.steps`, one module per notebook),
figures, the report, the notebook runner and the committed-results fingerprint.

The names below are the subpackage's public interface, imported on first use (so that importing
the package stays light).
"""
from importlib import import_module as _import_module

_PUBLIC = {
    "Config": "config", "load_config": "config", "ConfigError": "config", "stage_key": "config",
}
__all__ = sorted(_PUBLIC)


def __getattr__(name: str):
    if name in _PUBLIC:
        return getattr(_import_module(f"{__name__}.{_PUBLIC[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))
