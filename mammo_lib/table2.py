"""Notebooks 03, 05 and 06 as library steps: the pre-trained trunks and their gate, Table 2 as a
calibrated instrument (:mod:`mammo_lib.instrument`), and the significance tests (Sec. 5.1).

Initialisations (Table 2's "pre-training" column):

- ``imagenet``: torchvision's ImageNet weights when available; otherwise, with
  ``imagenet_fallback: generic``, the stand-in of :mod:`mammo_lib.stand_in` (generic synthetic
  pre-training, said in every row), or with ``none`` a random network (not a fair stand-in: the
  teacher's maps are then nearly the same for every case).
- ``ddsm``: all layers pre-trained on the CBIS-DDSM training set (its phantom twin in the demo),
  starting from the ``imagenet`` initialisation, as in the paper.
"""
from __future__ import annotations

import contextlib

from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from filelock import FileLock

from .config import Config
from .report import save_figure, write_table

#: Table 2 spec names (``<init>_<method>``).
TABLE2_SPECS = ("imagenet_finetune", "imagenet_transfer", "ddsm_finetune", "ddsm_transfer")
INIT_LABELS = {"imagenet": "ImageNet", "ddsm": "DDSM"}
#: Display names of the methods in figure titles.
_METHOD_SHORT = {"finetune": "fine-tune", "transfer": "knowledge transfer", "shuffled": "KT, shuffled teacher",
                 "oracle": "KT, oracle target"}


def lock_for(path: str | Path) -> FileLock:
    """The lock guarding a shared artefact (a folder or file) of the pipeline: ``<path>.lock``
    (``docs/DECISIONS.md``, "Table 2 as independent jobs"). Work is redone only after re-checking,
    under the lock, that no other process finished it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(str(path) + ".lock")


def spec_label(spec: str, trunks: dict[str, Any] | None = None) -> str:
    """A figure label saying what a model really started from, e.g. ``"ImageNet stand-in
    (generic synthetic), fine-tune"`` rather than ``"imagenet_finetune"``."""
    if spec == "mask_only":
        return "mask only"
    init, meth = spec.split("_", 1)
    note = (trunks or {}).get(init, {}).get("note", "")
    if init == "imagenet" and note and note != "ImageNet":
        name = "ImageNet stand-in (generic synthetic)" if "generic" in note else "ImageNet role (random)"
    elif init == "ddsm" and "generic" in note:
        name = "DDSM (from the generic stand-in)"
    else:
        name = INIT_LABELS.get(init, init)
    return f"{name}, {_METHOD_SHORT.get(meth, meth)}"


# ------------------------------------------------------------------------------------- trunks
def imagenet_trunk(cfg: Config, *, progress: bool = True) -> dict[str, Any]:
    """The ``imagenet`` initialisation: ``{"weights": str|None, "note": str, "test_accuracy": float|None}``."""
    from .model import WeightsUnavailableError, build_model
    from .stand_in import GENERIC_INIT_NOTE, pretrain_generic

    w = cfg.get("imagenet_weights", "imagenet")
    fallback = cfg.get("imagenet_fallback", "error")
    if w != "none":
        try:
            build_model(cfg["arch"], weights=w)
            return {"weights": w, "note": "ImageNet", "test_accuracy": None}
        except (WeightsUnavailableError, ValueError) as err:
            if fallback == "error":
                raise WeightsUnavailableError(str(err)) from err
    if fallback == "generic" or w == "generic":
        from .pipeline import run_dir

        g, t = cfg.typed.generic_pretrain, cfg.typed.train  # defaults filled in by the profile schema
        out = run_dir(cfg, "generic")
        with lock_for(out):
            m = pretrain_generic(out, arch=cfg["arch"], n_train=g.n_train, n_test=g.n_test, size=int(cfg["roi_size"]),
                                 epochs=g.epochs, batch_size=g.batch_size, lr=g.lr, seed=int(cfg["seed"]),
                                 device=cfg["device"], amp=t.amp, channels_last=t.channels_last,
                                 workers=int(cfg.get("workers", 1) or 1), progress=progress)
        return {"weights": m["checkpoint"], "note": GENERIC_INIT_NOTE, "test_accuracy": m["test_accuracy"],
                "metrics": m}
    return {"weights": None, "note": "random (ImageNet unavailable; not a fair stand-in)", "test_accuracy": None}


