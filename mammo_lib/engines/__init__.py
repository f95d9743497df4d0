"""Engines: the training loops (fine-tuning and knowledge transfer, Eq. 5), the frozen-trunk cache
with its grouped heads, the model-selection policy, mixed precision and distributed data parallel.

The names below are the subpackage's public interface, imported on first use (so that importing
the package stays light).
"""
from importlib import import_module as _import_module

_PUBLIC = {
    "TrainConfig": "training", "TensorData": "training", "TrainResult": "training", "train_model": "training",
    "predict": "training", "epoch_generator": "training",
    "TrunkCache": "trunk_cache", "build_cache": "trunk_cache", "train_head": "trunk_cache", "train_heads":
    "trunk_cache", "HeadResult": "trunk_cache",
    "autocast_for": "amp", "grad_scaler": "amp", "backward_step": "amp",
    "DDPHooks": "distributed", "DistEnv": "distributed", "init_from_env": "distributed", "process_group":
    "distributed",
}
__all__ = sorted(_PUBLIC)


def __getattr__(name: str):
    if name in _PUBLIC:
        return getattr(_import_module(f"{__name__}.{_PUBLIC[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))
