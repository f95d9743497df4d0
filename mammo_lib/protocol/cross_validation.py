"""Evaluation protocol of Table 2 (Sec. 3.1, 5.1; Sec. 5.1) and the CBIS-DDSM pre-training stage.

* :func:`make_folds`: five-fold cross-validation, stratified by class and grouped by patient.
* :func:`inner_split`: each training part split 80:20 into train / validation (model selection
  on the validation part only; the test fold is untouched until the end).
* :func:`run_cv`: every :class:`RunSpec` (pre-training x method) on the same folds, resumable per
  (spec, fold); :class:`CVResult` gives per-fold rows, pooled predictions and the Table 2 summary
  (mean +- std of accuracy, confusion matrix summed over folds).
* :func:`pretrain`: the "DDSM" initialisation (CBIS-DDSM training set with a patient-grouped
  validation part, reported on the official test set).

Data arguments are RoiSet-like: ``images`` (N,S,S), ``masks`` (N,S,S), ``labels`` (N,),
``index`` with a ``case_id`` column, optionally ``groups`` (patient ids) and, for ``test_data``,
``by_case_ids(ids)``.
"""
from __future__ import annotations

import json
import os
import re
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Optional, Sequence

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold
from torch import nn

from mammo_lib.utils.progress import tqdm
from mammo_lib.utils.files import read_done_marker, save_torch, to_jsonable, write_csv, write_json
from mammo_lib.metrics.classification import classification_metrics
from mammo_lib.networks.densenet import WeightsUnavailableError, build_model
from mammo_lib.engines.training import TensorData, TrainConfig, predict, roi_spec_of, train_model

#: ``init_used`` recorded when ImageNet weights were asked for but a random init was used.
IMAGENET_FALLBACK_NOTE = "none (ImageNet weights unavailable)"

ImagenetFallback = Literal["error", "none"]
#: ``model_factory(arch, weights, seed) -> model``; default :func:`mammo_lib.networks.densenet.build_model`.
ModelFactory = Callable[[str, Optional[str], int], nn.Module]

PER_FOLD_COLUMNS = ("spec", "fold", "init_used", "seed", "method", "input", "beta", "accuracy", "sensitivity",
                    "specificity", "auc", "tn", "fp", "fn", "tp", "n_train", "n_val", "n_test", "epochs",
                    "best_epoch", "wall_s")
PREDICTION_COLUMNS = ("spec", "fold", "case_id", "label", "prob_malignant", "pred")


# --------------------------------------------------------------------------------------------
# Splits
# --------------------------------------------------------------------------------------------
def _check_labels_groups(labels: Any, groups: Any) -> tuple[np.ndarray, Optional[np.ndarray]]:
    y = np.asarray(labels)
    if y.ndim != 1 or y.size == 0:
        raise ValueError(f"labels must be a non-empty 1-D array, got shape {y.shape}")
    g = None
    if groups is not None:
        g = np.asarray(groups)
        if g.shape != y.shape:
            raise ValueError(f"groups must have one entry per label ({y.size}), got shape {g.shape}")
        if pd.isna(pd.Series(g)).any():
            raise ValueError("groups (patient ids) contain missing values")
    return y, g


def _splitter(n_splits: int, grouped: bool, seed: int) -> StratifiedGroupKFold | StratifiedKFold:
    if isinstance(n_splits, bool) or not isinstance(n_splits, int) or n_splits < 2:
        raise ValueError(f"n_splits must be an int >= 2, got {n_splits!r}")
    cls = StratifiedGroupKFold if grouped else StratifiedKFold
    return cls(n_splits=n_splits, shuffle=True, random_state=seed)


def require_both_classes(labels: Any, what: str) -> None:
    """``ValueError`` naming the class count unless ``labels`` hold both 0 (benign) and 1
    (malignant): with one class, sensitivity / specificity / AUC (Sec. 4) are undefined.

    >>> require_both_classes([0, 1, 1], "training data")
    """
    values, counts = np.unique(np.asarray(labels, dtype=np.int64), return_counts=True)
    if len(values) < 2:
        shown = ", ".join(f"{int(v)}: {int(c)}" for v, c in zip(values, counts)) or "no labels"
        raise ValueError(f"{what} has {len(values)} class(es) ({shown}); training and evaluation need both "
                         "benign (0) and malignant (1) cases")


