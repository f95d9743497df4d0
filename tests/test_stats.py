"""Tests of mammo_lib.stats against hand-computed values (Sec. 5.1: significance of KT vs fine-tune)."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from mammo_lib.stats import (bootstrap_accuracy_diff, compare, mcnemar, paired_tests, significance_table,
                             wilcoxon_min_p)


def _pairs(b: int, c: int, both: int = 5, neither: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Correctness vectors with b (A right, B wrong) and c (A wrong, B right) discordant pairs."""
    a = [1] * b + [0] * c + [1] * both + [0] * neither
    bb = [0] * b + [1] * c + [1] * both + [0] * neither
    return np.array(a, bool), np.array(bb, bool)


# McNemar (b, c, exact, expected p): exact = 2 * P(X <= min(b,c) | n=b+c, 1/2);
# chi-square with continuity correction: stat = (|b-c|-1)^2/(b+c), p = erfc(sqrt(stat/2)) for 1 dof.
MCNEMAR_CASES = [
    (8, 2, True, 2 * (1 + 10 + 45) / 2**10),  # 0.109375
    (2, 8, True, 0.109375),
    (0, 5, True, 2 / 2**5),
    (3, 3, True, 1.0),
    (0, 0, True, 1.0),
    (8, 2, False, math.erfc(math.sqrt(2.5 / 2))),
    (0, 0, False, 1.0),
]

FAIL_CASES = [
    (paired_tests, ([0.5, 0.6], [0.5]), ValueError, "paired"),
    (paired_tests, ([0.5], [0.4]), ValueError, "at least 2"),
    (paired_tests, ([], []), ValueError, "empty"),
    (mcnemar, ([1, 0, 2], [1, 1, 1]), ValueError, "0/1"),
    (mcnemar, ([1, 0], [1, 1, 0]), ValueError, "paired"),
    (bootstrap_accuracy_diff, ([1, 0], [1]), ValueError, "paired"),
]
BOOT_FAIL = [
    (dict(n_boot=0), "n_boot"),
    (dict(ci=1.0), "ci"),
    (dict(ci=0.0), "ci"),
]


@pytest.mark.parametrize("b, c, exact, p", MCNEMAR_CASES)
def test_mcnemar_by_hand(b, c, exact, p):
    ca, cb = _pairs(b, c)
    r = mcnemar(ca, cb, exact=exact)
    assert (r["b"], r["c"], r["n"]) == (b, c, b + c + 8)
    assert r["p"] == pytest.approx(p, rel=1e-9)


def test_mcnemar_chi2_statistic():
    assert mcnemar(*_pairs(8, 2), exact=False)["statistic"] == pytest.approx(2.5)
    assert mcnemar(*_pairs(8, 2), exact=True)["statistic"] == 2


@pytest.mark.parametrize("fn, args, exc, match", FAIL_CASES)
def test_bad_input_raises(fn, args, exc, match):
    with pytest.raises(exc, match=match):
        fn(*args)


@pytest.mark.parametrize("kwargs, match", BOOT_FAIL)
def test_bootstrap_bad_parameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        bootstrap_accuracy_diff([1, 0, 1], [0, 0, 1], **kwargs)


def test_paired_t_by_hand():
    # differences 0.1, 0.1, 0.2: mean 2/15, sd = 1/sqrt(300), t = mean / (sd / sqrt 3) = 4;
    # df = 2: two-sided p = 1 - t / sqrt(t^2 + 2) = 1 - 4 / sqrt(18)
    r = paired_tests([0.6, 0.7, 0.8], [0.5, 0.6, 0.6])
    assert r["t_statistic"] == pytest.approx(4.0)
    assert r["t_p"] == pytest.approx(1 - 4 / math.sqrt(18))
    assert r["mean_diff"] == pytest.approx(2 / 15)


def test_wilcoxon_five_folds_cannot_go_below_0_0625():
    # all five differences positive and distinct: the most extreme exact outcome
    r = paired_tests([0.9, 0.8, 0.85, 0.95, 0.7], [0.6, 0.49, 0.53, 0.62, 0.36])
    assert wilcoxon_min_p(5) == 0.0625
    assert r["wilcoxon_p"] == pytest.approx(0.0625)
    assert r["wilcoxon_statistic"] == 0.0
    assert r["t_p"] < 0.01  # while the t-test can reach the paper's p ~ 0.008


def test_identical_inputs():
    acc = [0.6, 0.7, 0.65, 0.8, 0.7]
    r = paired_tests(acc, acc)
    assert r["mean_diff"] == 0.0
    assert math.isnan(r["t_statistic"]) and math.isnan(r["t_p"])  # scipy: 0/0
    assert r["wilcoxon_p"] == 1.0
    ca = np.array([1, 0, 1, 1, 0], bool)
    assert mcnemar(ca, ca)["p"] == 1.0
    bs = bootstrap_accuracy_diff(ca, ca, n_boot=200)
    assert bs["diff"] == bs["lo"] == bs["hi"] == 0.0


