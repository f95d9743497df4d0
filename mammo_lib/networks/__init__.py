"""Networks: the DenseNet121 classifier of Sec. 3.3 (and the small stand-in), group activations and
activation maps (Eq. 3-4), and the knowledge-transfer loss (Eq. 5). Imports :mod:`mammo_lib.utils`.

The names below are the subpackage's public interface, imported on first use (so that importing
the package stays light).
"""
from importlib import import_module as _import_module

_PUBLIC = {
    "build_model": "densenet", "WeightsUnavailableError": "densenet", "set_trainable": "densenet", "to_model_input":
    "densenet", "on_device": "densenet",
    "GroupActivations": "activation", "activation_map": "activation", "activation_distance": "activation",
    "activation_distances": "activation",
    "KnowledgeTransferLoss": "transfer", "make_teacher": "transfer", "teacher_maps": "transfer",
}
__all__ = sorted(_PUBLIC)


def __getattr__(name: str):
    if name in _PUBLIC:
        return getattr(_import_module(f"{__name__}.{_PUBLIC[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))