def make_folds(labels: Any, groups: Any = None, n_splits: int = 5, seed: int = 0) -> np.ndarray:
    """Fold id (0 .. n_splits-1) of every sample for k-fold cross-validation (Sec. 3.1).

    Stratified by label; with ``groups`` (patient ids) no patient is in two folds
    (``StratifiedGroupKFold(shuffle=True, random_state=seed)``), else ``StratifiedKFold``.
    Raises ``ValueError`` when only one class is present (:func:`require_both_classes`), or a
    class or the number of groups is smaller than ``n_splits``.
    """
    y, g = _check_labels_groups(labels, groups)
    require_both_classes(y, "cross-validation data")
    counts = np.unique(y, return_counts=True)[1]
    if counts.min() < n_splits:
        raise ValueError(f"each class needs at least n_splits={n_splits} samples, smallest has {counts.min()}")
    if g is not None and len(np.unique(g)) < n_splits:
        raise ValueError(f"need at least n_splits={n_splits} distinct groups (patients), got {len(np.unique(g))}")
    return _kfold(y, g, n_splits, seed)


def _kfold(y: np.ndarray, g: Optional[np.ndarray], n_splits: int, seed: int) -> np.ndarray:
    """Fold of every sample from ``StratifiedGroupKFold`` / ``StratifiedKFold`` (shuffled, ``seed``)."""
    folds = np.full(y.size, -1, dtype=np.int64)
    for k, (_, test) in enumerate(_splitter(n_splits, g is not None, seed).split(np.zeros(y.size), y, g)):
        folds[test] = k
    return folds