def ddsm_trunk(cfg: Config, *, progress: bool = True, parallel: Any = None) -> dict[str, Any]:
    """The ``ddsm`` initialisation: all layers trained on the pre-training set from ``imagenet``
    (``parallel``: several processes under torchrun, see :mod:`mammo_lib.distributed`)."""
    from .datasets import roi_sets
    from .pipeline import run_dir, train_config
    from .protocol import pretrain

    ds = roi_sets(cfg, progress=progress)
    im = imagenet_trunk(cfg, progress=progress)
    p = cfg.section("pretrain")
    tcfg = train_config(cfg, epochs=int(p.get("epochs", cfg["train"]["epochs"])),
                        trainable=p.get("trainable", "all"), method="finetune",
                        lr=float(p.get("lr", cfg["train"]["lr"])))
    weights = im["weights"] or "none"
    out = run_dir(cfg, "pretrain", weights)
    # under torchrun the ranks train together (mammo_lib.distributed): a file lock would deadlock them
    with (contextlib.nullcontext() if parallel is not None else lock_for(out)):
        res = pretrain(ds.pre_train, ds.pre_test, out, arch=cfg["arch"], weights=weights, cfg=tcfg,
                       seed=int(cfg["seed"]), imagenet_fallback="error", progress=progress, parallel=parallel)
    return {"weights": str(res.checkpoint), "note": f"DDSM pre-training from {im['note']}",
            "test_accuracy": float(res.metrics.get("accuracy", float("nan"))), "result": res}


def step_pretrain(cfg: Config, *, progress: bool = True) -> dict[str, Any]:
    """Notebook 03: both trunks, their own test accuracy and the gate (Fig. 6 distances included)."""
    from .datasets import roi_sets
    from .model import build_model
    from .stand_in import trunk_gate

    ds = roi_sets(cfg, progress=progress)
    im, dd = imagenet_trunk(cfg, progress=progress), ddsm_trunk(cfg, progress=progress)
    rows = []
    for name, t in (("imagenet", im), ("ddsm", dd)):
        model = build_model(cfg["arch"], weights=t["weights"], seed=int(cfg["seed"]))
        acc = t["test_accuracy"] if t["test_accuracy"] is not None else float("nan")
        row = trunk_gate(model, INIT_LABELS[name], acc if np.isfinite(acc) else 1.0, ds.cv.images, ds.cv.masks,
                         progress=False)
        row["own test accuracy"] = round(acc, 3) if np.isfinite(acc) else "n/a (ImageNet)"
        row["initialisation"] = t["note"]
        rows.append(row)
    gate = pd.DataFrame(rows)
    gate = gate[["trunk", "initialisation"] + [c for c in gate.columns if c not in ("trunk", "initialisation")]]
    write_table(gate, "trunk_gate", cfg.results_dir)
    res = dd["result"]
    m = dict(res.metrics)
    table = pd.DataFrame([{"init": dd["note"], "train masses": len(ds.pre_train), "test masses": len(ds.pre_test),
                           "best epoch": m.get("best_epoch"), "test accuracy %": round(100 * m["accuracy"], 1),
                           "test AUC": round(m.get("auc", float("nan")), 3),
                           "sensitivity %": round(100 * m["sensitivity"], 1),
                           "specificity %": round(100 * m["specificity"], 1)}])
    write_table(table, "pretraining", cfg.results_dir)
    return {"table": table, "gate": gate, "checkpoint": Path(dd["weights"]), "trunks": {"imagenet": im, "ddsm": dd}}


# ------------------------------------------------------------------------------------- data
def renderings(cfg: Config, ds: Any) -> dict[str, Any]:
    """ROI sets by rendering name, all in the cross-validation set's case order."""
    ids = list(ds.cv.index["case_id"])
    out = {"train" if cfg.uses_phantom else "data": ds.cv}
    for name, rs in (ds.renderings or {}).items():
        out[name] = rs.by_case_ids(ids)
    return out


