"""Tests of mammo_lib.metrics.stats against hand-computed values (Sec. 5.1: significance of KT vs fine-tune)."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from mammo_lib.metrics.stats import (bootstrap_accuracy_diff, compare, mcnemar, paired_tests, significance_table,
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


# ---------------------------------------------------------------------------------------------
# Corrected resampled t, Holm, minimum detectable effect, trend test, cluster bootstrap
# ---------------------------------------------------------------------------------------------
from scipy import stats as sps  # noqa: E402

from mammo_lib.metrics.stats import (cluster_bootstrap_diff, corrected_resampled_t, holm,  # noqa: E402
                             min_detectable_effect, paired_t, trend_test)


def test_paired_t_by_hand_and_equals_paired_tests():
    # d = 0.1, 0.1, 0.2: mean 2/15, var 1/300, se = sqrt(1/900) = 1/30, t = 4, df 2,
    # p = 1 - t / sqrt(t^2 + 2) (closed form of the t(2) tail)
    r = paired_t([0.1, 0.1, 0.2])
    assert (r["df"], r["n"]) == (2, 3)
    assert r["t"] == pytest.approx(4.0) and r["se"] == pytest.approx(1 / 30)
    assert r["p"] == pytest.approx(1 - 4 / math.sqrt(18))
    pt = paired_tests([0.6, 0.7, 0.8], [0.5, 0.6, 0.6])
    assert r["t"] == pytest.approx(pt["t_statistic"]) and r["p"] == pytest.approx(pt["t_p"])


def test_corrected_resampled_t_by_hand():
    # variance factor 1/3 + n_test/n_train = 1/3 + 1/4 = 7/12; se = sqrt(7/12 / 300) = sqrt(7)/60;
    # t = (2/15) / (sqrt(7)/60) = 8/sqrt(7); df 2: p = 1 - t/sqrt(t^2 + 2) = 1 - 8/sqrt(78)
    r = corrected_resampled_t([0.1, 0.1, 0.2], n_train=4, n_test=1)
    assert r["t"] == pytest.approx(8 / math.sqrt(7))
    assert r["se"] == pytest.approx(math.sqrt(7) / 60)
    assert r["p"] == pytest.approx(1 - 8 / math.sqrt(78))
    assert (r["mean_diff"], r["df"]) == (pytest.approx(2 / 15), 2)
    # repeated CV: J = folds x repeats; no overlap term -> the plain t
    r0 = corrected_resampled_t([0.1, 0.1, 0.2], n_train=10**12, n_test=1)
    assert r0["p"] == pytest.approx(paired_t([0.1, 0.1, 0.2])["p"], rel=1e-9)


@pytest.mark.parametrize("p_plain, p_expected", [(0.0082, 0.031), (0.0069, 0.027)])
def test_corrected_t_turns_the_papers_p_values(p_plain, p_expected):
    # the paper's p (Sec. 5.1) read as a plain paired t over 5 folds (df 4): recover |t|, then
    # Nadeau-Bengio with n_train/n_test = 4 scales t by sqrt(1/5) / sqrt(1/5 + 1/4) = 2/3
    t_plain = sps.t.isf(p_plain / 2, 4)
    t_nb = t_plain * math.sqrt(1 / 5) / math.sqrt(1 / 5 + 1 / 4)
    p_nb = 2 * sps.t.sf(t_nb, 4)
    assert p_nb == pytest.approx(p_expected, abs=0.0005)
    # and the function does the same on any 5 differences whose plain t is t_plain:
    base = np.array([-2.0, -1.0, 0.0, 1.0, 2.0])            # mean 0, var 2.5
    d = base + t_plain * math.sqrt(2.5 / 5)                # mean = t_plain * se_plain
    assert paired_t(d)["p"] == pytest.approx(p_plain, rel=1e-9)
    r = corrected_resampled_t(d, n_train=4, n_test=1)
    assert r["t"] == pytest.approx(t_nb, rel=1e-12) and r["p"] == pytest.approx(p_nb, rel=1e-9)
    assert corrected_resampled_t(d, n_train=219, n_test=55)["p"] == pytest.approx(p_nb, rel=0.01)


def test_zero_variance_t():
    assert math.isnan(paired_t([0.0, 0.0, 0.0])["t"]) and math.isnan(paired_t([0.0, 0.0])["p"])
    r = corrected_resampled_t([0.1, 0.1], 4, 1)
    assert r["t"] == math.inf and r["p"] == 0.0


def test_holm_by_hand():
    # sorted 0.005, 0.01, 0.03, 0.04 (m = 4, NaN not counted): 4*0.005 = 0.02, 3*0.01 = 0.03,
    # 2*0.03 = 0.06, 1*0.04 = 0.04 -> monotone max 0.06
    out = holm([0.01, np.nan, 0.04, 0.03, 0.005])
    np.testing.assert_allclose(out, [0.03, np.nan, 0.06, 0.06, 0.02])
    np.testing.assert_allclose(holm([0.5, 0.6]), [1.0, 1.0])   # capped at 1
    np.testing.assert_allclose(holm([0.02]), [0.02])
    assert np.isnan(holm([np.nan, np.nan])).all() and holm([]).shape == (0,)


def test_min_detectable_effect_known_values():
    # one-sample / paired t, two-sided alpha 0.05, power 0.8: Cohen's d = 0.9960 for n = 10 and
    # d = 1.6820 for n = 5 (standard power tables, e.g. G*Power); large n -> z_.975 + z_.8 = 2.8016
    assert min_detectable_effect(1.0, 10) == pytest.approx(0.9960, abs=5e-4)
    assert min_detectable_effect(1.0, 5) == pytest.approx(1.6820, abs=5e-4)
    assert min_detectable_effect(1.0, 20000) * math.sqrt(20000) == pytest.approx(2.8016, abs=2e-3)
    # linear in sd; correction multiplies the variance (sqrt on the effect)
    assert min_detectable_effect(4.5, 5) == pytest.approx(4.5 * min_detectable_effect(1.0, 5))
    assert min_detectable_effect(4.5, 5, correction=2.25) == pytest.approx(1.5 * min_detectable_effect(4.5, 5))
    assert min_detectable_effect(0.0, 5) == 0.0


@pytest.mark.parametrize("n", [2, 3, 5, 30])
def test_min_detectable_effect_small_n_has_the_power(n):
    # n = 2 (one degree of freedom, the smoke profile's 2 folds) needs delta ~ 16 (mde 11.5 sd), where
    # scipy's nct.cdf lower tail is NaN; the power at the solution is 0.8 by an independent
    # Monte Carlo of the t statistic
    mde = min_detectable_effect(1.0, n)
    assert math.isfinite(mde) and mde > 0
    rng = np.random.default_rng(n)
    d = rng.normal(mde, 1.0, size=(200_000, n))
    t = d.mean(1) / (d.std(1, ddof=1) / math.sqrt(n))
    assert np.mean(np.abs(t) > sps.t.ppf(0.975, n - 1)) == pytest.approx(0.8, abs=0.005)


def test_min_detectable_effect_has_the_power_by_simulation():
    # Monte Carlo: at the MDE the plain t over n = 6 normal differences rejects 80 % of the time
    rng = np.random.default_rng(1)
    mde = min_detectable_effect(2.0, 6)
    d = rng.normal(mde, 2.0, size=(200_000, 6))
    t = d.mean(1) / (d.std(1, ddof=1) / math.sqrt(6))
    assert np.mean(np.abs(t) > sps.t.ppf(0.975, 5)) == pytest.approx(0.8, abs=0.005)


def _dose(slopes: dict[int, float], betas=(0, 1, 3, 7)) -> pd.DataFrame:
    rows = [{"fold": f, "beta": b, "acc": 0.5 + s * math.log2(1 + b)} for f, s in slopes.items() for b in betas]
    return pd.DataFrame(rows)


def test_trend_test_by_hand():
    # x = log2(1 + beta) = 0, 1, 2, 3: exact lines with slopes 0.01, 0.02, 0.03 ->
    # mean 0.02, sd 0.01, t = 0.02 / (0.01 / sqrt 3) = 2 sqrt 3, df 2: p = 1 - t / sqrt(t^2 + 2)
    r = trend_test(_dose({0: 0.01, 1: 0.02, 2: 0.03}), "acc")
    assert r["n_folds"] == 3
    assert r["slope_mean"] == pytest.approx(0.02) and r["slope_sd"] == pytest.approx(0.01)
    t = 2 * math.sqrt(3)
    assert r["t"] == pytest.approx(t) and r["p"] == pytest.approx(1 - t / math.sqrt(t * t + 2))
    # noise around the line: OLS slope of (0,0),(1,1),(2,0),(3,1) is sum(xc*yc)/sum(xc^2) = 1/5
    df = pd.DataFrame({"k": [0] * 4 + [1] * 4, "b": [0, 1, 3, 7] * 2, "y": [0, 1, 0, 1, 0, 1, 0, 1]})
    r2 = trend_test(df, "y", beta_col="b", fold_col="k")
    assert r2["slope_mean"] == pytest.approx(0.2) and r2["slope_sd"] == pytest.approx(0.0)


TREND_FAIL = [
    (_dose({0: 0.01, 1: 0.02}).drop(columns="acc"), {}, "missing column(s) ['acc']"),
    (_dose({0: 0.01, 1: 0.02}).assign(beta=lambda d: np.where(d["fold"] == 1, 3, d["beta"])), {},
     "fold(s) [1] have fewer than 2 distinct 'beta' values"),
    (_dose({0: 0.01}), {}, "needs at least 2 folds for a t over folds, got 1"),
    (_dose({0: 0.01, 1: 0.02}).assign(beta=lambda d: d["beta"] - 1), {}, "column 'beta' must be >= 0, row 0 is -1.0"),
    (_dose({0: 0.01, 1: 0.02}).assign(acc=lambda d: d["acc"].where(d.index != 5)), {},
     "column 'acc' is not a finite number at row 5"),
]


@pytest.mark.parametrize("df, kw, message", TREND_FAIL)
def test_trend_test_rejects(df, kw, message):
    with pytest.raises(ValueError) as e:
        trend_test(df, "acc", **kw)
    assert message in str(e.value)


def test_cluster_bootstrap_singletons_equal_ordinary_bootstrap():
    rng = np.random.default_rng(0)
    a = rng.random(37) < 0.7
    b = rng.random(37) < 0.5
    ordinary = bootstrap_accuracy_diff(a, b, n_boot=3000, seed=11)
    clustered = cluster_bootstrap_diff(a, b, [f"p{i}" for i in range(37)], n_boot=3000, seed=11)
    assert clustered["n_clusters"] == 37
    assert (clustered["mean_diff"], clustered["lo"], clustered["hi"], clustered["se"]) == \
        (ordinary["diff"], ordinary["lo"], ordinary["hi"], ordinary["se"])


def test_cluster_bootstrap_by_hand():
    # two patients: P1 has 3 cases all A-right/B-wrong (s = 3), P2 one case both right (s = 0).
    # A resample draws 2 patients: {P1,P1} -> 6/6 = 1, {P1,P2} -> 3/4, {P2,P2} -> 0; so every
    # resampled difference is in {0, 0.75, 1}, and a case bootstrap would also give e.g. 0.5.
    a, b = [1, 1, 1, 1], [0, 0, 0, 1]
    r = cluster_bootstrap_diff(a, b, ["P1", "P1", "P1", "P2"], n_boot=4000, seed=0, ci=0.5)
    assert r["mean_diff"] == pytest.approx(0.75) and r["n_clusters"] == 2 and r["n"] == 4
    assert set(np.round([r["lo"], r["hi"]], 12)) <= {0.0, 0.75, 1.0}
    # quartiles of {0 w.p. 1/4, 0.75 w.p. 1/2, 1 w.p. 1/4}: both 0.75 up to sampling at the edges
    assert r["lo"] in (0.0, 0.75) and r["hi"] in (0.75, 1.0)
    one = cluster_bootstrap_diff(a, b, ["P1", "P1", "P1", "P2"], n_boot=4000, seed=0, chunk=333)
    assert one == cluster_bootstrap_diff(a, b, ["P1", "P1", "P1", "P2"], n_boot=4000, seed=0)
    # all cases in one cluster: every resample is the whole set
    r1 = cluster_bootstrap_diff(a, b, ["P"] * 4, n_boot=50)
    assert r1["lo"] == r1["hi"] == 0.75


# rejected inputs of the new functions, with the exact message
NEW_FAIL = [
    (paired_t, ([0.1],), {}, "paired_t: needs at least 2 differences, got 1"),
    (paired_t, ([[0.1, 0.2]],), {}, "paired_t: diffs must be 1-D, got shape (1, 2)"),
    (paired_t, ([0.1, float("nan")],), {}, "paired_t: diffs must be finite, element 1 is nan"),
    (corrected_resampled_t, ([0.1, 0.2], 0, 1), {}, "corrected_resampled_t: n_train must be a positive integer, got 0"),
    (corrected_resampled_t, ([0.1, 0.2], 4, 1.5), {}, "corrected_resampled_t: n_test must be a positive integer, got 1.5"),
    (corrected_resampled_t, ([0.1], 4, 1), {}, "corrected_resampled_t: needs at least 2 differences, got 1"),
    (holm, ([0.1, 1.2],), {}, "holm: p values must lie in [0, 1] (or be NaN), element 1 is 1.2"),
    (holm, ([[0.1]],), {}, "holm: pvalues must be 1-D, got shape (1, 1)"),
    (min_detectable_effect, (1.0, 1), {}, "min_detectable_effect: n must be >= 2 (a t test needs a variance), got 1"),
    (min_detectable_effect, (-1.0, 5), {}, "min_detectable_effect: sd_diff must be finite and >= 0, got -1.0"),
    (min_detectable_effect, (1.0, 5), {"alpha": 0.0}, "min_detectable_effect: alpha must be in (0, 1), got 0.0"),
    (min_detectable_effect, (1.0, 5), {"power": 0.01}, "min_detectable_effect: power must be in (alpha, 1) = (0.05, 1), got 0.01"),
    (min_detectable_effect, (1.0, 5), {"correction": 0.0}, "min_detectable_effect: correction must be finite and > 0, got 0.0"),
    (trend_test, ([1, 2], "acc"), {}, "trend_test: df must be a pandas DataFrame, got list"),
    (cluster_bootstrap_diff, ([1, 0], [1, 1], ["a"]), {},
     "cluster_bootstrap_diff: clusters must be 1-D with one entry per case (2), got shape (1,)"),
    (cluster_bootstrap_diff, ([1, 0], [1, 1], ["a", None]), {}, "cluster_bootstrap_diff: clusters has a missing value at case 1"),
    (cluster_bootstrap_diff, ([1, 0], [1, 1], ["a", "b"]), {"n_boot": 0}, "cluster_bootstrap_diff: n_boot must be >= 1, got 0"),
    (cluster_bootstrap_diff, ([1, 0], [1, 1], ["a", "b"]), {"ci": 1.0}, "cluster_bootstrap_diff: ci must be in (0, 1), got 1.0"),
    (cluster_bootstrap_diff, ([1, 0], [1], ["a", "b"]), {}, "cluster_bootstrap_diff: inputs must be paired (same length), got 2 and 1"),
]


@pytest.mark.parametrize("fn, args, kw, message", NEW_FAIL)
def test_new_functions_reject(fn, args, kw, message):
    with pytest.raises(ValueError) as e:
        fn(*args, **kw)
    assert str(e.value) == message


def test_cohen_kappa_by_hand():
    from mammo_lib.metrics.stats import cohen_kappa
    # 10 cells: a = 6 L / 4 B, b = 5 L / 5 B, agree on 4 L + 3 B = 7: p_o = 0.7,
    # p_e = 0.6*0.5 + 0.4*0.5 = 0.5, kappa = (0.7 - 0.5) / 0.5 = 0.4
    a = ["L"] * 6 + ["B"] * 4
    b = ["L"] * 4 + ["B"] * 2 + ["B"] * 3 + ["L"]
    assert cohen_kappa(a, b) == pytest.approx(0.4)
    # 2-D grids are flattened; perfect agreement -> 1; swapped labels -> -1
    g = np.array([["L", "B"], ["B", "L"]])
    assert cohen_kappa(g, g) == 1.0
    assert cohen_kappa(g, np.where(g == "L", "B", "L")) == -1.0
    # high raw agreement, chance-level kappa: 9 of 10 cells L for both, disagree on the one B each:
    # p_o = 0.8, p_e = 0.81 + 0.01 = 0.82, kappa = -0.02 / 0.18 = -1/9
    a2 = ["L"] * 8 + ["B", "L"]
    b2 = ["L"] * 8 + ["L", "B"]
    assert cohen_kappa(a2, b2) == pytest.approx(-1 / 9)
    assert math.isnan(cohen_kappa(["L"] * 3, ["L"] * 3))  # p_e = 1: undefined


@pytest.mark.parametrize("a, b, message", [
    (["L", "B"], ["L"], "cohen_kappa: the two label arrays must have one shape, got (2,) and (1,)"),
    ([], [], "cohen_kappa: no labels given"),
])
def test_cohen_kappa_rejects(a, b, message):
    from mammo_lib.metrics.stats import cohen_kappa
    with pytest.raises(ValueError) as e:
        cohen_kappa(a, b)
    assert str(e.value) == message


def test_compare_adds_corrected_t_mde_and_cluster_ci():
    # _CV: 3 folds of 2 test cases -> n_test 2, n_train 4; fold differences kt - ft = 0.5, 0, 1:
    # mean 0.5, var 0.25; corrected variance factor 1/3 + 2/4 = 5/6 -> t = 0.5 / sqrt(0.25 * 5/6)
    # = sqrt(6/5); df 2: p = 1 - t / sqrt(t^2 + 2)
    r = compare(_CV(), "kt", "ft", n_boot=300)
    t = math.sqrt(6 / 5)
    assert (r["nb_n_train"], r["nb_n_test"]) == (4, 2)
    assert r["nb_t"] == pytest.approx(t) and r["nb_t_p"] == pytest.approx(1 - t / math.sqrt(t * t + 2))
    assert r["nb_t_p"] > r["t_p"]
    # MDE: sd of the differences 0.5, J = 3, correction 1 + 3 * 2 / 4 = 2.5
    assert r["mde_plain"] == pytest.approx(min_detectable_effect(0.5, 3))
    assert r["mde"] == pytest.approx(math.sqrt(2.5) * r["mde_plain"])
    assert "cluster_lo" not in r
    # one patient per case: the cluster CI is the case bootstrap's
    groups = {c: f"p_{c}" for c in "abcdef"}
    rc = compare(_CV(), "kt", "ft", n_boot=300, groups=groups)
    assert (rc["cluster_lo"], rc["cluster_hi"], rc["n_clusters"]) == (rc["boot_lo"], rc["boot_hi"], 6)
    # all cases of one patient: no resampling variance
    rone = significance_table(_CV(), [("kt", "ft")], n_boot=300, groups=pd.Series({c: "P" for c in "abcdef"}))
    assert rone.loc[0, "cluster_lo"] == rone.loc[0, "cluster_hi"] == pytest.approx(0.5)
    with pytest.raises(ValueError) as e:
        compare(_CV(), "kt", "ft", n_boot=10, groups={"a": "P"})
    assert str(e.value) == "groups has no patient for case 'f'"  # the first in kt's (reversed) order
