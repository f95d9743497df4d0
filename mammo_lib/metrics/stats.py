"""Significance of knowledge transfer vs fine-tuning (paper Sec. 5.1; ``docs/DECISIONS.md``).

The paper reports p = 0.0082 (ImageNet) and p = 0.0069 (DDSM) without naming the test. Which of
the usual tests can give those numbers:

* paired t-test over the five folds' test accuracies (:func:`paired_tests`): the **only** one
  consistent with both values (it fits with a standard deviation of fold differences of about
  8 points), so it is the test we name as comparable to the paper;
* Wilcoxon signed-rank over the folds (:func:`paired_tests`): with 5 folds the smallest exact
  two-sided p is 2 / 2**5 = 0.0625, so it *cannot* give the paper's values;
* McNemar's test on the pooled per-case predictions (:func:`mcnemar`): with 274 lesions and the
  paper's gains of 46 and 50 lesions, p is far below 0.0082 whatever the number of discordant
  pairs, so it does not match either.

plus a paired percentile bootstrap CI of the pooled accuracy difference
(:func:`bootstrap_accuracy_diff`). :func:`compare` runs all of them on a
:class:`mammo_lib.protocol.cross_validation.CVResult`.

What those tests overstate, and the tools that say so (``docs/DECISIONS.md``):

* cross-validation training sets overlap (75 % for 5 folds), so the fold differences are not
  independent: :func:`corrected_resampled_t` (Nadeau & Bengio 2003) beside :func:`paired_t`; it
  turns the paper's 0.0082 / 0.0069 into about 0.031 / 0.027;
* with 5 folds "no effect" means "no effect larger than the test can see":
  :func:`min_detectable_effect` (noncentral t, 80 % power);
* masses are clustered in patients: :func:`cluster_bootstrap_diff`;
* a table of many tests: :func:`holm`; a dose-response over beta (Eq. 4): :func:`trend_test`;
* agreement of two label maps beyond chance (the explanation's baselines): :func:`cohen_kappa`.
"""
from __future__ import annotations

import warnings
from typing import Any, Iterable, Protocol

import numpy as np
import pandas as pd
from scipy import stats as sps