def conditions(cfg: Config):
    """The instrument's conditions for this profile (phantom: A and B; real data: as it is)."""
    from .instrument import PHANTOM_CONDITIONS, REAL_CONDITION

    if not cfg.uses_phantom:
        return (REAL_CONDITION,)
    wanted = cfg.section("cv").get("conditions", ["A", "B"])
    return tuple(c for c in PHANTOM_CONDITIONS if c.name in wanted)


def instrument_data(cfg: Config, *, progress: bool = True):
    """Trunk caches for both initialisations, every rendering the conditions use, and the
    mask-only cache (read back from ``work_dir`` when made with the same settings and code)."""
    from .datasets import roi_sets
    from .instrument import CODE, InstrumentData
    from .model import build_model
    from .pipeline import run_dir, train_config
    from .trunk_cache import FLIPS, TrunkCache, build_cache

    ds = roi_sets(cfg, progress=progress)
    rends = renderings(cfg, ds)
    conds = conditions(cfg)
    train_r = {c.train for c in conds}
    used = train_r | {r for c in conds for r in c.tests.values()}
    trunks = {"imagenet": imagenet_trunk(cfg, progress=progress), "ddsm": ddsm_trunk(cfg, progress=progress)}
    arch, seed = cfg["arch"], int(cfg["seed"])
    head = cfg.section("train").get("head", "gap")
    tcfg = train_config(cfg)
    speed = {"device": tcfg.device, "amp": tcfg.amp, "channels_last": tcfg.channels_last}

    def factory(weights: str | None) -> Callable[[int], Any]:
        return lambda s: build_model(arch, weights=weights, seed=s, head=head)

    caches: dict[str, dict[str, TrunkCache]] = {}
    for init, t in trunks.items():
        d = run_dir(cfg, "trunk_cache", init, t["weights"], CODE, sorted(used))
        model = factory(t["weights"])(seed)
        caches[init] = {}
        for r in sorted(used):
            path = d / f"{r}.pt"
            with lock_for(path):
                cached = TrunkCache.load_or_none(path)  # a damaged file is named in a warning and rebuilt
                if cached is not None:
                    caches[init][r] = cached
                    continue
                rs = rends[r]
                c = build_cache(model, rs.images, rs.masks, labels=rs.labels, ids=list(rs.index["case_id"]),
                                flips=FLIPS if r in train_r else ("none",), progress=progress, **speed)
                caches[init][r] = c
                c.save(path)
    mask_model = factory(trunks["imagenet"]["weights"])(seed)
    mpath = run_dir(cfg, "trunk_cache", "mask", trunks["imagenet"]["weights"], CODE) / "mask.pt"
    with lock_for(mpath):
        mcache = TrunkCache.load_or_none(mpath)
        if mcache is None:
            mcache = build_cache(mask_model, ds.cv.masks.astype(np.float32), ds.cv.masks, labels=ds.cv.labels,
                                 ids=list(ds.cv.index["case_id"]), progress=progress, **speed)
            mcache.save(mpath)
    data = InstrumentData(inits={k: factory(t["weights"]) for k, t in trunks.items()}, caches=caches,
                          labels=ds.cv.labels, groups=ds.cv.groups, ids=list(ds.cv.index["case_id"]),
                          masks=ds.cv.masks, mask_cache=mcache, mask_init=factory(trunks["imagenet"]["weights"]))
    from .io import write_json

    write_json(prepared_marker(cfg), {"trunks": {k: {"weights": t["weights"], "note": t["note"]}
                                                 for k, t in trunks.items()}, "code": CODE})
    return data, trunks


def prepared_marker(cfg: Config) -> Path:
    """Written by :func:`instrument_data` once the shared preconditions of the instrument (ROI
    sets, both trunks, the trunk caches) exist: :func:`mammo_lib.jobs.collect` reads runs back
    only then, so that collecting never trains."""
    d = instrument_dir(cfg)
    return d.parent / f"{d.name}.prepared.json"


def grid_of(cfg: Config):
    from .instrument import beta_grid

    cv = cfg.section("cv")
    return beta_grid(cv.get("beta_grid", [0, 2, 8, 32, 128]), cv.get("beta_grid_at", [1000]))


