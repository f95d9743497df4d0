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
:class:`mammo_lib.protocol.CVResult`.
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


def _spec_rows(df: pd.DataFrame, spec: str, what: str) -> pd.DataFrame:
    rows = df[df["spec"] == spec]
    if rows.empty:
        known = sorted(df["spec"].unique().tolist()) if "spec" in df else []
        raise ValueError(f"spec {spec!r} has no {what} in the CV result; known specs: {known}")
    return rows


def compare(cv_result: _CVLike, spec_a: str, spec_b: str, n_boot: int = 10000, seed: int = 0,
            exact_mcnemar: bool = True) -> dict[str, Any]:
    """All significance tests of ``spec_a`` vs ``spec_b`` from a CV result.

    Fold-level tests (:func:`paired_tests`) pair ``per_fold.accuracy`` by fold; McNemar and
    the bootstrap use the pooled test predictions paired by ``case_id`` (each case is in
    exactly one test fold per spec). Differences are A - B.
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
    return out


def significance_table(cv_result: _CVLike, pairs: Iterable[tuple[str, str]], n_boot: int = 10000,
                       seed: int = 0, exact_mcnemar: bool = True) -> pd.DataFrame:
    """One row of :func:`compare` per ``(spec_a, spec_b)`` pair, e.g. KT vs fine-tune."""
    rows = [compare(cv_result, a, b, n_boot=n_boot, seed=seed, exact_mcnemar=exact_mcnemar)
            for a, b in pairs]
    if not rows:
        raise ValueError("pairs is empty")
    return pd.DataFrame(rows)


__all__ = ["paired_tests", "mcnemar", "bootstrap_accuracy_diff", "compare", "significance_table",
           "wilcoxon_min_p"]

