"""Tests of mammo_lib.metrics.classification: hand-computed confusion matrices and rates."""
from __future__ import annotations

import math

import numpy as np
import pytest

from mammo_lib.metrics.classification import classification_metrics, confusion

# (y_true, prob_malignant, threshold, expected) -- expected by hand.
CASES = [
    # pred [0,1,0,1]: TN=1 FP=1 FN=1 TP=1; AUC: 3 of 4 (benign, malignant) pairs ordered -> 0.75
    ([0, 0, 1, 1], [0.1, 0.6, 0.4, 0.9], 0.5,
     dict(accuracy=0.5, sensitivity=0.5, specificity=0.5, auc=0.75, confusion=[[1, 1], [1, 1]], n=4)),
    # p == threshold counts as malignant; perfect ranking -> AUC 1
    ([0, 0, 0, 1, 1], [0.0, 0.2, 0.49, 0.5, 1.0], 0.5,
     dict(accuracy=1.0, sensitivity=1.0, specificity=1.0, auc=1.0, confusion=[[3, 0], [0, 2]], n=5)),
    # a higher threshold moves two malignant to benign: TN=2 FP=0 FN=2 TP=1
    ([0, 0, 1, 1, 1], [0.1, 0.3, 0.6, 0.7, 0.95], 0.8,
     dict(accuracy=0.6, sensitivity=1 / 3, specificity=1.0, auc=1.0, confusion=[[2, 0], [2, 1]], n=5)),
    # single class: AUC and specificity undefined (NaN)
    ([1, 1, 1], [0.2, 0.7, 0.9], 0.5,
     dict(accuracy=2 / 3, sensitivity=2 / 3, specificity=math.nan, auc=math.nan, confusion=[[0, 0], [1, 2]], n=3)),
]

FAIL_CASES = [
    (dict(y_true=[0, 2], prob_malignant=[0.1, 0.2]), ValueError, "only 0"),
    (dict(y_true=[0, 1], prob_malignant=[0.1]), ValueError, "shape"),
    (dict(y_true=[0, 1], prob_malignant=[0.1, 1.2]), ValueError, r"\[0, 1\]"),
    (dict(y_true=[0, 1], prob_malignant=[0.1, np.nan]), ValueError, "finite"),
    (dict(y_true=[], prob_malignant=[]), ValueError, "at least one"),
    (dict(y_true=[0, 1], prob_malignant=[0.1, 0.2], threshold=2.0), ValueError, "threshold"),
    (dict(y_true=[[0, 1]], prob_malignant=[[0.1, 0.2]]), ValueError, "1-D"),
]


def _eq(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b)


@pytest.mark.parametrize("y, p, thr, expected", CASES)
def test_classification_metrics_by_hand(y, p, thr, expected):
    m = classification_metrics(y, p, threshold=thr)
    for key in ("accuracy", "sensitivity", "specificity", "auc"):
        assert _eq(m[key], expected[key]), key
    np.testing.assert_array_equal(m["confusion"], expected["confusion"])
    (tn, fp), (fn, tp) = expected["confusion"]
    assert (m["tn"], m["fp"], m["fn"], m["tp"], m["n"]) == (tn, fp, fn, tp, expected["n"])


@pytest.mark.parametrize("kwargs, exc, match", FAIL_CASES)
def test_classification_metrics_rejects_bad_input(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        classification_metrics(**kwargs)


def test_confusion_layout_rows_true_columns_predicted():
    # one false positive (true benign, predicted malignant) sits in row 0, column 1
    np.testing.assert_array_equal(confusion([0, 1, 1], [1, 1, 0]), [[0, 1], [1, 1]])


def test_metrics_of_pooled_folds_equal_sum_of_fold_confusions():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 40)
    p = rng.random(40)
    whole = classification_metrics(y, p)["confusion"]
    parts = sum(classification_metrics(y[s], p[s])["confusion"] for s in (slice(0, 13), slice(13, 40)))
    np.testing.assert_array_equal(whole, parts)