def instrument_dir(cfg: Config) -> Path:
    from .pipeline import run_dir

    return run_dir(cfg, "instrument")


_RUNS: dict[tuple[str, str], Any] = {}


def run(cfg: Config, *, progress: bool = True):
    """Run (or read back) the instrument of the profile; returns ``(result, trunks)``. Within one
    process the result is reused (the downstream steps ask for it per fold)."""
    from .instrument import run_instrument
    from .pipeline import train_config

    key = (str(cfg.root), cfg.digest())
    if key in _RUNS:
        return _RUNS[key]

    data, trunks = instrument_data(cfg, progress=progress)
    tcfg = train_config(cfg, method="finetune")
    res = run_instrument(data, conditions(cfg), instrument_dir(cfg), tcfg, grid=grid_of(cfg),
                         n_splits=int(cfg.section("cv")["n_splits"]), seed=int(cfg["seed"]),
                         shuffle_seed=int(cfg["seed"]), progress=progress)
    _RUNS[key] = (res, trunks)
    return res, trunks


def summary(res: Any, condition: str, trunks: dict[str, Any]) -> pd.DataFrame:
    """Per spec: mean +- std of primary-test accuracy over folds, summed confusion, other renderings."""
    r = res.runs[(res.runs["condition"] == condition) & (res.runs["spec"] != "")]
    rows = []
    for spec, g in r.groupby("spec", sort=False):
        init = spec.split("_")[0] if spec != "mask_only" else "imagenet"
        row = {"spec": spec, "init_used": trunks.get(init, {}).get("note", "") if spec != "mask_only" else "mask input",
               "n_folds": len(g), "acc_mean": g["accuracy"].mean(), "acc_std": g["accuracy"].std(ddof=1),
               **{c: int(g[c].sum()) for c in ("tn", "fp", "fn", "tp")}, "n_test": int(g["n_test"].sum()),
               "beta per fold": ", ".join(f"{b:g}" for b in g["beta"]) if spec.endswith(("transfer", "shuffled", "oracle")) else ""}
        for c in g.columns:
            if c.startswith("acc ") or c in ("flip rate", "energy share on mass", "d4 (test)"):
                row[c] = g[c].mean()
        rows.append(row)
    return pd.DataFrame(rows)


