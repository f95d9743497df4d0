"""Explanations of a prediction behind one interface (:mod:`.interface`): ``Eq6Explainer`` (the
proposed *Lesion* / *Background* cells, Eq. 6), ``CamExplainer`` (Grad-CAM / HiResCAM) and
``KnnExplainer`` (nearest training cases) are configured once and called per ROI, each returning
an ``Attribution``; the sanity measures (``randomisation_table``: any explainer), GLCM texture
(Eq. 1-2) and localisation scores. Drawing lives in :mod:`mammo_lib.visualize`.

The names below are the subpackage's public interface, imported on first use (so that importing
the package stays light).
"""
from importlib import import_module as _import_module

_PUBLIC = {
    "Explanation": "eq6", "explain_roi": "eq6", "explain_many": "eq6", "lesion_agreement": "eq6", "LESION": "eq6",
    "BACKGROUND": "eq6",
    "explanation_sanity": "sanity", "pixel_change_agreement": "sanity", "randomisation_check": "sanity",
    "glcm_variance_map": "glcm", "glcm_feature_table": "glcm",
    "cam_map": "cam", "randomisation_table": "sanity",
    "Attribution": "interface", "Explainer": "interface", "Eq6Explainer": "interface", "CamExplainer": "interface",
    "KnnExplainer": "interface", "similarity": "interface",
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
