"""Tests of mammo_lib.protocol.cross_validation: folds, inner split, resumable cross-validation, pre-training.

Tiny data (20 ROIs of 32 px), the "small" torchvision DenseNet, 2 folds, 1 epoch.
"""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from mammo_lib.metrics.classification import confusion
from mammo_lib.networks.densenet import WeightsUnavailableError, build_model
from mammo_lib.protocol.cross_validation import (IMAGENET_FALLBACK_NOTE, RunSpec, inner_split, make_folds, pretrain,
                                run_cv)
from mammo_lib.engines.training import TrainConfig, predict

# ---------------------------------------------------------------- tables of cases
FOLD_FAIL_CASES = [
    (dict(labels=[0, 1] * 5, n_splits=1), ValueError, "n_splits must be an int >= 2"),
    (dict(labels=[0, 1] * 5, groups=[1, 2, 3]), ValueError, "one entry per label"),
    (dict(labels=[0] * 8 + [1] * 2, n_splits=3), ValueError, "each class needs at least"),
    (dict(labels=[0, 1] * 5, groups=[1, 2] * 5, n_splits=3), ValueError, "distinct groups"),
    (dict(labels=[0, 1, 0, 1], groups=["a", None, "b", "c"], n_splits=2), ValueError, "missing"),
    (dict(labels=[], n_splits=2), ValueError, "non-empty"),
]

INNER_FAIL_CASES = [
    (dict(labels=[0, 1] * 10, val_fraction=0.0), "val_fraction must be"),
    (dict(labels=[0, 1] * 10, val_fraction=0.7), "val_fraction must be"),
    (dict(labels=[0, 1] * 10, val_fraction=True), "val_fraction must be"),
    # 3 of each class now split 1:2 / 2:1 (small data); one malignant case cannot be on both sides
    (dict(labels=[0, 1, 0], val_fraction=0.2), r"the training part holds 2 benign and 1 malignant case\(s\)"),
    (dict(labels=[0, 0, 0], val_fraction=0.2), r"the training part of a fold has 1 class\(es\)"),
]

SPEC_FAIL_CASES = [
    (dict(name="bad name/x", init="none"), ValueError, "folder-safe"),
    (dict(name="ok", init="none", train={"epochs": 1}), TypeError, "TrainConfig"),
]

CFG = TrainConfig(epochs=1, batch_size=4, lr=1e-2, augment=())


# ---------------------------------------------------------------- RoiSet stand-in
class _Set:
    """What run_cv needs of a RoiSet: index, images, masks, labels, groups, by_case_ids."""

    def __init__(self, n: int = 20, size: int = 32, seed: int = 0, images: np.ndarray | None = None):
        rng = np.random.default_rng(seed)
        labels = np.arange(n) % 2
        self.index = pd.DataFrame({"case_id": [f"case{i:02d}" for i in range(n)],
                                   "patient_id": [f"p{i // 2}" for i in range(n)], "label": labels})
        self.masks = np.zeros((n, size, size), np.uint8)
        self.masks[:, 8:24, 8:24] = 1
        self.images = images if images is not None else rng.random((n, size, size), dtype=np.float32)

    @property
    def labels(self) -> np.ndarray:
        return self.index["label"].to_numpy()

    @property
    def groups(self) -> np.ndarray:
        return self.index["patient_id"].to_numpy()

    def __len__(self) -> int:
        return len(self.index)

    def by_case_ids(self, ids):
        pos = {c: i for i, c in enumerate(self.index["case_id"])}
        idx = np.array([pos[c] for c in ids])  # KeyError for an unknown id
        out = _Set.__new__(_Set)
        out.index = self.index.iloc[idx].reset_index(drop=True)
        out.images, out.masks = self.images[idx], self.masks[idx]
        return out


