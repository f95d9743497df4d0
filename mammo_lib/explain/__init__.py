"""Explanations of a prediction: the proposed Eq. 6 explanation (*Lesion* / *Background* cells), its
sanity measures, GLCM texture (Eq. 1-2), Grad-CAM / HiResCAM, kNN feature explanations and
localisation scores.

The names below are the subpackage's public interface, imported on first use (so that importing
the package stays light).
"""
from importlib import import_module as _import_module

_PUBLIC = {
    "Explanation": "eq6", "explain_roi": "eq6", "explain_many": "eq6", "lesion_agreement": "eq6", "LESION": "eq6",
    "BACKGROUND": "eq6",
    "explanation_sanity": "sanity", "pixel_change_agreement": "sanity", "randomisation_check": "sanity",
    "glcm_variance_map": "glcm", "glcm_feature_table": "glcm",
    "cam_map": "cam",
    "knn_explain": "knn", "penultimate_features": "knn", "feature_correlation": "knn",
    "localization_table": "localization", "summarize_localization": "localization",
}
__all__ = sorted(_PUBLIC)


def __getattr__(name: str):
    if name in _PUBLIC:
        return getattr(_import_module(f"{__name__}.{_PUBLIC[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))