def step_table2(cfg: Config, *, progress: bool = True) -> dict[str, Any]:
    """Notebook 05: the gate, the dose-response, Table 2 with its controls, Fig. 4(b)."""
    from . import figures, paper
    from .instrument import METHOD_LABELS, calibration_gate, gate_passes
    from .report import table2_comparison

    res, trunks = run(cfg, progress=progress)
    rd = cfg.results_dir
    gate = calibration_gate(res, "B") if cfg.uses_phantom else pd.DataFrame()
    write_table(gate, "calibration_gate", rd)
    dose = res.dose_response()
    write_table(dose, "table2_dose_response", rd, floatfmt=".3f")
    write_table(res.choices, "beta_selection", rd)
    # wall-clock columns stay in the run folders: committed tables hold only what a rerun reproduces
    write_table(res.runs.drop(columns=["wall_s"]), "table2_runs", rd, floatfmt=".4g")
    pf = pd.concat([res.per_fold(c.name).assign(condition=c.name) for c in res.conditions],
                   ignore_index=True).drop(columns=["wall_s"])
    write_table(pf, "table2_per_fold", rd, floatfmt=".4g")
    write_table(res.predictions[res.predictions["primary"] & res.predictions["spec"].ne("")]
                .drop(columns=["primary"]), "table2_predictions", rd, floatfmt=".4g")
    summaries, comps = {}, []
    for c in res.conditions:
        s = summary(res, c.name, trunks)
        summaries[c.name] = s
        write_table(s, f"table2_summary_{c.name}", rd, floatfmt=".3f")
        comp = table2_comparison(s[s["spec"].isin(TABLE2_SPECS)])
        comp.insert(0, "condition", c.name)
        comps.append(comp)
    comp = pd.concat(comps, ignore_index=True)
    write_table(comp, "table2_comparison", rd)
    # Controls: knowledge transfer against a shuffled teacher and an oracle target.
    ctrl_rows = []
    for c in res.conditions:
        s = summaries[c.name].set_index("spec")
        for init in ("imagenet", "ddsm"):
            for meth in ("finetune", "transfer", "shuffled", "oracle"):
                spec = f"{init}_{meth}"
                if spec in s.index:
                    r = s.loc[spec]
                    ctrl_rows.append({"condition": c.name, "pre-training": INIT_LABELS[init], "run": METHOD_LABELS[meth],
                                      "test rendering": c.primary,
                                      "accuracy %": round(100 * r["acc_mean"], 1),
                                      "± (folds)": round(100 * r["acc_std"], 1),
                                      "flip rate": round(float(r.get("flip rate", np.nan)), 3),
                                      "energy share on mass": round(float(r["energy share on mass"]), 3),
                                      "d^4 to target": round(float(r["d4 (test)"]), 3),
                                      "beta per fold": r["beta per fold"]})
    controls = pd.DataFrame(ctrl_rows)
    write_table(controls, "table2_controls", rd)
    figs = {"table2_dose_response": figures.dose_response(dose)}  # also written as figures/<name>.png
    save_figure(figs["table2_dose_response"], "table2_dose_response", rd)
    main = res.conditions[-1].name
    s = summaries[main].set_index("spec")
    fig4 = pd.DataFrame([
        {"model": "mask only", "accuracy % (ours)": round(100 * s.loc["mask_only", "acc_mean"], 1),
         "accuracy % (paper)": paper.FIG4_ACCURACY["mask_only"]},
        {"model": "ROI only (= ImageNet fine-tune)", "accuracy % (ours)": round(100 * s.loc["imagenet_finetune", "acc_mean"], 1),
         "accuracy % (paper)": paper.FIG4_ACCURACY["roi_only"]},
    ])
    write_table(fig4, "fig4b", rd)
    cvr = res.cv_result(main)
    figs["table2_confusion"] = figures.confusion_matrices(
        {spec_label(sp, trunks): cvr.confusion(sp) for sp in TABLE2_SPECS},
        title=f"Table 2, condition {main} (test: {res.conditions[-1].primary} rendering): confusion matrices "
              f"summed over folds")
    figs["fig4b_confusion"] = figures.confusion_matrices(
        {"mask only": cvr.confusion("mask_only"),
         f"ROI only ({spec_label('imagenet_finetune', trunks)})": cvr.confusion("imagenet_finetune")},
        title=f"Fig. 4(b), condition {main}")
    for name in ("table2_confusion", "fig4b_confusion"):
        save_figure(figs[name], name, rd)
    verdict = verdict_lines(cfg, res, gate, summaries, trunks)
    from .io import write_text
    write_text(rd / "tables" / "summary.notes.md", "\n".join(verdict) + "\n")
    return {"result": res, "gate": gate, "dose": dose, "comparison": comp, "controls": controls, "fig4b": fig4,
            "summaries": summaries, "verdict": verdict, "figures": figs, "gate_passes": {i: gate_passes(gate, i) for i in trunks}
            if len(gate) else {}}


