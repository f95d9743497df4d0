"""Tests of mammo_lib.protocol.instrument and mammo_lib.protocol.stand_in: the beta grid and per-fold choice, the
calibration gate, a tiny end-to-end instrument run (resumable, same numbers), the generic task
and the trunk gate's energy share computed by hand."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from mammo_lib.protocol.instrument import (BetaPoint, Condition, Instrument, InstrumentData, _choose, beta_grid, calibration_gate,
                                  gate_passes, run_instrument)
from mammo_lib.networks.densenet import build_model
from mammo_lib.protocol.stand_in import SHAPES, energy_share, mass_cells, shape_task
from mammo_lib.engines.training import TrainConfig
from mammo_lib.engines.trunk_cache import build_cache, predict_cached

GRID_FAIL_CASES = [
    (dict(paper=(2, 8), at=()), "must contain 0"),
    (dict(paper=(0, -1), at=()), "beta >= 0"),
    (dict(paper=(), at=()), "non-empty"),
]

# rows of one fold's grid -> the chosen (form, beta)
CHOICE_CASES = [
    ("best accuracy", [("paper", 0, 0.7, 0.5), ("paper", 8, 0.8, 0.6)], ("paper", 8)),
    ("tie -> lower loss", [("paper", 0, 0.8, 0.5), ("paper", 8, 0.8, 0.4)], ("paper", 8)),
    ("tie -> smaller beta", [("paper", 8, 0.8, 0.4), ("paper", 2, 0.8, 0.4), ("at", 1000, 0.8, 0.4)], ("paper", 2)),
    ("reference form can win", [("paper", 0, 0.6, 0.5), ("at", 1000, 0.9, 0.5)], ("at", 1000)),
]


@pytest.mark.parametrize("kw,msg", GRID_FAIL_CASES)
def test_beta_grid_rejects(kw, msg):
    with pytest.raises(ValueError, match=msg):
        beta_grid(**kw)


def test_beta_grid_names():
    g = beta_grid((0, 2, 8, 32, 128), (1000,))
    assert [p.name for p in g] == ["b0", "b2", "b8", "b32", "b128", "at1000"]
    assert [p.is_finetune for p in g] == [True] + [False] * 5


@pytest.mark.parametrize("name,rows,want", CHOICE_CASES)
def test_choose_beta(name, rows, want):
    df = pd.DataFrame(rows, columns=["form", "beta", "val_accuracy", "val_loss"]).assign(run="x")
    best = _choose(df)
    assert (best["form"], best["beta"]) == want


def _runs(ft_in=0.9, flip=0.3, mask=0.85):
    rows = []
    for init in ("imagenet", "ddsm"):
        for k in range(2):
            rows.append({"condition": "B", "init": init, "spec": f"{init}_finetune", "acc in distribution": ft_in,
                         "flip rate": flip, "accuracy": 0.5})
    rows += [{"condition": "B", "init": "mask", "spec": "mask_only", "accuracy": mask}] * 2
    return pd.DataFrame(rows)


# (in-distribution accuracy, flip rate, mask-only accuracy) -> gate passes
GATE_CASES = [
    ((0.90, 0.30, 0.85), True),
    ((0.84, 0.30, 0.85), False),
    ((0.90, 0.24, 0.85), False),
    ((0.90, 0.30, 0.79), False),
    ((0.85, 0.25, 0.80), True),   # thresholds are inclusive
]


@pytest.mark.parametrize("vals,ok", GATE_CASES)
def test_calibration_gate(vals, ok):
    from mammo_lib.protocol.instrument import InstrumentResult

    res = InstrumentResult(runs=_runs(*vals), predictions=pd.DataFrame(), choices=pd.DataFrame())
    gate = calibration_gate(res, "B")
    assert len(gate) == 5
    assert gate_passes(gate, "imagenet") is ok and gate_passes(gate, "ddsm") is ok


def test_energy_share_by_hand():
    # 4x4 ROI, 2x2 grid: the mask covers the top-left window fully -> one mass cell of four
    masks = np.zeros((1, 4, 4), np.uint8)
    masks[0, :2, :2] = 1
    maps = np.array([[[3.0, 1.0], [0.0, 0.0]]])
    es = energy_share(maps, masks)
    assert es.loc[0, "energy_share"] == pytest.approx(0.75)
    assert es.loc[0, "mass_area"] == pytest.approx(0.25)
    # a quarter-covered window counts (>= 0.25), less does not
    m2 = np.zeros((1, 8, 8), np.uint8)
    m2[0, 0, 0:4] = 1            # 4 of 16 pixels of window (0, 0)
    m2[0, 4, 4:7] = 1            # 3 of 16 pixels of window (1, 1)
    np.testing.assert_array_equal(mass_cells(m2, 2)[0], [[True, False], [False, False]])


def test_shape_task_balanced_and_deterministic():
    a, b = shape_task(16, size=48, seed=3), shape_task(16, size=48, seed=3)
    np.testing.assert_array_equal(a.images, b.images)
    assert np.bincount(a.labels).tolist() == [4] * len(SHAPES)
    assert set(a.targets.tolist()) <= set(range(2 * len(SHAPES)))
    assert a.images.min() >= 0 and a.images.max() <= 1
    assert all(a.masks[i].sum() > 0 for i in range(16))
    assert 0 < a.dots.mean() < 1


@pytest.mark.parametrize("n,size,workers", [(0, 64, 1), (4, 16, 1), (True, 64, 1), (4, 64, 0), (4, 64, 1.5)])
def test_shape_task_rejects(n, size, workers):
    with pytest.raises(ValueError):
        shape_task(n, size=size, workers=workers)


def test_shape_task_same_images_with_worker_processes():
    """Blocks of 64 images drawn in two processes: the same task as one process (image i depends on
    (seed, i) only), across a block boundary."""
    a, b = shape_task(70, size=32, seed=5), shape_task(70, size=32, seed=5, workers=2)
    for x, y in ((a.images, b.images), (a.masks, b.masks), (a.labels, b.labels), (a.dots, b.dots)):
        np.testing.assert_array_equal(x, y)
    np.testing.assert_array_equal(shape_task(6, size=32, seed=5).images, a.images[:6])


def _tiny_data(n=20, S=64):
    rng = np.random.default_rng(0)
    x = rng.random((n, S, S), dtype=np.float32)
    m = np.zeros((n, S, S), np.uint8)
    y = np.arange(n) % 2
    for i in range(n):
        m[i, 10:30 + 4 * y[i], 12:40] = 1
        x[i][m[i] > 0] += 0.3 * y[i]
    x = np.clip(x, 0, 1)
    model = build_model("small", seed=0)
    caches = {"r": build_cache(model, x, m, labels=y, progress=False),
              "r2": build_cache(model, x[:, ::-1].copy(), m[:, ::-1].copy(), labels=y, flips=("none",), progress=False)}
    mcache = build_cache(model, m.astype(np.float32), m, labels=y, progress=False)
    return InstrumentData(inits={"imagenet": lambda s: build_model("small", seed=0)}, caches={"imagenet": caches},
                          labels=y, groups=None, ids=[f"c{i}" for i in range(n)], masks=m, mask_cache=mcache,
                          mask_init=lambda s: build_model("small", seed=0))


def test_run_instrument_end_to_end_and_resume(tmp_path):
    data = _tiny_data()
    cond = Condition("B", "test", train="r", tests={"in distribution": "r", "flipped": "r2"},
                     primary="flipped", flip_pair=("in distribution", "flipped"), in_distribution="in distribution")
    cfg = TrainConfig(epochs=2, batch_size=4, lr=1e-2, seed=0, augment=("hflip", "vflip"))
    grid = [BetaPoint("paper", 0.0), BetaPoint("paper", 8.0), BetaPoint("at", 1000.0)]
    res = run_instrument(data, [cond], tmp_path, cfg, grid=grid, n_splits=2, seed=0, progress=False)
    # per fold: 3 grid runs + KT copy + 2 controls; plus mask-only per fold
    assert len(res.runs) == 2 * (3 + 1 + 2) + 2
    assert set(res.per_fold("B")["spec"]) == {"imagenet_finetune", "imagenet_transfer", "imagenet_shuffled",
                                              "imagenet_oracle", "mask_only"}
    assert len(res.choices) == 2
    # every case is predicted once per spec on the primary test
    cv = res.cv_result("B")
    assert cv.predictions.groupby("spec")["case_id"].nunique().eq(20).all()
    kt = res.runs[res.runs["spec"] == "imagenet_transfer"].sort_values("fold")
    for _, r in kt.iterrows():
        ch = res.choices[res.choices["fold"] == r["fold"]].iloc[0]
        assert (r["form"], r["beta"]) == (ch["form"], ch["beta"])
    dose = res.dose_response()
    assert len(dose) == 3 and dose["times chosen"].sum() == 2
    # resume: same numbers, nothing retrained
    again = run_instrument(data, [cond], tmp_path, cfg, grid=grid, n_splits=2, seed=0, progress=False)
    pd.testing.assert_frame_equal(again.runs.drop(columns="wall_s"), res.runs.drop(columns="wall_s"))


def test_interrupted_grid_retrains_the_group_and_writes_only_what_is_missing(tmp_path):
    """A grid group interrupted after writing some of its runs: the next call trains the group
    again (its runs' numbers depend on the group) and writes only the runs missing, with the same
    numbers as before; a grid of other betas is another group and is trained afresh."""
    data = _tiny_data()
    cond = Condition("B", "test", train="r", tests={"in distribution": "r"}, primary="in distribution")
    cfg = TrainConfig(epochs=2, batch_size=4, lr=1e-2, seed=0, augment=("hflip", "vflip"))
    grid = [BetaPoint("paper", 0.0), BetaPoint("paper", 8.0), BetaPoint("at", 1000.0)]
    inst = Instrument(data, [cond], tmp_path, cfg, grid=grid, n_splits=2, seed=0)
    first = inst.unit(cond, "imagenet", 0)
    assert first.trained == 3 + 2
    runs = [inst.run_path(cond, "imagenet", 0, f"grid:{p.name}") / "result.json" for p in grid]
    kept = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in runs[:2]}
    def numbers(p):  # everything but the wall-clock time
        d = json.loads(p.read_text())
        d["row"].pop("wall_s")
        return d

    lost = numbers(runs[2])
    runs[2].unlink()  # as if the process died before writing the last run of the group
    again = inst.unit(cond, "imagenet", 0)
    assert again.trained == 1 and numbers(runs[2]) == lost
    for p, (b, t) in kept.items():
        assert p.read_bytes() == b and p.stat().st_mtime_ns == t
    assert json.loads(runs[0].read_text())["key"]["trained_with"] == ["grid:b0", "grid:b8", "grid:at1000"]
    other = Instrument(data, [cond], tmp_path, cfg, grid=grid[:2], n_splits=2, seed=0).unit(cond, "imagenet", 0)
    # b0 and b8 trained without at1000: new keys, trained; the controls (at the chosen beta 8, as
    # before) do not depend on the grid and are read back
    assert other.trained == 2 and other.choices[0]["control_beta"] == 8.0


def test_run_instrument_folds_to_run(tmp_path):
    """One outer fold alone gives the same runs as that fold of a full run; bad folds are refused."""
    data = _tiny_data()
    cond = Condition("B", "test", train="r", tests={"in distribution": "r", "flipped": "r2"},
                     primary="flipped", flip_pair=("in distribution", "flipped"), in_distribution="in distribution")
    cfg = TrainConfig(epochs=1, batch_size=4, lr=1e-2, seed=0, augment=("hflip", "vflip"))
    grid = [BetaPoint("paper", 0.0), BetaPoint("paper", 8.0)]
    full = run_instrument(data, [cond], tmp_path / "full", cfg, grid=grid, n_splits=2, seed=0, progress=False)
    one = run_instrument(data, [cond], tmp_path / "one", cfg, grid=grid, n_splits=2, seed=0, folds_to_run=[1],
                         progress=False)
    assert set(one.runs["fold"]) == {1} and len(one.runs) == (2 + 1 + 2) + 1
    f1 = full.runs[full.runs["fold"] == 1].drop(columns="wall_s").reset_index(drop=True)
    pd.testing.assert_frame_equal(one.runs.drop(columns="wall_s").reset_index(drop=True), f1)
    for bad in ([2], [], [0, 0]):
        with pytest.raises(ValueError, match="folds_to_run must be distinct folds in \\[0, 2\\)"):
            run_instrument(data, [cond], tmp_path / "bad", cfg, grid=grid, n_splits=2, folds_to_run=bad,
                           progress=False)


def _result(kt_acc, ft_in=0.9, flip=0.4):
    """A synthetic instrument result: 5 folds x 10 cases, condition B, ImageNet rows."""
    from mammo_lib.protocol.instrument import PHANTOM_CONDITIONS, InstrumentResult

    runs, preds = [], []
    accs = {"imagenet_finetune": [0.60, 0.62, 0.58, 0.61, 0.59], "imagenet_transfer": kt_acc,
            "imagenet_shuffled": [0.60, 0.61, 0.59, 0.60, 0.60], "mask_only": [0.9] * 5}
    for spec, acc in accs.items():
        for k, a in enumerate(acc):
            y = np.array([0, 1] * 5)
            correct = np.zeros(10, bool)
            correct[: int(round(a * 10))] = True
            pred = np.where(correct, y, 1 - y)
            runs.append({"condition": "B", "init": "mask" if spec == "mask_only" else "imagenet", "spec": spec,
                         "fold": k, "accuracy": a, "acc in distribution": ft_in, "flip rate": flip,
                         "energy share on mass": 0.2, "tn": 0, "fp": 0, "fn": 0, "tp": 0, "init_used": "",
                         "seed": 0, "method": "", "input": "roi", "beta": 0.0, "sensitivity": 0, "specificity": 0,
                         "auc": 0.5, "n_train": 1, "n_val": 1, "n_test": 10, "epochs": 1, "best_epoch": 0,
                         "wall_s": 0.0})
            preds.append(pd.DataFrame({"condition": "B", "spec": spec, "primary": True, "fold": k,
                                       "case_id": [f"{k}_{i}" for i in range(10)], "label": y,
                                       "prob_malignant": pred.astype(float), "pred": pred}))
    cond = [c for c in PHANTOM_CONDITIONS if c.name == "B"]
    return InstrumentResult(pd.DataFrame(runs), pd.concat(preds, ignore_index=True), pd.DataFrame(), tuple(cond))


@pytest.mark.parametrize("kt,ft_in,want", [
    ([0.80, 0.82, 0.79, 0.81, 0.80], 0.9, "Knowledge transfer helps here"),
    ([0.60, 0.63, 0.57, 0.61, 0.60], 0.9, "No effect of knowledge transfer"),
    ([0.80, 0.82, 0.79, 0.81, 0.80], 0.5, "not calibrated"),      # the gate fails: no verdict
])
def test_verdict_follows_gate_and_controls(kt, ft_in, want):
    from mammo_lib.repro.config import load_config
    from mammo_lib.repro.table2 import summary, verdict_lines

    res = _result(kt, ft_in=ft_in)
    gate = calibration_gate(res, "B")
    trunks = {"imagenet": {"note": "stand-in"}}
    lines = verdict_lines(load_config("smoke", honour_env=False), res, gate, {"B": summary(res, "B", trunks)}, trunks)
    assert lines[0].startswith("**Calibration gate")
    assert want in "\n".join(lines[1:])


def test_verdict_says_why_the_t_test_p_is_undefined():
    """Knowledge transfer equal to fine-tuning in every fold (beta 0 chosen): no "p = nan" without a reason."""
    from mammo_lib.repro.config import load_config
    from mammo_lib.protocol.instrument import InstrumentResult
    from mammo_lib.repro.table2 import summary, verdict_lines

    res = _result([0.60, 0.62, 0.58, 0.61, 0.59])           # the fine-tune accuracies, fold by fold
    trunks = {"imagenet": {"note": "stand-in"}}
    cfg = load_config("smoke", honour_env=False)
    text = "\n".join(verdict_lines(cfg, res, calibration_gate(res, "B"), {"B": summary(res, "B", trunks)}, trunks))
    assert "p = nan" not in text and "paired t-test p undefined: the two arms have the same accuracy" in text
    choices = pd.DataFrame({"condition": "B", "init": "imagenet", "fold": range(5), "beta": 0.0})
    res = InstrumentResult(res.runs, res.predictions, choices, res.conditions)
    text = "\n".join(verdict_lines(cfg, res, calibration_gate(res, "B"), {"B": summary(res, "B", trunks)}, trunks))
    assert "paired t-test p undefined: beta 0 was chosen in every fold, so the two arms are the same model" in text


@pytest.mark.parametrize("gate_row,want", [
    ({"own test accuracy": 0.675, "energy ratio": 2.5, "passes": False},
     "trunk gate not passed** (own test accuracy 0.675 < 0.70)"),
    ({"own test accuracy": 0.9, "energy ratio": 1.5, "passes": False},
     "trunk gate not passed** (teacher energy ratio 1.50 < 2.0)"),
    ({"own test accuracy": 0.9, "energy ratio": 2.5, "passes": True}, "Knowledge transfer helps here"),
])
def test_verdict_enforces_the_trunk_gate(gate_row, want):
    """A trunk that fails its own gate gets no verdict, even where the calibration gate passes."""
    from mammo_lib.repro.config import load_config
    from mammo_lib.repro.table2 import summary, verdict_lines

    res = _result([0.80, 0.82, 0.79, 0.81, 0.80])
    gate = calibration_gate(res, "B")
    assert gate_passes(gate, "imagenet")
    trunks = {"imagenet": {"note": "stand-in", "gate": gate_row}}
    text = "\n".join(verdict_lines(load_config("smoke", honour_env=False), res, gate,
                                   {"B": summary(res, "B", trunks)}, trunks))
    assert want in text
    if not gate_row["passes"]:
        assert "helps" not in text and "No effect" not in text


# ------------------------------------------------------------------ the design (issue: trunks, fold seeds, controls)
def _design_data():
    data = _tiny_data()
    data.positive_inits = {"imagenet": lambda s: build_model("small", seed=0, head="gap_own")}
    return data


def test_instrument_design_tags_fixed_controls_and_positive_control(tmp_path):
    """Tags land in rows, keys and predictions; the nulls and the positive control train at the
    pre-specified point whatever beta the inner split chose; a rerun reads everything back."""
    data = _design_data()
    cond = Condition("B", "test", train="r", tests={"in distribution": "r", "flipped": "r2"},
                     primary="flipped", flip_pair=("in distribution", "flipped"), in_distribution="in distribution")
    cfg = TrainConfig(epochs=1, batch_size=4, lr=1e-2, seed=0, augment=("hflip", "vflip"))
    grid = [BetaPoint("paper", 0.0), BetaPoint("paper", 8.0), BetaPoint("paper", 32.0)]
    kw = dict(grid=grid, n_splits=2, seed=3, tags={"trunk_seed": 1, "fold_seed": 2},
              controls=("shuffled", "uniform", "rolled"), control_point=BetaPoint("paper", 32.0), positive=True)
    inst = Instrument(data, [cond], tmp_path, cfg, **kw)
    assert inst.runs_per_unit() == 3 + 3 + 2 and inst.n_runs() == 2 * 8 + 2
    parts = [inst.unit(c, i, k) for c, i, k in inst.units()] + [inst.mask_unit(cond, k) for k in range(2)]
    assert sum(p.trained for p in parts) == inst.n_runs()
    res = inst.merge(parts)
    assert set(res.runs["trunk_seed"]) == {1} and set(res.runs["fold_seed"]) == {2}
    assert set(res.predictions["trunk_seed"]) == {1}
    specs = set(res.runs["spec"]) - {""}
    assert specs == {"imagenet_finetune", "imagenet_transfer", "imagenet_shuffled", "imagenet_uniform",
                     "imagenet_rolled", "imagenet_ownft", "imagenet_ownkt", "mask_only"}
    ctrl = res.runs[res.runs["spec"].isin(["imagenet_shuffled", "imagenet_uniform", "imagenet_rolled",
                                           "imagenet_ownkt"])]
    assert set(ctrl["beta"]) == {32.0} and set(res.choices["control_beta"]) == {32.0}
    assert set(res.runs.loc[res.runs["spec"] == "imagenet_ownft", "beta"]) == {0.0}
    key = json.loads((inst.run_path(cond, "imagenet", 0, "control:uniform:b32") / "result.json").read_text())["key"]
    assert key["tags"] == {"trunk_seed": 1, "fold_seed": 2} and key["seed"] == 3 and key["target"] == "uniform"
    again = Instrument(data, [cond], tmp_path, cfg, **kw)
    back = [again.unit(c, i, k) for c, i, k in again.units()]
    assert sum(p.trained for p in back) == 0
    # other tags are another replicate: the same folder holds none of its runs
    other = Instrument(data, [cond], tmp_path, cfg, **{**kw, "tags": {"trunk_seed": 0, "fold_seed": 2}})
    assert other.unit(cond, "imagenet", 0, mode="read").missing[:3] == ["grid:b0", "grid:b8", "grid:b32"]
    assert res.select(trunk_seed=1, fold_seed=2).runs.shape == res.runs.shape
    assert res.select(trunk_seed=0).runs.empty


@pytest.mark.parametrize("kw,msg", [
    (dict(controls=("shuffled", "noise")), "controls must be distinct names"),
    (dict(controls=("shuffled", "shuffled")), "controls must be distinct names"),
    (dict(control_point=BetaPoint("paper", 64.0)), "is not in the grid"),
    (dict(positive=True), "the positive control needs a control_point"),
])
def test_instrument_design_rejects(kw, msg, tmp_path):
    with pytest.raises(ValueError, match=msg):
        Instrument(_tiny_data(), [], tmp_path, TrainConfig(epochs=1), grid=beta_grid((0, 8), ()), n_splits=2, **kw)


def _design_result():
    """Condition A, ImageNet rows, trunk seeds 0 (passes) and 1 (fails its gate), one fold seed,
    three folds; accuracies chosen so the differences are whole points."""
    from mammo_lib.protocol.instrument import PHANTOM_CONDITIONS, InstrumentResult
    from mammo_lib.repro.table2 import Design

    vals = {0: {"ft": [0.60, 0.62, 0.58], "kt": [0.70, 0.71, 0.69], "sh": [0.60, 0.60, 0.60], "at": [0.5] * 3},
            1: {"ft": [0.90] * 3, "kt": [0.40, 0.41, 0.39], "sh": [0.9] * 3, "at": [0.5] * 3}}
    oracle = {"nselft": [0.50, 0.50, 0.50], "nselkt": [0.55, 0.56, 0.57]}  # oracle analysis: 5, 6, 7 points
    rows = []
    for t, v in vals.items():
        for k in range(3):
            base = {"condition": "A", "init": "imagenet", "trunk_seed": t, "fold_seed": 0, "fold": k,
                    "n_train": 32, "n_val": 8, "n_test": 10}
            rows += [{**base, "run": "grid:b0", "spec": "imagenet_finetune", "form": "paper", "beta": 0.0,
                      "acc in distribution": v["ft"][k]},
                     {**base, "run": "grid:b8", "spec": "", "form": "paper", "beta": 8.0,
                      "acc in distribution": v["kt"][k]},
                     {**base, "run": "grid:at1000", "spec": "", "form": "at", "beta": 1000.0,
                      "acc in distribution": v["at"][k]},
                     {**base, "run": "transfer(grid:b8)", "spec": "imagenet_transfer", "form": "paper", "beta": 8.0,
                      "acc in distribution": v["kt"][k]},
                     {**base, "run": "control:shuffled:b8", "spec": "imagenet_shuffled", "form": "paper",
                      "beta": 8.0, "acc in distribution": v["sh"][k]}]
            rows += [{**base, "run": f"oracle-selected(grid:{'b0' if arm == 'nselft' else 'b8'})",
                      "spec": f"imagenet_{arm}", "form": "paper", "beta": 0.0 if arm == "nselft" else 8.0,
                      "acc in distribution": oracle[arm][k]} for arm in oracle]
    preds = pd.DataFrame(columns=["condition", "spec", "run", "init", "trunk_seed", "fold_seed", "fold", "test",
                                  "case_id", "label", "pred"])
    cond = tuple(c for c in PHANTOM_CONDITIONS if c.name == "A")
    res = InstrumentResult(pd.DataFrame(rows), preds, pd.DataFrame(), cond)
    trunks = pd.DataFrame({"init": ["imagenet", "imagenet"], "seed": [0, 1], "own test accuracy": [0.9, 0.6],
                           "energy ratio": [2.5, 2.5], "passes": [True, False], "calibrated": [True, True]})
    return Design(res, {}, (0, 0), {}), trunks


def _design_cfg(**cv):
    from mammo_lib.repro.config import load_config

    return load_config("smoke", {"cv": {"conditions": ["A"], "controls": ["shuffled"], "positive_control": False,
                                        **cv}}, honour_env=False)


def test_primary_analysis_by_hand():
    """KT at the primary beta minus fine-tune over the passing trunk only: differences 10, 9, 11
    points; Nadeau-Bengio variance factor 1/3 + 10/40; Holm over the primary family's two cells."""
    from scipy import stats as sps

    from mammo_lib.repro.table2 import primary_analysis

    design, trunks = _design_result()
    table, per_trunk = primary_analysis(_design_cfg(), design, trunks)
    fixed = table[(table["analysis"] == "fixed beta")].iloc[0]
    se = np.sqrt((1 / 3 + 10 / 40) * 1.0)                       # var(10, 9, 11) = 1
    p_nb = 2 * sps.t.sf(10 / se, 2)
    assert fixed["difference"] == pytest.approx(10.0) and fixed["n"] == 3 and fixed["n_trunks"] == 1
    assert fixed["p_nadeau_bengio"] == pytest.approx(p_nb)
    assert fixed["p_paired_t (paper-comparable)"] == pytest.approx(2 * sps.t.sf(10 / np.sqrt(1 / 3), 2))
    assert (fixed["ci_lo"], fixed["ci_hi"]) == pytest.approx((10 - sps.t.ppf(0.975, 2) * se, 10 + sps.t.ppf(0.975, 2) * se))
    assert fixed["favours KT"]
    trend = table[table["analysis"] == "trend over the grid"].iloc[0]
    assert trend["difference"] == pytest.approx(10 / np.log2(9))   # paper form only: slopes (d / log2 9)
    ps = sorted([fixed["p_nadeau_bengio"], trend["p_nadeau_bengio"]])
    want = {ps[0]: min(1, 2 * ps[0]), ps[1]: max(min(1, 2 * ps[0]), ps[1])}
    for _, r in table[table["family"] == "primary"].iterrows():
        assert r["p_corrected"] == pytest.approx(want[r["p_nadeau_bengio"]])
    sh = table[table["analysis"] == "vs shuffled teacher"].iloc[0]
    assert sh["difference"] == pytest.approx(10.0) and sh["family"] == "controls"
    sel = table[table["family"] == "secondary"].iloc[0]
    assert sel["difference"] == pytest.approx(10.0)
    orc = table[table["family"] == "oracle"]   # its own family: Holm over one cell leaves p as it is
    assert len(orc) == 1 and orc.iloc[0]["difference"] == pytest.approx(6.0)
    assert orc.iloc[0]["p_corrected"] == pytest.approx(orc.iloc[0]["p_nadeau_bengio"])
    assert list(table["family"].drop_duplicates()) == ["primary", "controls", "secondary", "oracle"]
    # per trunk: the failing trunk is reported (-50 points) and left out of the pooled row
    pt = per_trunk.set_index("trunk seed")
    assert pt.loc["1", "difference"] == pytest.approx(-50.0) and not pt.loc["1", "used in verdict"]
    assert pt.loc["pooled (used trunks)", "difference"] == pytest.approx(10.0)


@pytest.mark.parametrize("cv,want,absent", [
    ({"min_passing_trunks": 1}, "1 of 2 pass", "no conclusion"),
    ({"min_passing_trunks": 2}, "1 of 2 pass (at least 2 needed): **no conclusion** is drawn", "+10.0 points"),
])
def test_design_verdict_follows_the_tables(cv, want, absent):
    from mammo_lib.repro.table2 import design_verdict, primary_analysis

    design, trunks = _design_result()
    cfg = _design_cfg(**cv)
    table, _ = primary_analysis(cfg, design, trunks)
    text = "\n".join(design_verdict(cfg, trunks, table, design.result.conditions))
    assert "ImageNet seed 1 NOT passed (own test accuracy 0.600 < 0.70)" in text
    assert want in text and absent not in text
    if cv["min_passing_trunks"] == 1:
        assert "accuracy: +10.0 points (95 % CI [" in text
        assert "oracle analysis (epoch and beta selected on the neutral inner split, not a result), KT - " \
               "fine-tune: accuracy +6.0 (p_corrected = " in text
        helps = table.loc[table["analysis"] == "vs shuffled teacher", "p_corrected"].iloc[0] < 0.05
        assert ("Knowledge transfer helps here" in text) == bool(
            helps and table.loc[table["analysis"] == "fixed beta", "p_corrected"].iloc[0] < 0.05)


def test_oracle_selection_rows_follow_the_neutral_inner_split(tmp_path):
    """A condition with ``oracle_val``: every grid run also carries the epoch chosen on that
    rendering of the inner validation cases; ``<init>_nselft`` is beta 0 at that epoch and
    ``<init>_nselkt`` the grid point that the neutral rows choose (the same rule as
    knowledge transfer's choice); a condition without it has none."""
    data = _design_data()
    kw = dict(train="r", tests={"in distribution": "r", "flipped": "r2"}, primary="flipped",
              flip_pair=("in distribution", "flipped"), in_distribution="in distribution")
    with_o, without = Condition("B", "t", oracle_val="r2", **kw), Condition("A", "t", **kw)
    cfg = TrainConfig(epochs=3, batch_size=4, lr=1e-2, seed=0)
    grid = [BetaPoint("paper", 0.0), BetaPoint("paper", 8.0), BetaPoint("paper", 32.0)]
    inst = Instrument(data, [with_o, without], tmp_path, cfg, grid=grid, n_splits=2, seed=3,
                      tags={"trunk_seed": 0, "fold_seed": 0}, controls=("uniform",),
                      control_point=BetaPoint("paper", 32.0))
    res = inst.merge([inst.unit(c, i, k) for c, i, k in inst.units()])
    b, a = res.runs[res.runs["condition"] == "B"], res.runs[res.runs["condition"] == "A"]
    assert not a["spec"].isin(["imagenet_nselft", "imagenet_nselkt"]).any()
    assert res.choices.loc[res.choices["condition"] == "A", "oracle_beta"].isna().all()
    for k in range(2):
        saved = {pt.name: json.loads((inst.run_path(with_o, "imagenet", k, f"grid:{pt.name}") / "result.json")
                                     .read_text()) for pt in grid}
        orows = pd.DataFrame([s["oracle"]["row"] for s in saved.values()])
        best = orows.sort_values(["val_accuracy", "val_loss", "beta"], ascending=[False, True, True],
                                 kind="mergesort").iloc[0]
        bk = b[b["fold"] == k].set_index("spec")
        assert bk.loc["imagenet_nselkt", "beta"] == best["beta"]
        assert bk.loc["imagenet_nselkt", "best_epoch"] == best["best_epoch"]
        assert bk.loc["imagenet_nselft", "best_epoch"] == saved["b0"]["oracle"]["row"]["best_epoch"]
        assert bk.loc["imagenet_nselft", "val_accuracy"] == saved["b0"]["oracle"]["row"]["val_accuracy"]
        # the oracle's val accuracy is measured on the other rendering: recompute from the head
        net = build_model("small", seed=0)
        net.load_state_dict(torch.load(inst.run_path(with_o, "imagenet", k, "grid:b0") / "head_oracle.pt"),
                            strict=False)
        _, va, _ = inst.splits[k]
        acc = float((predict_cached(net, data.caches["imagenet"]["r2"].subset(va)).argmax(1)
                     == data.labels[va]).mean())
        assert acc == pytest.approx(bk.loc["imagenet_nselft", "val_accuracy"])
        ch = res.choices[(res.choices["condition"] == "B") & (res.choices["fold"] == k)].iloc[0]
        assert ch["oracle_beta"] == best["beta"]