def test_bootstrap_contains_diff_and_is_deterministic():
    rng = np.random.default_rng(0)
    a = rng.random(60) < 0.8
    b = rng.random(60) < 0.6
    r1 = bootstrap_accuracy_diff(a, b, n_boot=2000, seed=7)
    r2 = bootstrap_accuracy_diff(a, b, n_boot=2000, seed=7)
    r3 = bootstrap_accuracy_diff(a, b, n_boot=2000, seed=8)
    assert r1 == r2
    assert r1["se"] != r3["se"]  # the seed matters (quantiles of 60 cases are coarse)
    assert r1["se"] == pytest.approx(r3["se"], rel=0.1)
    assert r1["diff"] == pytest.approx(a.mean() - b.mean())
    assert r1["lo"] <= r1["diff"] <= r1["hi"]
    assert r1["lo"] < r1["hi"]


def test_bootstrap_chunked_equals_one_pass():
    a = np.array([1, 1, 0, 1, 0, 1, 1, 0, 1, 1], bool)
    b = np.array([0, 1, 0, 0, 1, 1, 0, 0, 1, 0], bool)
    one = bootstrap_accuracy_diff(a, b, n_boot=500, seed=3, chunk=500)
    small = bootstrap_accuracy_diff(a, b, n_boot=500, seed=3, chunk=7)
    assert one == small


def test_bootstrap_degenerate_by_hand():
    r = bootstrap_accuracy_diff([1, 1, 1], [0, 0, 0], n_boot=100)
    assert r["diff"] == r["lo"] == r["hi"] == 1.0


class _CV:
    """Stand-in for protocol.CVResult: two specs, 3 folds, 6 cases."""

    def __init__(self) -> None:
        self.per_fold = pd.DataFrame({"spec": ["ft"] * 3 + ["kt"] * 3, "fold": [0, 1, 2] * 2,
                                      "accuracy": [0.5, 0.5, 0.0, 1.0, 0.5, 1.0]})
        ids = ["a", "b", "c", "d", "e", "f"]
        labels = [0, 1, 0, 1, 0, 1]
        ft_pred = [0, 0, 1, 1, 1, 0]   # correct: a, d
        kt_pred = [0, 1, 0, 1, 1, 1]   # correct: a, b, c, d, f  (listed in another order below)
        self.predictions = pd.concat([
            pd.DataFrame({"spec": "ft", "fold": [0, 0, 1, 1, 2, 2], "case_id": ids, "label": labels, "pred": ft_pred}),
            pd.DataFrame({"spec": "kt", "fold": [0, 0, 1, 1, 2, 2], "case_id": ids, "label": labels,
                          "pred": kt_pred}).iloc[::-1],
        ], ignore_index=True)


def test_compare_pairs_by_fold_and_case():
    r = compare(_CV(), "kt", "ft", n_boot=300)
    # McNemar: kt right & ft wrong = b, c, f -> b=3; kt wrong & ft right: none -> c=0; p = 2/2^3
    assert (r["mcnemar_b"], r["mcnemar_c"]) == (3, 0)
    assert r["mcnemar_p"] == pytest.approx(0.25)
    assert r["pooled_acc_a"] == pytest.approx(5 / 6) and r["pooled_acc_b"] == pytest.approx(2 / 6)
    assert r["boot_diff"] == pytest.approx(3 / 6)
    assert r["mean_diff"] == pytest.approx((0.5 + 0.0 + 1.0) / 3)
    t = significance_table(_CV(), [("kt", "ft"), ("ft", "kt")], n_boot=300)
    assert list(t["spec_a"]) == ["kt", "ft"]
    assert t.loc[1, "mcnemar_b"] == 0 and t.loc[1, "mcnemar_c"] == 3


def test_compare_errors():
    cv = _CV()
    with pytest.raises(ValueError, match="no folds"):
        compare(cv, "kt", "nope")
    cv.predictions = cv.predictions[cv.predictions["case_id"] != "a"].reset_index(drop=True)
    cv.predictions = pd.concat([cv.predictions, pd.DataFrame(
        {"spec": ["ft"], "fold": [0], "case_id": ["a"], "label": [0], "pred": [0]})], ignore_index=True)
    with pytest.raises(ValueError, match="different cases"):
        compare(cv, "kt", "ft")
    with pytest.raises(ValueError, match="pairs is empty"):
        significance_table(_CV(), [])