def verdict_lines(cfg: Config, res: Any, gate: pd.DataFrame, summaries: dict[str, pd.DataFrame],
                  trunks: dict[str, Any]) -> list[str]:
    """Plain sentences: the gate first, then per condition and initialisation what KT did."""
    from .instrument import gate_passes
    from .stats import compare

    lines = []
    trunk_fail = {i: t["gate"] for i, t in trunks.items() if t.get("gate") is not None and not t["gate"]["passes"]}
    if trunk_fail:
        lines.append("**Trunk gate (checked first):** " + "; ".join(
            f"{INIT_LABELS.get(i, i)} trunk NOT passed ({trunk_gate_failures(g)})" for i, g in trunk_fail.items())
            + ": its rows get no verdict.")
    if len(gate):
        ok = {i: gate_passes(gate, i) for i in trunks}
        lines.append("**Calibration gate (condition B, checked before any verdict):** " + "; ".join(
            f"{INIT_LABELS[i]} trunk {'passed' if v else 'NOT passed'}" for i, v in ok.items()) + ". "
            + "; ".join(f"{r['check']}{' (' + INIT_LABELS.get(r['init'], r['init']) + ')' if r['init'] else ''}: "
                        f"{r['value']:.3f} ({r['threshold']})" for _, r in gate.iterrows()) + ".")
    else:
        ok = {i: True for i in trunks}
        lines.append("No calibration gate on real data (no known confounder); the verdict below is the plain comparison.")
    for c in res.conditions:
        s = summaries[c.name].set_index("spec")
        cvr = res.cv_result(c.name)
        for init in trunks:
            ft, kt, sh = f"{init}_finetune", f"{init}_transfer", f"{init}_shuffled"
            if ft not in s.index or kt not in s.index:
                continue
            if init in trunk_fail:
                lines.append(f"- Condition {c.name}, {INIT_LABELS[init]} rows: **trunk gate not passed** "
                             f"({trunk_gate_failures(trunk_fail[init])}), so no conclusion is drawn from them. "
                             f"Their numbers are in the tables below for reference.")
                continue
            if not ok.get(init, False):
                failed = gate[(gate["init"].isin([init, ""])) & ~gate["passes"].astype(bool)]["check"].tolist()
                lines.append(f"- Condition {c.name}, {INIT_LABELS[init]} rows: **not calibrated** (failed: "
                             f"{'; '.join(failed)}), so no conclusion is drawn from them. Their numbers are in "
                             f"the tables below for reference.")
                continue
            cmp = compare(cvr, kt, ft, seed=int(cfg["seed"]))
            cmp_sh = compare(cvr, kt, sh, seed=int(cfg["seed"])) if sh in s.index else None
            d = 100 * cmp["mean_diff"]
            helps = cmp["t_p"] < 0.05 and d > 0 and cmp_sh is not None and cmp_sh["mean_diff"] > 0 and cmp_sh["t_p"] < 0.05
            lines.append(
                f"- Condition {c.name} ({c.description}), {INIT_LABELS[init]} rows, test = {c.primary}: knowledge "
                f"transfer {100 * s.loc[kt, 'acc_mean']:.1f} % vs fine-tune {100 * s.loc[ft, 'acc_mean']:.1f} % "
                f"({d:+.1f} points over folds, paired t-test p = {cmp['t_p']:.3g}, McNemar p = {cmp['mcnemar_p']:.3g}, "
                f"bootstrap 95 % CI [{100 * cmp['boot_lo']:+.1f}, {100 * cmp['boot_hi']:+.1f}])"
                + (f"; vs the shuffled teacher {100 * cmp_sh['mean_diff']:+.1f} points (p = {cmp_sh['t_p']:.3g})" if cmp_sh else "")
                + f". Energy share on the mass {s.loc[kt, 'energy share on mass']:.3f} vs {s.loc[ft, 'energy share on mass']:.3f}"
                + (f"; predictions flipped by the confounder change {s.loc[kt, 'flip rate']:.3f} vs {s.loc[ft, 'flip rate']:.3f}"
                   if "flip rate" in s.columns else "")
                + (f"; accuracy on the reversed rendering {100 * s.loc[kt, 'acc reversed']:.1f} % vs "
                   f"{100 * s.loc[ft, 'acc reversed']:.1f} %" if "acc reversed" in s.columns and
                   pd.notna(s.loc[kt, "acc reversed"]) else "") + ". "
                + ("**Knowledge transfer helps here.**" if helps else "**No effect of knowledge transfer on accuracy here.**"))
    return lines