def _units(y: np.ndarray, g: Optional[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Unit (patient, else case) of every case and the label of every unit (malignant when any case is)."""
    units = np.arange(y.size) if g is None else np.unique(g, return_inverse=True)[1].reshape(-1)
    label = np.zeros(int(units.max()) + 1 if units.size else 0, np.int64)
    np.maximum.at(label, units, y)
    return units, label


#: Cases of each class a training part must keep for its inner split: one on each side.
MIN_PER_CLASS_INNER = 2


def min_cases_per_class(n_splits: int) -> int:
    """The fewest cases of a class that ``n_splits``-fold cross-validation with an inner
    train / validation split can use: ``n_splits`` for the test folds, and every training part
    (``n - ceil(n / n_splits)`` cases of the class, stratified folds) must keep
    :data:`MIN_PER_CLASS_INNER`.

    >>> [min_cases_per_class(k) for k in (2, 3, 5)]
    [4, 3, 5]
    """
    n = max(int(n_splits), 1)
    while n - -(-n // n_splits) < MIN_PER_CLASS_INNER:
        n += 1
    return n


def check_cv_sizes(labels: Any, n_splits: int, groups: Any = None, *, what: str = "n_splits") -> None:
    """``ValueError`` before any work when ``labels`` (and ``groups``, patient ids) are too few for
    ``n_splits``-fold cross-validation with an inner split (:func:`min_cases_per_class`); the
    message gives the cases of each class, what is needed, and the largest ``n_splits`` that
    would work. ``what`` names the setting in the message (the CLI's ``--folds``).

    >>> check_cv_sizes([0] * 8 + [1] * 4, 2)
    """
    y = np.asarray(labels, dtype=np.int64)
    counts = {c: int((y == c).sum()) for c in (0, 1)}
    have = f"{counts[0]} benign and {counts[1]} malignant case(s)"
    need = min_cases_per_class(n_splits)
    if min(counts.values()) < need:
        fits = [k for k in range(2, max(counts.values()) + 1) if min_cases_per_class(k) <= min(counts.values())]
        advice = f"use {what} {max(fits)}" if fits else (
            f"add cases: at least {min_cases_per_class(2)} of each class are needed for the smallest, 2-fold, "
            "cross-validation")
        raise ValueError(f"{have} are too few for {what} {n_splits}: each class needs at least {need} "
                         f"({n_splits} for the test folds, and {MIN_PER_CLASS_INNER} left in every training part "
                         f"for its train/validation split); {advice}")
    if groups is not None:
        n_groups = len(set(np.asarray(groups).astype(str).tolist()))
        if n_groups < n_splits:
            raise ValueError(f"{have} from {n_groups} patient(s) are too few for {what} {n_splits}: it needs at "
                             f"least {n_splits} patients (no patient is in two folds)")


def inner_split(labels: Any, groups: Any = None, val_fraction: float = 0.2,
                seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Stratified (and, with ``groups``, patient-grouped) train / validation split of a training
    part (Sec. 3.1: 80:20). Returns sorted positions ``(train_idx, val_idx)`` into ``labels``.

    Where each class has at least k = round(1 / val_fraction) cases (and k patients), one fold of
    a k-fold split is the validation part. Smaller data (docs/DECISIONS.md, "Small data"), a
    stratified shuffle split of the patients (or cases): ``round(val_fraction * n)`` of each
    class, at least one and at most all but one, so that both sides hold both classes; a patient
    counts as malignant when any of its cases is. Fewer than :data:`MIN_PER_CLASS_INNER`
    patients (cases) of a class is a ``ValueError`` giving the counts.
    """
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)) or not 0 < val_fraction <= 0.5:
        raise ValueError(f"val_fraction must be in (0, 0.5], got {val_fraction!r}")
    k = int(round(1.0 / val_fraction))
    y, g = _check_labels_groups(labels, groups)
    require_both_classes(y, "the training part of a fold")
    counts = np.unique(y, return_counts=True)[1]
    if counts.min() >= k and (g is None or len(np.unique(g)) >= k):
        folds = _kfold(y, g, k, seed)
        return np.flatnonzero(folds != 0), np.flatnonzero(folds == 0)
    return _small_inner_split(y, g, val_fraction, seed)


def _small_inner_split(y: np.ndarray, g: Optional[np.ndarray], val_fraction: float,
                       seed: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`inner_split` of a training part too small for its k-fold split."""
    units, unit_label = _units(y, g)                         # a patient with a malignant case is malignant
    per = {c: np.flatnonzero(unit_label == c) for c in (0, 1)}
    if g is not None and min(len(v) for v in per.values()) < MIN_PER_CLASS_INNER:
        cases = {c: int((y == c).sum()) for c in (0, 1)}
        if min(cases.values()) >= MIN_PER_CLASS_INNER:
            warnings.warn(f"inner train/validation split by case, not by patient: the training part holds "
                          f"{len(per[0])} benign and {len(per[1])} malignant patient(s) ({cases[0]} and {cases[1]} "
                          "cases), too few to put one of each class on each side; a patient's cases may be on both "
                          "sides (model selection only: the test fold stays patient-disjoint)", stacklevel=3)
            return _small_inner_split(y, None, val_fraction, seed)
    what = "case(s)" if g is None else "patient(s)"
    if min(len(v) for v in per.values()) < MIN_PER_CLASS_INNER:
        raise ValueError(f"inner train/validation split: the training part holds {len(per[0])} benign and "
                         f"{len(per[1])} malignant {what}; both sides need one of each class, so "
                         f"{MIN_PER_CLASS_INNER} of each (use fewer folds or add cases)")
    rng = np.random.default_rng(seed)
    val_units = []
    for c in (0, 1):
        n_val = min(max(int(round(val_fraction * len(per[c]))), 1), len(per[c]) - 1)
        val_units.append(rng.permutation(per[c])[:n_val])
    is_val = np.isin(units, np.concatenate(val_units))
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)


# --------------------------------------------------------------------------------------------
# Cross-validation
# --------------------------------------------------------------------------------------------
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-+]*$")


@dataclass
class RunSpec:
    """One row of Table 2: ``name`` (a folder name, e.g. ``"imagenet_transfer"``), ``init``
    (``"imagenet"``, ``"ddsm"``, ``"none"`` or a checkpoint path) and the training config."""

    name: str
    init: str
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise ValueError(f"RunSpec.name must be a folder-safe name (letters, digits, _ . - +), got {self.name!r}")
        if not isinstance(self.init, (str, os.PathLike)):
            raise TypeError(f"RunSpec.init must be 'imagenet', 'ddsm', 'none' or a path, got {self.init!r}")
        self.init = str(self.init)
        if not isinstance(self.train, TrainConfig):
            raise TypeError(f"RunSpec.train must be a TrainConfig, got {type(self.train).__name__}")

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "init": self.init, "train": self.train.to_dict()}


@dataclass
class CVResult:
    """Per-fold rows (:data:`PER_FOLD_COLUMNS`), pooled test predictions
    (:data:`PREDICTION_COLUMNS`) and the fold of every case per spec (``folds``)."""

    per_fold: pd.DataFrame
    predictions: pd.DataFrame
    folds: pd.DataFrame

    def summary(self) -> pd.DataFrame:
        """One row per spec: mean and std (ddof=1, the paper's +-) of test accuracy over folds,
        means of sensitivity / specificity / AUC, and the confusion matrix summed over folds."""
        rows = []
        for spec, g in self.per_fold.groupby("spec", sort=False):
            acc = g["accuracy"].to_numpy(dtype=float)
            rows.append({"spec": spec, "init_used": "; ".join(dict.fromkeys(g["init_used"].astype(str))),
                         "n_folds": len(g), "acc_mean": acc.mean(),
                         "acc_std": acc.std(ddof=1) if len(acc) > 1 else float("nan"),
                         "sens_mean": g["sensitivity"].mean(), "spec_mean": g["specificity"].mean(),
                         "auc_mean": g["auc"].mean(),
                         **{c: int(g[c].sum()) for c in ("tn", "fp", "fn", "tp")},
                         "n_test": int(g["n_test"].sum())})
        return pd.DataFrame(rows)

    def confusion(self, spec: str) -> np.ndarray:
        """Summed confusion matrix ``[[TN, FP], [FN, TP]]`` of ``spec``."""
        g = self.per_fold[self.per_fold["spec"] == spec]
        if g.empty:
            raise KeyError(f"no spec {spec!r} in this result")
        return np.array([[g["tn"].sum(), g["fp"].sum()], [g["fn"].sum(), g["tp"].sum()]], dtype=np.int64)


def _default_factory(arch: str, weights: Optional[str], seed: int) -> nn.Module:
    return build_model(arch, weights=weights, seed=seed)


def _build(factory: ModelFactory, arch: str, init: str, seed: int, ddsm_checkpoint: Optional[str | Path],
           imagenet_fallback: ImagenetFallback) -> tuple[nn.Module, str]:
    """The initial network of a run and what it was initialised from (``init_used``)."""
    if imagenet_fallback not in ("error", "none"):
        raise ValueError(f"imagenet_fallback must be 'error' or 'none', got {imagenet_fallback!r}")
    key = init.lower()
    if key == "ddsm":
        if ddsm_checkpoint is None:
            raise ValueError("init='ddsm' needs ddsm_checkpoint (the file written by pretrain())")
        return factory(arch, str(ddsm_checkpoint), seed), "ddsm"
    if key == "none":
        return factory(arch, None, seed), "none"
    if key == "imagenet":
        try:
            if arch != "densenet121":
                raise WeightsUnavailableError(f"torchvision has no ImageNet weights for arch {arch!r}")
            return factory(arch, "imagenet", seed), "imagenet"
        except WeightsUnavailableError:
            if imagenet_fallback == "error":
                raise
            return factory(arch, None, seed), IMAGENET_FALLBACK_NOTE
    if not Path(init).is_file():
        raise FileNotFoundError(f"init {init!r} is neither 'imagenet', 'ddsm', 'none' nor an existing file")
    return factory(arch, init, seed), init


def _fold_seed(seed: int, fold: int) -> int:
    """Seed of model init and training in fold ``fold`` (same for every spec: paired runs)."""
    return int(seed) + int(fold)


def run_cv(data: Any, specs: Sequence[RunSpec], out_dir: str | Path, *, arch: str = "densenet121",
           n_splits: int = 5, seed: int = 0, ddsm_checkpoint: str | Path | None = None,
           test_data: Any = None, model_factory: Optional[ModelFactory] = None,
           imagenet_fallback: ImagenetFallback = "error", val_fraction: float = 0.2,
           progress: bool = True) -> CVResult:
    """k-fold cross-validation of every spec on the same patient-grouped folds (Table 2).

    Per spec and fold k: the training part is split ``1 - val_fraction : val_fraction``
    (:func:`inner_split`, seed ``seed + k``); a model is built from ``spec.init`` (``"ddsm"`` reads
    ``ddsm_checkpoint``; ``"imagenet"`` without weights raises unless ``imagenet_fallback="none"``,
    which trains from random init and records :data:`IMAGENET_FALLBACK_NOTE` in ``init_used``);
    :func:`~mammo_lib.engines.training.train_model` runs with ``seed = spec.train.seed + k`` and checkpoints
    in ``out_dir/<spec>/fold_<k>``; the selected model predicts the test fold, taken from
    ``test_data.by_case_ids`` when given (e.g. the phantom's shifted rendering of the same cases).
    ``result.json`` and ``predictions.csv`` of a finished (spec, fold) are written atomically and
    reused on a rerun with the same settings (a rerun with other settings raises ``ValueError``);
    an interrupted fold resumes from its ``last.pt``. ``out_dir/<spec>/folds.csv`` records the
    fold of every case. ``model_factory(arch, weights, seed)`` replaces ``build_model`` (tests).
    """
    specs = list(specs)
    if not specs:
        raise ValueError("specs is empty")
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"spec names must be unique, got {names}")
    if not 0 < val_fraction <= 0.5:
        raise ValueError(f"val_fraction must be in (0, 0.5], got {val_fraction!r}")
    factory = model_factory or _default_factory
    out = Path(out_dir)
    labels = np.asarray(data.labels, dtype=np.int64)
    require_both_classes(labels, "cross-validation data")
    groups = getattr(data, "groups", None)
    case_ids = np.asarray(data.index["case_id"].astype(str))
    if len(set(case_ids)) != len(case_ids):
        raise ValueError("case_id values must be unique in the cross-validation data")
    check_cv_sizes(labels, n_splits, groups)
    folds = make_folds(labels, groups, n_splits=n_splits, seed=seed)
    fold_frame = pd.DataFrame({"case_id": case_ids, "label": labels, "fold": folds})
    if groups is not None:
        fold_frame.insert(1, "patient_id", np.asarray(groups).astype(str))

    for spec in specs:
        write_csv(out / spec.name / "folds.csv", fold_frame)
    rows: list[dict[str, Any]] = []
    preds: list[pd.DataFrame] = []
    jobs = [(s, k) for s in specs for k in range(n_splits)]
    for spec, k in tqdm(jobs, disable=not progress, desc="cross-validation"):
        fold_dir = out / spec.name / f"fold_{k}"
        init = spec.init.lower()
        key = {"spec": spec.to_dict(), "arch": arch, "n_splits": n_splits, "seed": seed,
               "val_fraction": val_fraction,
               "imagenet_fallback": imagenet_fallback if init == "imagenet" else None,
               "ddsm_checkpoint": str(ddsm_checkpoint) if init == "ddsm" else None,
               "test_ids": case_ids[folds == k].tolist(), "shifted_test": test_data is not None}
        row, pred = _load_fold(fold_dir, key)
        if row is None:
            row, pred = _run_fold(data, test_data, spec, k, folds, labels, groups, case_ids, fold_dir, key,
                                  arch=arch, seed=seed, ddsm_checkpoint=ddsm_checkpoint, factory=factory,
                                  imagenet_fallback=imagenet_fallback, val_fraction=val_fraction,
                                  progress=progress)
        rows.append(row)
        preds.append(pred)
    per_fold = pd.DataFrame(rows, columns=list(PER_FOLD_COLUMNS))
    predictions = pd.concat(preds, ignore_index=True)[list(PREDICTION_COLUMNS)]
    return CVResult(per_fold=per_fold, predictions=predictions, folds=fold_frame)


def _load_fold(fold_dir: Path, key: dict[str, Any]) -> tuple[Optional[dict[str, Any]], Optional[pd.DataFrame]]:
    res, pred = fold_dir / "result.json", fold_dir / "predictions.csv"
    if not (res.exists() and pred.exists()):
        return None, None
    saved = read_done_marker(res, "fold result")
    if saved is None:  # damaged: warned, trained again
        return None, None
    if saved.get("key") != to_jsonable(key):
        raise ValueError(f"{res}: made with other settings (spec, arch, folds or data); delete "
                         f"{fold_dir} or use another out_dir")
    return saved["row"], pd.read_csv(pred, dtype={"case_id": str})


def _run_fold(data: Any, test_data: Any, spec: RunSpec, k: int, folds: np.ndarray, labels: np.ndarray,
              groups: Any, case_ids: np.ndarray, fold_dir: Path, key: dict[str, Any], *, arch: str, seed: int,
              ddsm_checkpoint: Any, factory: ModelFactory, imagenet_fallback: ImagenetFallback,
              val_fraction: float, progress: bool) -> tuple[dict[str, Any], pd.DataFrame]:
    t0 = time.perf_counter()
    train_part = np.flatnonzero(folds != k)
    test_idx = np.flatnonzero(folds == k)
    g = None if groups is None else np.asarray(groups)[train_part]
    tr, va = inner_split(labels[train_part], g, val_fraction=val_fraction, seed=_fold_seed(seed, k))
    fseed = _fold_seed(spec.train.seed, k)
    cfg = spec.train.replace(seed=fseed)
    model, init_used = _build(factory, arch, spec.init, fseed, ddsm_checkpoint, imagenet_fallback)
    res = train_model(model, TensorData.from_roiset(data, train_part[tr]), TensorData.from_roiset(data, train_part[va]),
                      cfg, checkpoint_dir=fold_dir, progress=progress,
                      meta={"arch": arch, "roi_spec": roi_spec_of(data)})
    test_ids = case_ids[test_idx].tolist()
    test = (TensorData.from_roiset(test_data.by_case_ids(test_ids)) if test_data is not None
            else TensorData.from_roiset(data, test_idx))
    if test.ids != test_ids or not np.array_equal(test.labels, labels[test_idx]):
        raise ValueError(f"fold {k}: test_data does not hold the same cases/labels as the CV data")
    prob = predict(res.model, test.images if cfg.input == "roi" else test.masks, input=cfg.input,
                   batch_size=max(cfg.batch_size, 32), device=cfg.device)[:, 1]
    m = classification_metrics(test.labels, prob)
    row = {"spec": spec.name, "fold": k, "init_used": init_used, "seed": fseed, "method": cfg.method,
           "input": cfg.input, "beta": cfg.beta if cfg.method == "transfer" else float("nan"),
           "accuracy": m["accuracy"], "sensitivity": m["sensitivity"], "specificity": m["specificity"],
           "auc": m["auc"], "tn": m["tn"], "fp": m["fp"], "fn": m["fn"], "tp": m["tp"],
           "n_train": len(tr), "n_val": len(va), "n_test": len(test_idx), "epochs": res.epochs_run,
           "best_epoch": res.best_epoch, "wall_s": time.perf_counter() - t0}
    pred = pd.DataFrame({"spec": spec.name, "fold": k, "case_id": test_ids, "label": test.labels,
                         "prob_malignant": prob, "pred": (prob >= 0.5).astype(np.int64)})
    write_csv(fold_dir / "predictions.csv", pred)
    write_json(fold_dir / "result.json", {"key": key, "row": row})  # written last: the done marker
    return row, pred


# --------------------------------------------------------------------------------------------
# Pre-training on CBIS-DDSM ("DDSM" rows of Table 2)
# --------------------------------------------------------------------------------------------
@dataclass
class PretrainResult:
    """``checkpoint``: ``ddsm_pretrained.pt`` (for ``build_model(weights=path)``); ``metrics``:
    official-test-set metrics plus ``best_epoch``, ``best_val_accuracy``, ``init_used``, sizes."""

    checkpoint: Path
    metrics: dict[str, Any]
    history: pd.DataFrame
    init_used: str
    skipped: bool


PRETRAIN_CHECKPOINT = "ddsm_pretrained.pt"
PRETRAIN_METRICS = "pretrain_metrics.json"


def pretrain(train_data: Any, test_data: Any, out_dir: str | Path, *, arch: str = "densenet121",
             weights: str = "imagenet", cfg: Optional[TrainConfig] = None, seed: int = 0,
             val_fraction: float = 0.2, imagenet_fallback: ImagenetFallback = "error",
             model_factory: Optional[ModelFactory] = None, progress: bool = True,
             parallel: Optional[Any] = None) -> PretrainResult:
    """The DDSM pre-training stage: train on ``train_data`` (CBIS-DDSM training set) with a
    patient-grouped validation part (:func:`inner_split`, ``seed``), select on validation, report
    on ``test_data`` (the official test set).

    ``cfg`` defaults to ``TrainConfig(method="finetune", trainable="all")``: the paper is silent on
    which layers pre-training updates; decision: all of them. ``weights``: ``"imagenet"``,
    ``"none"`` or a path; ``imagenet_fallback`` as in :func:`run_cv`. Writes
    ``out_dir/ddsm_pretrained.pt`` and ``out_dir/pretrain_metrics.json`` (atomically) and returns
    them without training when they exist for the same settings and data. ``parallel``: see
    :func:`~mammo_lib.engines.training.train_model` (torchrun, :mod:`mammo_lib.engines.distributed`); only the
    main process evaluates and writes, the others return the paths it writes.
    """
    cfg = cfg or TrainConfig(method="finetune", trainable="all")
    if not isinstance(cfg, TrainConfig):
        raise TypeError(f"cfg must be a TrainConfig, got {type(cfg).__name__}")
    out = Path(out_dir)
    ckpt, metrics_path = out / PRETRAIN_CHECKPOINT, out / PRETRAIN_METRICS
    labels = np.asarray(train_data.labels, dtype=np.int64)
    require_both_classes(labels, "pre-training data")
    require_both_classes(test_data.labels, "pre-training test data")
    tr, va = inner_split(labels, getattr(train_data, "groups", None), val_fraction=val_fraction, seed=seed)
    train, val = TensorData.from_roiset(train_data, tr), TensorData.from_roiset(train_data, va)
    test = TensorData.from_roiset(test_data)
    key = {"arch": arch, "weights": str(weights), "cfg": cfg.to_dict(), "seed": seed, "val_fraction": val_fraction,
           "imagenet_fallback": imagenet_fallback,
           "data": [train.fingerprint(), val.fingerprint(), test.fingerprint()]}
    if ckpt.exists() and metrics_path.exists():
        saved = json.loads(metrics_path.read_text())
        if saved.get("key") != to_jsonable(key):
            raise ValueError(f"{metrics_path}: made with other settings or data; delete {out} or use another out_dir")
        hist = pd.DataFrame(saved["history"])
        return PretrainResult(ckpt, saved["metrics"], hist, saved["metrics"]["init_used"], skipped=True)

    model, init_used = _build(model_factory or _default_factory, arch, str(weights), seed, None, imagenet_fallback)
    res = train_model(model, train, val, cfg, checkpoint_dir=out / "train", progress=progress, parallel=parallel)
    if parallel is not None and not parallel.is_main:
        return PretrainResult(ckpt, {"init_used": init_used}, res.history, init_used, skipped=False)
    prob = predict(res.model, test.images if cfg.input == "roi" else test.masks, input=cfg.input,
                   batch_size=max(cfg.batch_size, 32), device=cfg.device)[:, 1]
    m = classification_metrics(test.labels, prob)
    metrics = {k: v for k, v in m.items() if k != "confusion"}
    metrics.update(confusion=m["confusion"].tolist(), best_epoch=res.best_epoch,
                   best_val_accuracy=res.best_val_accuracy, best_val_loss=res.best_val_loss,
                   epochs_run=res.epochs_run, init_used=init_used, arch=arch,
                   n_train=len(train), n_val=len(val), n_test=len(test))
    save_torch({"model_state": {k: v.detach().cpu() for k, v in res.model.state_dict().items()},
                        "arch": arch, "init_used": init_used, "cfg": cfg.to_dict(),
                        "roi_spec": roi_spec_of(train_data)}, ckpt)
    write_json(metrics_path, {"key": key, "metrics": metrics, "history": res.history.to_dict(orient="list")})
    return PretrainResult(ckpt, metrics, res.history, init_used, skipped=False)