def wilcoxon_min_p(n: int) -> float:
    """Smallest attainable exact two-sided Wilcoxon signed-rank p value for ``n`` pairs."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    return min(1.0, 2.0 / 2.0 ** n)


class _CVLike(Protocol):
    per_fold: pd.DataFrame
    predictions: pd.DataFrame


def _paired_vectors(a: Any, b: Any, name: str, dtype: Any = np.float64) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(a, dtype=dtype)
    y = np.asarray(b, dtype=dtype)
    if x.ndim != 1 or y.ndim != 1:
        raise ValueError(f"{name}: inputs must be 1-D, got shapes {x.shape} and {y.shape}")
    if x.shape != y.shape:
        raise ValueError(f"{name}: inputs must be paired (same length), got {x.size} and {y.size}")
    if x.size == 0:
        raise ValueError(f"{name}: inputs are empty")
    return x, y


def paired_tests(acc_a: Any, acc_b: Any) -> dict[str, Any]:
    """Paired t-test and Wilcoxon signed-rank test of per-fold accuracies ``a`` vs ``b``.

    t-test: ``scipy.stats.ttest_rel`` (two-sided; statistic and p are NaN when all
    differences are equal, e.g. identical inputs). Wilcoxon: ``scipy.stats.wilcoxon``
    (two-sided, zero differences dropped, exact distribution unless there are ties or
    zeros); identical inputs give statistic 0 and p = 1. With 5 folds the smallest exact
    two-sided Wilcoxon p is 0.0625 (``wilcoxon_min_p(5)``), so it cannot reproduce the
    paper's p = 0.0082 / 0.0069. Returns ``{"n", "mean_a", "mean_b", "mean_diff",
    "t_statistic", "t_p", "wilcoxon_statistic", "wilcoxon_p", "wilcoxon_min_p"}``.
    """
    x, y = _paired_vectors(acc_a, acc_b, "paired_tests")
    n = int(x.size)
    if n < 2:
        raise ValueError(f"paired_tests needs at least 2 pairs (folds), got {n}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # 0/0 for constant differences
        t = sps.ttest_rel(x, y)
        w = sps.wilcoxon(x, y)
    return {"n": n, "mean_a": float(x.mean()), "mean_b": float(y.mean()),
            "mean_diff": float((x - y).mean()),
            "t_statistic": float(t.statistic), "t_p": float(t.pvalue),
            "wilcoxon_statistic": float(w.statistic), "wilcoxon_p": float(w.pvalue),
            "wilcoxon_min_p": wilcoxon_min_p(n)}


def _as_bool(v: Any, name: str) -> np.ndarray:
    arr = np.asarray(v)
    if arr.dtype != bool:
        if not np.isin(arr, (0, 1)).all():
            raise ValueError(f"{name}: values must be boolean or 0/1 (correct / wrong)")
        arr = arr.astype(bool)
    return arr


def mcnemar(correct_a: Any, correct_b: Any, exact: bool = True) -> dict[str, Any]:
    """McNemar's test on paired per-case correctness of two classifiers.

    ``b`` = cases A gets right and B wrong, ``c`` = A wrong and B right. ``exact=True``:
    two-sided binomial test of ``b`` out of ``b + c`` with p = 0.5 (``scipy.stats.binomtest``;
    statistic = min(b, c)); ``exact=False``: chi-square with continuity correction,
    (|b - c| - 1)^2 / (b + c), 1 degree of freedom. With no discordant pair (b + c = 0)
    the statistic is 0 and p = 1. Returns ``{"b", "c", "n", "statistic", "p", "method"}``.
    """
    a, b_ = _paired_vectors(_as_bool(correct_a, "correct_a"), _as_bool(correct_b, "correct_b"),
                            "mcnemar", dtype=bool)
    b = int(np.count_nonzero(a & ~b_))
    c = int(np.count_nonzero(~a & b_))
    if b + c == 0:
        stat, p = 0.0, 1.0
    elif exact:
        stat, p = float(min(b, c)), float(sps.binomtest(b, b + c, 0.5).pvalue)
    else:
        stat = (abs(b - c) - 1.0) ** 2 / (b + c)
        p = float(sps.chi2.sf(stat, df=1))
    return {"b": b, "c": c, "n": int(a.size), "statistic": float(stat), "p": p,
            "method": "exact binomial" if exact else "chi-square, continuity corrected"}


def bootstrap_accuracy_diff(correct_a: Any, correct_b: Any, n_boot: int = 10000, seed: int = 0,
                            ci: float = 0.95, chunk: int = 1000) -> dict[str, Any]:
    """Paired percentile bootstrap CI of accuracy(A) - accuracy(B) over cases.

    Cases are resampled with replacement (the same draw for A and B, so pairing is kept)
    ``n_boot`` times from ``numpy.random.default_rng(seed)``; ``lo``/``hi`` are the
    (1 - ci)/2 and (1 + ci)/2 quantiles of the resampled differences. ``chunk`` bounds the
    memory of the vectorised resampling (the result does not depend on it). Returns ``{"diff",
    "lo", "hi", "ci", "se", "n", "n_boot", "seed"}`` (``se``: standard deviation of the resamples).
    """
    a, b = _paired_vectors(_as_bool(correct_a, "correct_a"), _as_bool(correct_b, "correct_b"),
                           "bootstrap_accuracy_diff", dtype=bool)
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    if not 0.0 < ci < 1.0:
        raise ValueError(f"ci must be in (0, 1), got {ci}")
    d = a.astype(np.float64) - b.astype(np.float64)
    n = d.size
    rng = np.random.default_rng(seed)
    boot = np.empty(n_boot)
    for start in range(0, n_boot, chunk):
        stop = min(n_boot, start + chunk)
        idx = rng.integers(0, n, size=(stop - start, n))
        boot[start:stop] = d[idx].mean(axis=1)
    lo, hi = np.quantile(boot, [(1.0 - ci) / 2.0, (1.0 + ci) / 2.0])
    return {"diff": float(d.mean()), "lo": float(lo), "hi": float(hi), "ci": ci,
            "se": float(boot.std(ddof=1)) if n_boot > 1 else 0.0, "n": int(n),
            "n_boot": int(n_boot), "seed": seed}


# --------------------------------------------------------------------------------------------
# Corrected and multiple-comparison statistics (docs/DECISIONS.md, "Statistics of Table 2")
# --------------------------------------------------------------------------------------------

def _diff_vector(diffs: Any, name: str) -> np.ndarray:
    d = np.asarray(diffs, dtype=np.float64)
    if d.ndim != 1:
        raise ValueError(f"{name}: diffs must be 1-D, got shape {d.shape}")
    if d.size < 2:
        raise ValueError(f"{name}: needs at least 2 differences, got {d.size}")
    if not np.isfinite(d).all():
        bad = int(np.flatnonzero(~np.isfinite(d))[0])
        raise ValueError(f"{name}: diffs must be finite, element {bad} is {float(d[bad])!r}")
    return d


def _t_over_diffs(d: np.ndarray, var_factor: float) -> dict[str, Any]:
    """t = mean(d) / sqrt(var_factor * var(d, ddof=1)), df = J - 1, two-sided p.

    Zero variance: t = +-inf (p = 0) when the mean is non-zero, NaN (p NaN) when it is zero,
    the same convention as ``scipy.stats.ttest_rel``.
    """
    j = int(d.size)
    mean = float(d.mean())
    var = float(d.var(ddof=1))
    se = float(np.sqrt(var_factor * var))
    with np.errstate(divide="ignore", invalid="ignore"):
        t = float(np.float64(mean) / np.float64(se))
    p = float(2.0 * sps.t.sf(abs(t), j - 1)) if not np.isnan(t) else float("nan")
    return {"mean_diff": mean, "t": t, "df": j - 1, "p": p, "n": j, "se": se}


def paired_t(diffs: Any) -> dict[str, Any]:
    """Plain paired t over differences ``d_1..d_J`` (two-sided), the test comparable to the paper.

    t = mean(d) / sqrt(var(d, ddof=1) / J), df = J - 1; the same t and p as
    :func:`paired_tests` (``scipy.stats.ttest_rel``) on the two accuracy vectors. It ignores
    that cross-validation training sets overlap, see :func:`corrected_resampled_t`.
    Returns ``{"mean_diff", "t", "df", "p", "n", "se"}``.
    """
    d = _diff_vector(diffs, "paired_t")
    return _t_over_diffs(d, 1.0 / d.size)


def _positive_int(v: Any, name: str, fn: str) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
        raise ValueError(f"{fn}: {name} must be a positive integer, got {v!r}")
    return int(v)


def corrected_resampled_t(diffs: Any, n_train: int, n_test: int) -> dict[str, Any]:
    """Nadeau & Bengio (2003) corrected resampled t over ``J`` train/test differences.

    t = mean(d) / sqrt((1/J + n_test/n_train) * var(d, ddof=1)), df = J - 1, two-sided p.
    ``d`` holds one difference (e.g. KT minus fine-tune accuracy) per test split; for
    repeated k-fold cross-validation J = folds x repeats, ``n_train`` / ``n_test`` are the
    (typical) sizes of one split's training and test sets. The term n_test/n_train accounts
    for the overlap of the training sets that the plain paired t (:func:`paired_t`, variance
    factor 1/J) ignores; for 5-fold CV (n_train/n_test = 4) it inflates the standard error by
    sqrt((1/5 + 1/4) / (1/5)) = 1.5, so the paper's p = 0.0082 / 0.0069 (Sec. 5.1) become
    about 0.031 / 0.027. Returns ``{"mean_diff", "t", "df", "p", "n", "se"}``.
    """
    fn = "corrected_resampled_t"
    n_train = _positive_int(n_train, "n_train", fn)
    n_test = _positive_int(n_test, "n_test", fn)
    d = _diff_vector(diffs, fn)
    return _t_over_diffs(d, 1.0 / d.size + n_test / n_train)


def holm(pvalues: Any) -> np.ndarray:
    """Holm-Bonferroni adjusted p values (same order and shape as ``pvalues``).

    With the m non-NaN p values sorted ascending, p_(1) <= ... <= p_(m), the adjusted value
    is p~_(i) = max_{k <= i} min(1, (m - k + 1) p_(k)) (monotone in i). NaN entries stay NaN
    and are not counted in m. Reject H_(i) at level alpha iff p~_(i) <= alpha.
    """
    p = np.asarray(pvalues, dtype=np.float64)
    if p.ndim != 1:
        raise ValueError(f"holm: pvalues must be 1-D, got shape {p.shape}")
    ok = ~np.isnan(p)
    bad = ok & ((p < 0.0) | (p > 1.0))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"holm: p values must lie in [0, 1] (or be NaN), element {i} is {float(p[i])!r}")
    out = np.full(p.shape, np.nan)
    idx = np.flatnonzero(ok)
    m = idx.size
    if m == 0:
        return out
    order = idx[np.argsort(p[idx], kind="stable")]
    scaled = np.minimum(1.0, (m - np.arange(m)) * p[order])
    out[order] = np.maximum.accumulate(scaled)
    return out


def _t_power(delta: float, df: int, t_crit: float) -> float:
    """P(T' > t_crit) + P(T' < -t_crit) for T' ~ noncentral t(df, delta). The lower tail is taken
    as P(-T' > t_crit) with -T' ~ t(df, -delta): ``scipy.stats.nct.cdf`` returns NaN far in that
    tail (e.g. df 1, delta 8), ``nct.sf`` does not."""
    return float(sps.nct.sf(t_crit, df, delta) + sps.nct.sf(t_crit, df, -delta))


def min_detectable_effect(sd_diff: float, n: int, alpha: float = 0.05, power: float = 0.8,
                          correction: float = 1.0) -> float:
    """Smallest true mean difference a two-sided paired t over ``n`` differences detects.

    The test statistic is mean(d) / se with se = sd_diff * sqrt(correction / n); under a
    true mean difference mu it follows a noncentral t with df = n - 1 and noncentrality
    delta = mu / se. Power(delta) = P(T' > t_crit) + P(T' < -t_crit), t_crit the
    (1 - alpha/2) quantile of the central t (``scipy.stats.nct``). The function solves
    Power(delta) = ``power`` for delta (Brent's method) and returns delta * se, in the units
    of ``sd_diff``. ``correction`` multiplies the variance: 1 for the plain paired t,
    1 + J n_test / n_train for the Nadeau-Bengio corrected test (:func:`corrected_resampled_t`,
    whose variance factor is (1/J)(1 + J n_test/n_train)).
    """
    fn = "min_detectable_effect"
    n = _positive_int(n, "n", fn)
    if n < 2:
        raise ValueError(f"{fn}: n must be >= 2 (a t test needs a variance), got {n}")
    if not (np.isfinite(sd_diff) and sd_diff >= 0):
        raise ValueError(f"{fn}: sd_diff must be finite and >= 0, got {sd_diff!r}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"{fn}: alpha must be in (0, 1), got {alpha!r}")
    if not alpha < power < 1.0:
        raise ValueError(f"{fn}: power must be in (alpha, 1) = ({alpha}, 1), got {power!r}")
    if not (np.isfinite(correction) and correction > 0):
        raise ValueError(f"{fn}: correction must be finite and > 0, got {correction!r}")
    df = n - 1
    t_crit = float(sps.t.ppf(1.0 - alpha / 2.0, df))
    hi = 1.0
    while _t_power(hi, df, t_crit) < power:
        hi *= 2.0
    from scipy.optimize import brentq
    delta = float(brentq(lambda x: _t_power(x, df, t_crit) - power, 0.0, hi, xtol=1e-12, rtol=1e-12))
    if not np.isfinite(delta):
        raise ValueError(f"{fn}: no noncentrality reaches power {power} with n = {n}")
    return float(delta * float(sd_diff) * np.sqrt(correction / n))


def trend_test(df: pd.DataFrame, outcome: str, beta_col: str = "beta", fold_col: str = "fold") -> dict[str, Any]:
    """Dose trend of ``outcome`` in beta (Eq. 4): per-fold OLS slope on log2(1 + beta), t over folds.

    For each fold f the least-squares slope b_f = sum (x - x_bar)(y - y_bar) / sum (x - x_bar)^2
    with x = log2(1 + beta) and y = ``outcome`` over that fold's rows; then a two-sided
    one-sample t of the slopes against 0: t = mean(b) / (sd(b, ddof=1) / sqrt(F)), df = F - 1.
    Returns ``{"slope_mean", "slope_sd", "t", "p", "n_folds"}`` (units of ``outcome`` per
    doubling of 1 + beta). Folds with fewer than 2 distinct betas are an error naming them.
    """
    fn = "trend_test"
    if not isinstance(df, pd.DataFrame):
        raise ValueError(f"{fn}: df must be a pandas DataFrame, got {type(df).__name__}")
    missing = [c for c in (outcome, beta_col, fold_col) if c not in df.columns]
    if missing:
        raise ValueError(f"{fn}: missing column(s) {missing}; columns are {list(df.columns)}")
    x_all = pd.to_numeric(df[beta_col], errors="coerce").to_numpy(dtype=np.float64)
    y_all = pd.to_numeric(df[outcome], errors="coerce").to_numpy(dtype=np.float64)
    for name, arr in ((beta_col, x_all), (outcome, y_all)):
        if not np.isfinite(arr).all():
            row = df.index[int(np.flatnonzero(~np.isfinite(arr))[0])]
            raise ValueError(f"{fn}: column {name!r} is not a finite number at row {row!r}")
    if (x_all < 0).any():
        row = df.index[int(np.flatnonzero(x_all < 0)[0])]
        raise ValueError(f"{fn}: column {beta_col!r} must be >= 0, row {row!r} is {float(x_all[x_all < 0][0])!r}")
    work = pd.DataFrame({"f": df[fold_col].to_numpy(), "x": np.log2(1.0 + x_all), "y": y_all})
    slopes: list[float] = []
    flat: list[Any] = []
    for fold, g in work.groupby("f", sort=True):
        if g["x"].nunique() < 2:
            flat.append(fold)
            continue
        xc = g["x"].to_numpy() - g["x"].mean()
        slopes.append(float((xc * (g["y"].to_numpy() - g["y"].mean())).sum() / (xc * xc).sum()))
    if flat:
        raise ValueError(f"{fn}: fold(s) {flat} have fewer than 2 distinct {beta_col!r} values; "
                         f"a slope needs at least 2")
    if len(slopes) < 2:
        raise ValueError(f"{fn}: needs at least 2 folds for a t over folds, got {len(slopes)}")
    r = _t_over_diffs(np.asarray(slopes), 1.0 / len(slopes))
    return {"slope_mean": r["mean_diff"], "slope_sd": float(np.std(slopes, ddof=1)), "t": r["t"],
            "p": r["p"], "n_folds": len(slopes)}


def cluster_bootstrap_diff(correct_a: Any, correct_b: Any, clusters: Any, n_boot: int = 10000,
                           seed: int = 0, ci: float = 0.95, chunk: int = 1000) -> dict[str, Any]:
    """Patient-cluster percentile bootstrap CI of accuracy(A) - accuracy(B).

    The K clusters (e.g. patients; several masses of one patient are not independent) are
    resampled with replacement; a resample takes all cases of each drawn cluster (a cluster
    drawn twice counts twice), and its difference is sum_k s_k / sum_k n_k over the drawn
    clusters, s_k = sum of (correct_a - correct_b) in cluster k, n_k its size. ``lo``/``hi``
    are the (1 - ci)/2 and (1 + ci)/2 quantiles. Clusters are numbered in order of first
    appearance, so with one case per cluster and the same ``seed`` the result equals
    :func:`bootstrap_accuracy_diff`. Vectorised in chunks of ``chunk`` resamples (the result
    does not depend on it). Returns ``{"mean_diff", "lo", "hi", "ci", "se", "n", "n_clusters",
    "n_boot", "seed"}``.
    """
    fn = "cluster_bootstrap_diff"
    a, b = _paired_vectors(_as_bool(correct_a, "correct_a"), _as_bool(correct_b, "correct_b"), fn, dtype=bool)
    cl = np.asarray(clusters, dtype=object)
    if cl.ndim != 1 or cl.size != a.size:
        raise ValueError(f"{fn}: clusters must be 1-D with one entry per case ({a.size}), got shape {cl.shape}")
    if pd.isna(pd.Series(cl)).any():
        i = int(np.flatnonzero(pd.isna(pd.Series(cl)).to_numpy())[0])
        raise ValueError(f"{fn}: clusters has a missing value at case {i}")
    if n_boot < 1:
        raise ValueError(f"{fn}: n_boot must be >= 1, got {n_boot}")
    if not 0.0 < ci < 1.0:
        raise ValueError(f"{fn}: ci must be in (0, 1), got {ci}")
    codes, uniq = pd.factorize(pd.Series(cl), sort=False)
    k = int(len(uniq))
    d = a.astype(np.float64) - b.astype(np.float64)
    s = np.bincount(codes, weights=d, minlength=k)
    m = np.bincount(codes, minlength=k).astype(np.float64)
    rng = np.random.default_rng(seed)
    boot = np.empty(n_boot)
    for start in range(0, n_boot, chunk):
        stop = min(n_boot, start + chunk)
        idx = rng.integers(0, k, size=(stop - start, k))
        boot[start:stop] = s[idx].sum(axis=1) / m[idx].sum(axis=1)
    lo, hi = np.quantile(boot, [(1.0 - ci) / 2.0, (1.0 + ci) / 2.0])
    return {"mean_diff": float(d.mean()), "lo": float(lo), "hi": float(hi), "ci": ci,
            "se": float(boot.std(ddof=1)) if n_boot > 1 else 0.0, "n": int(d.size),
            "n_clusters": k, "n_boot": int(n_boot), "seed": seed}


def cohen_kappa(a: Any, b: Any) -> float:
    """Cohen's kappa of two raters' labels of the same items (any hashable labels, any shape).

    kappa = (p_o - p_e) / (1 - p_e), p_o = share of items with equal labels, p_e = sum over the
    labels k of p_a(k) p_b(k) (agreement expected by chance from the two marginals). 1: perfect
    agreement, 0: no better than chance, < 0: worse. NaN when p_e = 1 (both raters give one and
    the same label to every item: agreement is then all chance). Raw agreement p_o ignores chance,
    so the sanity table of the explanation (:mod:`mammo_lib.explain.sanity`) reports both.
    """
    x = np.asarray(a)
    y = np.asarray(b)
    if x.shape != y.shape:
        raise ValueError(f"cohen_kappa: the two label arrays must have one shape, got {x.shape} and {y.shape}")
    if x.size == 0:
        raise ValueError("cohen_kappa: no labels given")
    x, y = x.ravel(), y.ravel()
    p_o = float(np.mean(x == y))
    cats, inv = np.unique(np.concatenate([x, y]), return_inverse=True)
    ca = np.bincount(inv[:x.size], minlength=cats.size) / x.size
    cb = np.bincount(inv[x.size:], minlength=cats.size) / x.size
    p_e = float(ca @ cb)
    if p_e >= 1.0:
        return float("nan")
    return (p_o - p_e) / (1.0 - p_e)


def _spec_rows(df: pd.DataFrame, spec: str, what: str) -> pd.DataFrame:
    rows = df[df["spec"] == spec]
    if rows.empty:
        known = sorted(df["spec"].unique().tolist()) if "spec" in df else []
        raise ValueError(f"spec {spec!r} has no {what} in the CV result; known specs: {known}")
    return rows


def compare(cv_result: _CVLike, spec_a: str, spec_b: str, n_boot: int = 10000, seed: int = 0,
            exact_mcnemar: bool = True, groups: Any = None) -> dict[str, Any]:
    """All significance tests of ``spec_a`` vs ``spec_b`` from a CV result.

    Fold-level tests (:func:`paired_tests`) pair ``per_fold.accuracy`` by fold; McNemar and
    the bootstrap use the pooled test predictions paired by ``case_id`` (each case is in
    exactly one test fold per spec). Differences are A - B.

    Beside the plain paired t (the one comparable to the paper): the Nadeau-Bengio corrected t
    over the J fold differences (:func:`corrected_resampled_t`; ``nb_t``, ``nb_t_p``) with
    n_test = (cases predicted) / J and n_train = cases - n_test, and the minimum detectable
    effect at 80 % power (:func:`min_detectable_effect` with the standard deviation of the fold
    differences): ``mde`` for the corrected test (variance factor 1 + J n_test / n_train),
    ``mde_plain`` for the plain one. ``groups`` (a mapping or Series ``case_id -> patient``) adds
    the patient-cluster bootstrap (:func:`cluster_bootstrap_diff`; ``cluster_lo``,
    ``cluster_hi``, ``n_clusters``).
    """
    pf = cv_result.per_fold
    fa = _spec_rows(pf, spec_a, "folds").set_index("fold")["accuracy"]
    fb = _spec_rows(pf, spec_b, "folds").set_index("fold")["accuracy"]
    if set(fa.index) != set(fb.index):
        raise ValueError(f"specs {spec_a!r} and {spec_b!r} have different folds: "
                         f"{sorted(fa.index)} vs {sorted(fb.index)}")
    folds = sorted(fa.index)
    out: dict[str, Any] = {"spec_a": spec_a, "spec_b": spec_b}
    out.update(paired_tests(fa.loc[folds].to_numpy(), fb.loc[folds].to_numpy()))
    fold_diffs = fa.loc[folds].to_numpy(dtype=np.float64) - fb.loc[folds].to_numpy(dtype=np.float64)

    pr = cv_result.predictions
    pa = _spec_rows(pr, spec_a, "predictions")
    pb = _spec_rows(pr, spec_b, "predictions")
    for name, p in ((spec_a, pa), (spec_b, pb)):
        dup = p["case_id"][p["case_id"].duplicated()]
        if len(dup):
            raise ValueError(f"spec {name!r} predicts case {dup.iloc[0]!r} more than once")
    m = pa.merge(pb, on="case_id", suffixes=("_a", "_b"), how="inner", validate="one_to_one")
    if len(m) != len(pa) or len(m) != len(pb):
        raise ValueError(f"specs {spec_a!r} and {spec_b!r} predict different cases "
                         f"({len(pa)} and {len(pb)}, {len(m)} in common)")
    if (m["label_a"] != m["label_b"]).any():
        raise ValueError("the same case_id carries different labels in the two specs")
    ca = (m["pred_a"] == m["label_a"]).to_numpy()
    cb = (m["pred_b"] == m["label_b"]).to_numpy()
    mc = mcnemar(ca, cb, exact=exact_mcnemar)
    bs = bootstrap_accuracy_diff(ca, cb, n_boot=n_boot, seed=seed)
    out.update({"n_cases": mc["n"], "mcnemar_b": mc["b"], "mcnemar_c": mc["c"],
                "mcnemar_statistic": mc["statistic"], "mcnemar_p": mc["p"],
                "mcnemar_method": mc["method"], "pooled_acc_a": float(ca.mean()),
                "pooled_acc_b": float(cb.mean()), "boot_diff": bs["diff"], "boot_lo": bs["lo"],
                "boot_hi": bs["hi"], "boot_ci": bs["ci"], "boot_n": bs["n_boot"], "boot_seed": seed})
    j = len(folds)
    n_test = max(1, int(round(len(m) / j)))
    n_train = max(1, len(m) - n_test)
    nb = corrected_resampled_t(fold_diffs, n_train, n_test)
    sd = float(np.std(fold_diffs, ddof=1))
    out.update({"nb_t": nb["t"], "nb_t_p": nb["p"], "nb_n_train": n_train, "nb_n_test": n_test,
                "mde": min_detectable_effect(sd, j, correction=1.0 + j * n_test / n_train),
                "mde_plain": min_detectable_effect(sd, j)})
    if groups is not None:
        lookup = pd.Series(groups) if not isinstance(groups, pd.Series) else groups
        clusters = m["case_id"].map(lookup)
        if clusters.isna().any():
            raise ValueError(f"groups has no patient for case {m['case_id'][clusters.isna()].iloc[0]!r}")
        cl = cluster_bootstrap_diff(ca, cb, clusters.to_numpy(), n_boot=n_boot, seed=seed)
        out.update({"cluster_lo": cl["lo"], "cluster_hi": cl["hi"], "n_clusters": cl["n_clusters"]})
    return out


def significance_table(cv_result: _CVLike, pairs: Iterable[tuple[str, str]], n_boot: int = 10000,
                       seed: int = 0, exact_mcnemar: bool = True, groups: Any = None) -> pd.DataFrame:
    """One row of :func:`compare` per ``(spec_a, spec_b)`` pair, e.g. KT vs fine-tune."""
    rows = [compare(cv_result, a, b, n_boot=n_boot, seed=seed, exact_mcnemar=exact_mcnemar, groups=groups)
            for a, b in pairs]
    if not rows:
        raise ValueError("pairs is empty")
    return pd.DataFrame(rows)


__all__ = ["paired_tests", "mcnemar", "bootstrap_accuracy_diff", "compare", "significance_table",
           "wilcoxon_min_p", "paired_t", "corrected_resampled_t", "holm", "min_detectable_effect",
           "trend_test", "cluster_bootstrap_diff", "cohen_kappa"]