def trunk_gate_failures(row: dict[str, Any]) -> str:
    """The checks a trunk's gate row (:func:`~mammo_lib.stand_in.trunk_gate`) failed, in words,
    e.g. ``"own test accuracy 0.675 < 0.70"``; ``""`` when it passes."""
    from .stand_in import GATE_MIN_ACCURACY, GATE_MIN_ENERGY_RATIO

    out = []
    acc = row.get("own test accuracy")
    if isinstance(acc, (int, float)) and np.isfinite(acc) and acc < GATE_MIN_ACCURACY:
        out.append(f"own test accuracy {acc:.3f} < {GATE_MIN_ACCURACY:.2f}")
    ratio = row.get("energy ratio")
    if isinstance(ratio, (int, float)) and ratio < GATE_MIN_ENERGY_RATIO:
        out.append(f"teacher energy ratio {ratio:.2f} < {GATE_MIN_ENERGY_RATIO:.1f}")
    return "; ".join(out) or ("gate not passed" if not row.get("passes", True) else "")


# ------------------------------------------------------------------------------------- significance
def step_significance(cfg: Config, *, progress: bool = True) -> pd.DataFrame:
    """Notebook 06: per condition, KT vs fine-tune (and vs the shuffled teacher): the paired t-test
    over folds (the one test consistent with the paper's p-values), Wilcoxon, McNemar over pooled
    lesions, bootstrap CI."""
    from . import paper
    from .stats import significance_table

    res, _ = run(cfg, progress=progress)
    tables = []
    for c in res.conditions:
        cvr = res.cv_result(c.name)
        pairs = [(kt, ft) for kt, ft in (("imagenet_transfer", "imagenet_finetune"), ("ddsm_transfer", "ddsm_finetune"),
                                         ("imagenet_transfer", "imagenet_shuffled"), ("ddsm_transfer", "ddsm_shuffled"))]
        t = significance_table(cvr, pairs, seed=int(cfg["seed"]))
        t.insert(0, "condition", c.name)
        tables.append(t)
    table = pd.concat(tables, ignore_index=True)
    table["paper p"] = [paper.P_VALUES["imagenet"] if a == "imagenet_transfer" and b.endswith("finetune") else
                        paper.P_VALUES["ddsm"] if a == "ddsm_transfer" and b.endswith("finetune") else np.nan
                        for a, b in zip(table["spec_a"], table["spec_b"])]
    write_table(table, "significance_full", cfg.results_dir, floatfmt=".4g")
    compact = pd.DataFrame({
        "condition": table["condition"],
        "comparison": table["spec_a"] + " vs " + table["spec_b"],
        "accuracy difference (points)": (100 * table["mean_diff"]).round(1),
        "paired t-test p (folds; comparable to the paper)": table["t_p"],
        "Wilcoxon p (folds; min possible)": [f"{p:.3g} ({m:.3g})" for p, m in zip(table["wilcoxon_p"], table["wilcoxon_min_p"])],
        "McNemar p (pooled lesions)": table["mcnemar_p"],
        "bootstrap 95% CI (points)": [f"[{100 * lo:.1f}, {100 * hi:.1f}]" for lo, hi in zip(table["boot_lo"], table["boot_hi"])],
        "paper p": table["paper p"],
    })
    write_table(compact, "significance", cfg.results_dir, floatfmt=".3g")
    return compact


def fold_model(cfg: Config, spec: str, fold: int, condition: str | None = None):
    """The model selected on the inner validation split for ``spec`` (e.g. ``"ddsm_transfer"``) and
    ``fold`` in ``condition`` (default: the profile's last condition, B on the phantom)."""
    from .instrument import load_head

    res, trunks = run(cfg, progress=False)
    cond = condition or res.conditions[-1].name
    row = res.runs[(res.runs["condition"] == cond) & (res.runs["spec"] == spec) & (res.runs["fold"] == fold)]
    if row.empty:
        raise KeyError(f"no run {spec!r} in fold {fold} of condition {cond!r}")
    run_name = row.iloc[0]["run"]
    if run_name.startswith("transfer("):
        run_name = run_name[len("transfer("):-1]
    init = "imagenet" if spec == "mask_only" else spec.split("_")[0]
    init_dir = "mask" if spec == "mask_only" else init
    path = instrument_dir(cfg) / cond / init_dir / f"fold_{fold}" / run_name.replace(":", "_") / "head.pt"
    from .model import build_model
    model = build_model(cfg["arch"], weights=trunks[init]["weights"], seed=int(cfg["seed"]) + fold,
                        head=cfg.section("train").get("head", "gap"))
    return load_head(model, path)
