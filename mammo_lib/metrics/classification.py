"""Classification metrics for benign (0) / malignant (1) mass classification (Table 2).

The confusion matrix follows the paper's Table 2 layout: rows are the true class
(benign, malignant), columns the predicted class, i.e. ``[[TN, FP], [FN, TP]]`` with
malignant as the positive class.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score

from mammo_lib.data.records import BENIGN, MALIGNANT


def _as_labels(y_true: Any) -> np.ndarray:
    y = np.asarray(y_true)
    if y.ndim != 1:
        raise ValueError(f"y_true must be 1-D, got shape {y.shape}")
    if y.size and not np.isin(y, (BENIGN, MALIGNANT)).all():
        bad = sorted(set(np.unique(y).tolist()) - {BENIGN, MALIGNANT})
        raise ValueError(f"y_true must hold only 0 (benign) and 1 (malignant); found {bad[:5]}")
    return y.astype(np.int64)


def confusion(y_true: Any, y_pred: Any) -> np.ndarray:
    """2x2 confusion matrix ``[[TN, FP], [FN, TP]]`` (rows true, columns predicted)."""
    t = _as_labels(y_true)
    p = _as_labels(y_pred)
    if t.shape != p.shape:
        raise ValueError(f"y_true and y_pred differ in length: {t.shape[0]} vs {p.shape[0]}")
    return np.bincount(2 * t + p, minlength=4).reshape(2, 2)


def classification_metrics(y_true: Any, prob_malignant: Any, threshold: float = 0.5) -> dict[str, Any]:
    """Accuracy, sensitivity, specificity, ROC AUC and the confusion matrix.

    A sample is predicted malignant when ``prob_malignant >= threshold``. Sensitivity is
    TP / (TP + FN), specificity TN / (TN + FP); either is NaN when its class is absent, and
    ``auc`` (``sklearn.metrics.roc_auc_score``) is NaN when ``y_true`` holds a single class.
    Returns ``{"accuracy", "sensitivity", "specificity", "auc", "confusion", "tn", "fp",
    "fn", "tp", "n"}`` with ``confusion`` a 2x2 ``int`` array ``[[TN, FP], [FN, TP]]``.
    """
    y = _as_labels(y_true)
    prob = np.asarray(prob_malignant, dtype=np.float64)
    if prob.shape != y.shape:
        raise ValueError(f"prob_malignant must have shape {y.shape} like y_true, got {prob.shape}")
    if y.size == 0:
        raise ValueError("classification_metrics needs at least one sample")
    if not np.isfinite(prob).all() or (prob < 0).any() or (prob > 1).any():
        raise ValueError("prob_malignant must be finite probabilities in [0, 1]")
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    pred = (prob >= threshold).astype(np.int64)
    cm = confusion(y, pred)
    (tn, fp), (fn, tp) = cm.tolist()
    n = int(y.size)
    sens = tp / (tp + fn) if tp + fn else math.nan
    spec = tn / (tn + fp) if tn + fp else math.nan
    auc = float(roc_auc_score(y, prob)) if len(np.unique(y)) == 2 else math.nan
    return {"accuracy": (tp + tn) / n, "sensitivity": sens, "specificity": spec, "auc": auc,
            "confusion": cm, "tn": tn, "fp": fp, "fn": fn, "tp": tp, "n": n}