class _Counting:
    """model_factory counting how many networks run_cv builds (one per trained (spec, fold))."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def __call__(self, arch, weights, seed):
        self.calls.append((arch, weights, seed))
        return build_model(arch, weights=weights, seed=seed)


# ---------------------------------------------------------------- folds
@pytest.mark.parametrize("kwargs, exc, match", FOLD_FAIL_CASES)
def test_make_folds_rejects(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        make_folds(**kwargs)


def test_make_folds_grouped_stratified_deterministic():
    rng = np.random.default_rng(1)
    groups = np.repeat(np.arange(60), rng.integers(1, 4, 60))  # 60 patients, 1-3 masses each
    labels = (rng.random(groups.size) < 0.45).astype(int)
    folds = make_folds(labels, groups, n_splits=5, seed=4)
    assert folds.shape == labels.shape and set(folds) == set(range(5))  # every sample in exactly one fold
    assert (pd.Series(folds).groupby(groups).nunique() == 1).all()  # no patient in two folds
    overall = labels.mean()
    for k in range(5):
        assert abs(labels[folds == k].mean() - overall) < 0.12
    np.testing.assert_array_equal(folds, make_folds(labels, groups, n_splits=5, seed=4))
    assert not np.array_equal(folds, make_folds(labels, groups, n_splits=5, seed=5))


def test_make_folds_ungrouped_is_exactly_stratified():
    labels = np.array([0] * 10 + [1] * 15)
    folds = make_folds(labels, n_splits=5, seed=0)
    counts = pd.crosstab(folds, labels).to_numpy()
    np.testing.assert_array_equal(counts, [[2, 3]] * 5)


def test_inner_split_80_20_grouped():
    labels = np.array([0, 1] * 25)
    groups = np.arange(50) // 2  # each patient: one benign, one malignant
    tr, va = inner_split(labels, groups, val_fraction=0.2, seed=3)
    assert len(va) == 10 and len(tr) == 40
    assert np.intersect1d(tr, va).size == 0 and np.union1d(tr, va).size == 50
    assert np.intersect1d(groups[tr], groups[va]).size == 0
    assert labels[va].mean() == 0.5
    tr2, va2 = inner_split(labels, groups, val_fraction=0.2, seed=3)
    np.testing.assert_array_equal(va, va2)


@pytest.mark.parametrize("kwargs, match", INNER_FAIL_CASES)
def test_inner_split_rejects(kwargs, match):
    with pytest.raises(ValueError, match=match):
        inner_split(**kwargs)


@pytest.mark.parametrize("kwargs, exc, match", SPEC_FAIL_CASES)
def test_run_spec_rejects(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        RunSpec(**kwargs)


# ---------------------------------------------------------------- cross-validation
@pytest.fixture(scope="module")
def cv_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cv")
    data = _Set()
    specs = [RunSpec("none_finetune", "none", CFG), RunSpec("none_transfer", "none", CFG.replace(method="transfer"))]
    factory = _Counting()
    res = run_cv(data, specs, out, arch="small", n_splits=2, seed=0, model_factory=factory, progress=False)
    return data, specs, out, factory, res


def test_run_cv_rows_predictions_and_summary(cv_run):
    data, specs, _, factory, res = cv_run
    assert len(factory.calls) == 4  # 2 specs x 2 folds
    # paired runs: both specs of a fold start from the same initial network, folds differ
    assert factory.calls[0] == factory.calls[2] and factory.calls[1] == factory.calls[3]
    assert factory.calls[0] != factory.calls[1]
    assert list(res.per_fold[["spec", "fold"]].itertuples(index=False, name=None)) == [
        ("none_finetune", 0), ("none_finetune", 1), ("none_transfer", 0), ("none_transfer", 1)]
    assert (res.per_fold["init_used"] == "none").all()
    for spec, p in res.predictions.groupby("spec"):
        assert sorted(p["case_id"]) == sorted(data.index["case_id"])  # each case tested once
        lab = data.index.set_index("case_id").loc[p["case_id"], "label"].to_numpy()
        np.testing.assert_array_equal(p["label"].to_numpy(), lab)
        np.testing.assert_array_equal(p["pred"], (p["prob_malignant"] >= 0.5).astype(int))
        # summed confusion matrix == confusion of the pooled predictions
        np.testing.assert_array_equal(res.confusion(spec), confusion(p["label"], p["pred"]))
    # test folds follow make_folds and hold no patient of their training part
    folds = make_folds(data.labels, data.groups, n_splits=2, seed=0)
    p = res.predictions[res.predictions["spec"] == "none_finetune"].set_index("case_id")
    np.testing.assert_array_equal(p.loc[data.index["case_id"], "fold"], folds)
    s = res.summary().set_index("spec")
    acc = res.per_fold.loc[res.per_fold["spec"] == "none_transfer", "accuracy"].to_numpy()
    assert s.loc["none_transfer", "acc_mean"] == pytest.approx((acc[0] + acc[1]) / 2)
    assert s.loc["none_transfer", "acc_std"] == pytest.approx(abs(acc[0] - acc[1]) / np.sqrt(2))  # ddof=1
    assert s.loc["none_finetune", ["tn", "fp", "fn", "tp"]].sum() == 20
    assert ((res.per_fold["n_train"] + res.per_fold["n_val"] + res.per_fold["n_test"]) == 20).all()


def test_run_cv_resume_skips_done_folds(cv_run):
    data, specs, out, _, first = cv_run
    factory = _Counting()
    again = run_cv(data, specs, out, arch="small", n_splits=2, seed=0, model_factory=factory, progress=False)
    assert factory.calls == []
    pd.testing.assert_frame_equal(first.predictions, again.predictions, check_dtype=False)
    pd.testing.assert_frame_equal(first.per_fold, again.per_fold, check_dtype=False)
    # a fold whose result is missing is redone, the others are reused
    (out / "none_transfer" / "fold_1" / "result.json").unlink()
    factory = _Counting()
    third = run_cv(data, specs, out, arch="small", n_splits=2, seed=0, model_factory=factory, progress=False)
    assert len(factory.calls) == 1
    pd.testing.assert_frame_equal(first.predictions, third.predictions, check_dtype=False)
    # other settings in the same folder are refused, not silently mixed
    with pytest.raises(ValueError, match="other settings"):
        run_cv(data, [RunSpec("none_finetune", "none", CFG.replace(lr=1e-3))], out, arch="small", n_splits=2,
               seed=0, progress=False)


def test_run_cv_tests_on_shifted_rendering(tmp_path):
    data = _Set()
    shifted = _Set(images=np.full_like(data.images, 0.5))  # same cases, constant images
    res = run_cv(data, [RunSpec("ft", "none", CFG)], tmp_path, arch="small", n_splits=2, test_data=shifted,
                 progress=False)
    for _, p in res.predictions.groupby("fold"):
        assert p["prob_malignant"].nunique() == 1  # identical inputs -> the test fold came from test_data
    ref = run_cv(data, [RunSpec("ft", "none", CFG)], tmp_path / "plain", arch="small", n_splits=2, progress=False)
    assert ref.predictions["prob_malignant"].nunique() > 2
    missing = _Set(n=18)
    with pytest.raises(KeyError):
        run_cv(data, [RunSpec("ft", "none", CFG)], tmp_path / "m", arch="small", n_splits=2, test_data=missing,
               progress=False)


def test_run_cv_init_handling(tmp_path):
    data = _Set()
    spec = RunSpec("imagenet_finetune", "imagenet", CFG)
    with pytest.raises(WeightsUnavailableError):
        run_cv(data, [spec], tmp_path / "a", arch="small", n_splits=2, progress=False)
    res = run_cv(data, [spec], tmp_path / "b", arch="small", n_splits=2, imagenet_fallback="none", progress=False)
    assert (res.per_fold["init_used"] == IMAGENET_FALLBACK_NOTE).all()
    assert (res.summary()["init_used"] == IMAGENET_FALLBACK_NOTE).all()
    with pytest.raises(ValueError, match="needs ddsm_checkpoint"):
        run_cv(data, [RunSpec("ddsm_finetune", "ddsm", CFG)], tmp_path / "c", arch="small", n_splits=2,
               progress=False)
    with pytest.raises(FileNotFoundError, match="neither"):
        run_cv(data, [RunSpec("x", str(tmp_path / "nope.pt"), CFG)], tmp_path / "d", arch="small", n_splits=2,
               progress=False)
    with pytest.raises(ValueError, match="unique"):
        run_cv(data, [spec, spec], tmp_path / "e", arch="small", n_splits=2, progress=False)


# ---------------------------------------------------------------- pre-training
def test_pretrain_writes_loadable_checkpoint_and_skips_when_done(tmp_path):
    train, test = _Set(n=20, seed=1), _Set(n=8, seed=2)
    cfg = TrainConfig(epochs=1, batch_size=4, lr=1e-2, trainable="all", augment=())
    factory = _Counting()
    res = pretrain(train, test, tmp_path, arch="small", weights="none", cfg=cfg, seed=0, model_factory=factory,
                   progress=False)
    assert len(factory.calls) == 1 and not res.skipped and res.init_used == "none"
    m = res.metrics
    assert m["n_train"] + m["n_val"] == 20 and m["n_test"] == 8 and m["n_val"] == 4
    model = build_model("small", weights=res.checkpoint)
    acc = float((predict(model, test.images).argmax(1) == test.labels).mean())
    assert m["accuracy"] == pytest.approx(acc)
    saved = json.loads((tmp_path / "pretrain_metrics.json").read_text())
    assert saved["metrics"]["confusion"] == m["confusion"]
    factory = _Counting()
    again = pretrain(train, test, tmp_path, arch="small", weights="none", cfg=cfg, seed=0, model_factory=factory,
                     progress=False)
    assert factory.calls == [] and again.skipped and again.metrics == m
    with pytest.raises(ValueError, match="other settings"):
        pretrain(train, test, tmp_path, arch="small", weights="none", cfg=cfg.replace(lr=1e-3), seed=0,
                 progress=False)
