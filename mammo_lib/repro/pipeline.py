"""The reproduction's steps, one function per notebook, each resumable and cached on disk.

Notebooks call these with a :class:`~mammo_lib.repro.config.Config` and only display what they return:
the tables, and under ``"figures"`` the matplotlib Figures (name -> Figure) that the step also writes
as ``results/figures/<name>.png``. Every step reads what an earlier step made through the same
cached functions, so each notebook also runs on its own (and a rerun costs little). The data
assembly they share lives in :mod:`mammo_lib.repro.datasets`.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mammo_lib.repro.config import Config
from mammo_lib.repro.datasets import dataset_table, roi_sets
from mammo_lib.utils.files import write_text
from mammo_lib.repro.report import save_figure, write_table
from mammo_lib.repro.table2 import TABLE2_SPECS


# --------------------------------------------------------------------------------------------
# Data (assembled in :mod:`mammo_lib.repro.datasets`)
# --------------------------------------------------------------------------------------------
def step_data(cfg: Config, *, progress: bool = True) -> dict[str, Any]:
    """Notebook 01: make/load the data, preprocess to ROIs, write counts, exclusions, Fig. 2."""
    from mammo_lib.repro import figures
    from mammo_lib.data.images import load_record

    ds = roi_sets(cfg, progress=progress)
    rd = cfg.results_dir
    counts = dataset_table(ds)
    write_table(counts, "datasets", rd)
    write_table(ds.exclusions, "exclusions", rd)
    summ = (ds.exclusions.groupby(["dataset", "stage", "reason"]).size().reset_index(name="cases")
            if len(ds.exclusions) else pd.DataFrame({"dataset": [], "stage": [], "reason": [], "cases": []}))
    write_table(summ, "exclusions_summary", rd)
    src = ds.sources["bcdr_like" if cfg.uses_phantom else "bcdr"].records
    # Fig. 2: the two ROI contexts of one mass (the first malignant one).
    rec = next((r for r in src if r.label == 1), src[0])
    case = load_record(rec, intensity=cfg.get("intensity", "minmax"))
    fig = figures.fig2_roi_contexts(case.image, case.mask, min_context=int(cfg["min_context"]),
                                    size=int(cfg["roi_size"]))
    save_figure(fig, "fig2_roi_contexts", rd)
    return {"datasets": ds, "counts": counts, "exclusions": ds.exclusions, "exclusions_summary": summ,
            "figures": {"fig2_roi_contexts": fig}}


# --------------------------------------------------------------------------------------------
# Runtime
# --------------------------------------------------------------------------------------------
def pin_threads(cfg: Config) -> int:
    """Set torch's CPU threads to the profile's ``threads`` (when set) and return the count in use.

    CPU kernels sum in an order that depends on the thread count, so the same seed gives the
    same numbers only at the same count: the demo and smoke profiles pin 2, which makes their
    results the same on any machine (``docs/DECISIONS.md``, "Same numbers on every CPU"). Each
    notebook calls it once after loading the profile.

    >>> from mammo_lib.repro.config import load_config
    >>> pin_threads(load_config("smoke", honour_env=False))
    2
    """
    import torch

    n = cfg.get("threads")
    if n:
        torch.set_num_threads(int(n))
    return torch.get_num_threads()


def open_profile(profile: str = "", *, data_root: str = "", device: str = "") -> Config:
    """What each notebook's setup cell does: load the profile (``""``: ``$MAMMO_PROFILE``, else
    demo; ``data_root`` / ``device`` override it when not empty), pin the CPU threads
    (:func:`pin_threads`) and print what will run where.

    >>> cfg = open_profile("smoke")  # doctest: +ELLIPSIS
    profile: smoke  arch: small  ROI size: 64  device: cpu  CPU threads: 2
    results: ...
    """
    from mammo_lib.repro.config import load_config

    cfg = load_config(profile, {"data_root": data_root or None, "device": device or None})
    threads = pin_threads(cfg)
    print(f"profile: {cfg.name}  arch: {cfg['arch']}  ROI size: {cfg['roi_size']}  device: {cfg['device']}  "
          f"CPU threads: {threads}")
    print(f"results: {cfg.results_dir}")
    return cfg


# --------------------------------------------------------------------------------------------
# Training configurations
# --------------------------------------------------------------------------------------------
def train_config(cfg: Config, **overrides: Any):
    """A :class:`~mammo_lib.engines.training.TrainConfig` from the profile's ``train`` section."""
    from mammo_lib.engines.training import TrainConfig

    from dataclasses import fields

    t = cfg.section("train")
    # every TrainConfig field the profile sets is used (defaults are TrainConfig's, declared once)
    names = {f.name for f in fields(TrainConfig)} - {"seed", "device"}
    kw: dict[str, Any] = {k: v for k, v in t.items() if k in names}
    for k in ("omega", "augment"):
        if k in kw:
            kw[k] = tuple(kw[k])
    kw.update(seed=int(cfg["seed"]), device=cfg["device"])
    kw.update(overrides)
    return TrainConfig(**kw)


def run_dir(cfg: Config, stage: str, *extra: Any) -> Path:
    """``work_dir/<stage>-<key>``: the key holds the settings and the code the stage depends on
    (:func:`mammo_lib.repro.config.stage_key`), so a changed parameter or module gets a fresh folder
    and an unchanged one resumes."""
    from mammo_lib.repro.config import stage_key

    return cfg.work_dir / f"{stage}-{stage_key(cfg, stage, *extra)}"


def ddsm_checkpoint(cfg: Config, *, progress: bool = True) -> Path:
    """The DDSM pre-trained checkpoint of the profile (pre-trains first when absent)."""
    from mammo_lib.repro.table2 import ddsm_trunk

    return Path(ddsm_trunk(cfg, progress=progress)["weights"])


def step_pretrain(cfg: Config, *, progress: bool = True) -> dict[str, Any]:
    """Notebook 03: the two pre-trained trunks and their gate (see :func:`mammo_lib.repro.table2.step_pretrain`)."""
    from mammo_lib.repro.table2 import step_pretrain as _step

    return _step(cfg, progress=progress)


# --------------------------------------------------------------------------------------------
# Table 1, Table 2, Fig. 4(b), beta selection
# --------------------------------------------------------------------------------------------
def step_table2(cfg: Config, *, progress: bool = True) -> dict[str, Any]:
    """Notebook 05: Table 2 as a calibrated instrument (see :func:`mammo_lib.repro.table2.step_table2`)."""
    from mammo_lib.repro.table2 import step_table2 as _step

    write_phantom_notes(cfg)  # first: the step adds the design's note under the same tables
    return _step(cfg, progress=progress)


PHANTOM_NOTES = {
    "table1": ("On the phantom, confounders are planted outside the mass but inside the mass-centred "
               "window, so the tight crops (original ROI, overlap 0.9) never show them and are immune to "
               "the train/test reversal, while every context-rich crop sees them. The ranking here measures "
               "exposure to the confounder, not the value of context that the paper's OMI-DB table measures."),
    "table2_comparison": ("On the phantom, condition A trains and tests with confounders independent of the "
                          "label (the paper's setting); condition B trains with a calcification shortcut "
                          "(P(calc | malignant) 0.9, benign 0.1) and is scored on a neutral rendering of the "
                          "same test masses. 'ImageNet' rows start from the generic synthetic pre-training "
                          "when ImageNet weights are unavailable (the small network has none); 'DDSM' rows "
                          "from all-layer pre-training on the DDSM-like phantom set (confounders independent "
                          "of the label). Groups 1-3 are frozen and cached; training uses flips, not rotation. "
                          "beta is chosen per fold on its inner validation split."),
}


#: Notes under the tables on real data.
REAL_NOTES = {
    "table2_comparison": ("Groups 1-3 are frozen and cached; group 4 + classifier train from the cache with the "
                          "four flips as augmentation (continuous rotation cannot be cached). beta is chosen per "
                          "fold on its inner validation split."),
}


def write_phantom_notes(cfg: Config) -> None:
    """Notes under the tables that read differently on the phantom than on real data."""
    for name, text in (PHANTOM_NOTES if cfg.uses_phantom else REAL_NOTES).items():
        write_text(cfg.results_dir / "tables" / f"{name}.notes.md", text + "\n")


def step_table1(cfg: Config, *, progress: bool = True) -> dict[str, Any]:
    """Notebook 02: Table 1's ROI extraction / augmentation configurations, fine-tuned, k-fold CV
    on the profile's cross-validation set (the paper used OMI-DB, which is restricted)."""
    from mammo_lib.repro import paper
    from mammo_lib.protocol.cross_validation import RunSpec, run_cv
    from mammo_lib.data.roi import TABLE1_CONFIGS

    t1 = cfg.section("table1")
    rows = []
    per_fold = []
    from mammo_lib.repro.table2 import imagenet_trunk

    trunk = imagenet_trunk(cfg, progress=progress)
    init = trunk["weights"] or "none"
    for name, (variant, augs) in TABLE1_CONFIGS.items():
        ds = roi_sets(cfg, variant=variant, progress=progress, pretraining=False,
                      size=int(t1.get("roi_size", cfg["roi_size"])))
        tcfg = train_config(cfg, method="finetune", augment=tuple(augs), epochs=int(t1.get("epochs", cfg["train"]["epochs"])))
        res = run_cv(ds.cv, [RunSpec(name, init, tcfg)], run_dir(cfg, "table1"), arch=cfg["arch"],
                     n_splits=int(t1.get("n_splits", 5)), seed=int(cfg["seed"]), test_data=ds.cv_test,
                     imagenet_fallback="error", progress=progress)
        s = res.summary().iloc[0]
        label, acc_paper = paper.TABLE1[name]
        rows.append({"configuration": label, "crop": variant, "augmentation": ", ".join(augs) or "none",
                     "init used": trunk["note"],
                     "accuracy % (ours)": f"{100 * s['acc_mean']:.1f} ± {100 * s['acc_std']:.1f}",
                     "accuracy % (paper, OMI-DB)": acc_paper})
        # committed tables hold no machine paths and no wall-clock times (a rerun reproduces them)
        per_fold.append(res.per_fold.assign(init_used=trunk["note"]).drop(columns=["wall_s"]))
    table = pd.DataFrame(rows)
    write_table(table, "table1", cfg.results_dir)
    write_phantom_notes(cfg)
    write_table(pd.concat(per_fold, ignore_index=True), "table1_per_fold", cfg.results_dir)
    return {"table": table}


# --------------------------------------------------------------------------------------------
# Fig. 4(a), Fig. 6
# --------------------------------------------------------------------------------------------
def pretrained_network(cfg: Config, *, progress: bool = True):
    """The 'pre-trained network' of Fig. 4(a)/Fig. 6: ImageNet weights when available, else the
    profile's stand-in (the report says which)."""
    from mammo_lib.networks.densenet import build_model
    from mammo_lib.repro.table2 import imagenet_trunk

    t = imagenet_trunk(cfg, progress=progress)
    return build_model(cfg["arch"], weights=t["weights"]), t["note"]


def fig6_direction_sentence(summary: pd.DataFrame) -> str:
    """One sentence comparing the direction of Fig. 6 with the paper's, from the ``fig6_summary``
    table (columns ``group`` and ``50%``, the median of d^j per group j; Eq. 4).

    The paper (Fig. 6 caption, Sec. 4.1) says the distance between the ROI's and the mask's
    activation maps increases for subsequent groups. The sentence says whether our medians grow with
    depth (the paper's direction), fall from the shallowest to the deepest group (opposite), or
    neither, and gives the medians.

    >>> t = pd.DataFrame({"group": [1, 2, 3, 4], "50%": [1.40, 1.41, 1.38, 0.99]})
    >>> fig6_direction_sentence(t)[:46]
    'Fig. 6 runs opposite to the paper: the paper s'

    Raises:
        ValueError: a missing column, fewer than 2 groups, a repeated group or a non-finite median.
    """
    missing = [c for c in ("group", "50%") if c not in summary.columns]
    if missing:
        raise ValueError(f"fig6_summary lacks column(s) {missing}; columns are {list(summary.columns)}")
    if summary["group"].duplicated().any():
        raise ValueError(f"fig6_summary repeats group {summary['group'][summary['group'].duplicated()].tolist()[0]!r}")
    t = summary.sort_values("group")
    if len(t) < 2:
        raise ValueError(f"fig6_summary needs at least 2 groups to have a direction, got {len(t)}")
    med = pd.to_numeric(t["50%"], errors="coerce").to_numpy(dtype=float)
    if not np.isfinite(med).all():
        raise ValueError(f"fig6_summary: median (50%) of group {t['group'].tolist()[int(np.flatnonzero(~np.isfinite(med))[0])]!r} "
                         f"is not a finite number")
    groups = [int(g) for g in t["group"]]
    listed = ", ".join(f"d^{g} {m:.2f}" for g, m in zip(groups, med))
    shallow = ", ".join(f"d^{g}" for g in groups[:-1])
    paper = "the paper shows the distance between ROI and mask activations growing with depth (Fig. 6 caption)"
    if (np.diff(med) > 0).all():
        return f"Fig. 6 runs in the paper's direction: the median distances grow with depth ({listed})."
    if med[-1] < med[0]:
        return (f"Fig. 6 runs opposite to the paper: {paper}; ours fall at depth, median {shallow} "
                f"{med[:-1].min():.2f}-{med[:-1].max():.2f} against d^{groups[-1]} {med[-1]:.2f} ({listed}).")
    return (f"Fig. 6 does not follow the paper's direction: {paper}; our medians do not grow steadily "
            f"({listed}).")


def step_distances(cfg: Config, *, progress: bool = True) -> dict[str, Any]:
    """Notebook 04: Eq. 4 distances d^j, j = 1..4, over the training set (Fig. 6) and the activation
    maps at several levels for one example (Fig. 4a)."""
    import torch

    from mammo_lib.repro import figures
    from mammo_lib.networks.activation import GroupActivations, activation_distances, activation_map
    from mammo_lib.networks.densenet import mask_to_model_input, to_model_input

    ds = roi_sets(cfg, progress=progress)
    model, used = pretrained_network(cfg, progress=progress)
    df = activation_distances(model, ds.cv.images, ds.cv.masks, groups=(1, 2, 3, 4),
                              batch_size=32, device=cfg["device"], progress=progress)
    df["log_d_plus_10"] = np.log(df["d"].clip(lower=1e-12)) + 10
    summary = (df.groupby("group")["d"].describe()[["mean", "std", "25%", "50%", "75%"]].reset_index()
               .assign(network=used))
    rd = cfg.results_dir
    write_table(summary, "fig6_summary", rd)
    write_text(rd / "tables" / "fig6_summary.notes.md", fig6_direction_sentence(summary) + "\n")
    fig6 = figures.fig6_distance_distribution(df, network=f"DenseNet ({cfg['arch']}), {used}")
    save_figure(fig6, "fig6_distances", rd)
    # Fig. 4(a): one example (the first malignant mass).
    i = int(np.flatnonzero(ds.cv.labels == 1)[0])
    x = to_model_input(torch.from_numpy(ds.cv.images[i:i + 1]))
    m = mask_to_model_input(torch.from_numpy(ds.cv.masks[i:i + 1]))
    with torch.inference_mode(), GroupActivations(model, groups=(1, 2, 3, 4), mode="eval") as acts:
        model(x)
        maps_roi = {j: activation_map(acts[j])[0].numpy() for j in (1, 2, 3, 4)}
        model(m)
        maps_mask = {j: activation_map(acts[j])[0].numpy() for j in (1, 2, 3, 4)}
    fig4a = figures.fig4_activation_levels(ds.cv.images[i], ds.cv.masks[i], maps_roi, maps_mask)
    save_figure(fig4a, "fig4a_activation_levels", rd)
    return {"distances": df, "summary": summary, "network": used,
            "figures": {"fig6_distances": fig6, "fig4a_activation_levels": fig4a}}


# --------------------------------------------------------------------------------------------
# Significance
# --------------------------------------------------------------------------------------------
def step_significance(cfg: Config, *, progress: bool = True) -> pd.DataFrame:
    """Notebook 06 (see :func:`mammo_lib.repro.table2.step_significance`)."""
    from mammo_lib.repro.table2 import step_significance as _step

    return _step(cfg, progress=progress)


# --------------------------------------------------------------------------------------------
# Fig. 7 and localisation
# --------------------------------------------------------------------------------------------
def fold_model(cfg: Config, spec: str, fold: int):
    """The model selected on the inner validation split for ``spec`` and ``fold`` (Table 2 runs,
    the profile's main condition; see :func:`mammo_lib.repro.table2.fold_model`)."""
    from mammo_lib.repro.table2 import fold_model as _fold_model

    return _fold_model(cfg, spec, fold)


def table2_run(cfg: Config, *, progress: bool = True):
    """Table 2's instrument result and trunks (run on first use, read back after)."""
    from mammo_lib.repro.table2 import run

    return run(cfg, progress=progress)


def group4_maps(model, images: np.ndarray, *, batch_size: int = 32, device: str = "cpu") -> np.ndarray:
    """F^4 (Eq. 3) for every ROI, (N, g, g), under inference mode; the model's mode and device restored."""
    import torch

    from mammo_lib.networks.activation import GroupActivations, activation_map
    from mammo_lib.networks.densenet import on_device, to_model_input

    out = []
    with on_device(model, device), torch.inference_mode(), GroupActivations(model, groups=(4,), mode="eval") as acts:
        for s in range(0, len(images), batch_size):
            model(to_model_input(torch.from_numpy(images[s:s + batch_size]).to(device)))
            out.append(activation_map(acts[4]).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 1, 1), np.float32)


def step_localization(cfg: Config, *, progress: bool = True) -> dict[str, Any]:
    """Notebook 07: Fig. 7 overlays (fine-tune vs transfer) and, beyond the paper, the share of
    group-4 activation energy on the mass and on the planted confounders, per test fold."""
    from mammo_lib.repro import figures
    from mammo_lib.explain.localization import localization_table, summarize_localization
    from mammo_lib.protocol.cross_validation import make_folds

    from mammo_lib.repro.table2 import run_design

    ds = roi_sets(cfg, progress=progress)
    fold_seed = run_design(cfg, progress=progress).default[1]  # fold_model's replicate
    test = ds.cv_test if ds.cv_test is not None else ds.cv
    folds = make_folds(ds.cv.labels, ds.cv.groups, n_splits=int(cfg.section("cv")["n_splits"]),
                       seed=int(cfg["seed"]) + fold_seed)
    tables, maps = [], {}
    for spec in TABLE2_SPECS:
        parts = []
        spec_maps = np.zeros((len(ds.cv),) + (1, 1), np.float32)
        for k in sorted(set(folds.tolist())):
            idx = np.flatnonzero(folds == k)
            ids = ds.cv.index["case_id"].to_numpy()[idx]
            t = test.by_case_ids(list(ids))
            fm = group4_maps(fold_model(cfg, spec, k), t.images, device=cfg["device"])
            if spec_maps.shape[1:] != fm.shape[1:]:
                spec_maps = np.zeros((len(ds.cv),) + fm.shape[1:], np.float32)
            spec_maps[idx] = fm
            parts.append(localization_table(fm, t.masks, t.confounders, list(ids)).assign(fold=k))
        maps[spec] = spec_maps
        tables.append(pd.concat(parts, ignore_index=True).assign(spec=spec))
    per_case = pd.concat(tables, ignore_index=True)
    summary = pd.concat([summarize_localization(g).assign(spec=s) for s, g in per_case.groupby("spec", sort=False)],
                        ignore_index=True)
    rd = cfg.results_dir
    write_table(per_case, "localization_per_case", rd)
    write_table(summary, "localization_summary", rd)
    # Fig. 7: two benign and two malignant test cases (with a confounder where there is one),
    # fine-tune vs transfer from the DDSM rows, with each model's prediction.
    from mammo_lib.repro.table2 import spec_label

    res, trunks = table2_run(cfg, progress=False)
    tfull = test.by_case_ids(list(ds.cv.index["case_id"]))
    case_ids = ds.cv.index["case_id"].to_numpy()
    has_conf = ((tfull.confounders > 0).any(axis=(1, 2)) if tfull.confounders is not None
                else np.zeros(len(case_ids), bool))
    pick = []
    for cls in (0, 1):
        order = np.flatnonzero(ds.cv.labels == cls)
        order = np.concatenate([order[has_conf[order]], order[~has_conf[order]]])
        pick += order[:2].tolist()
    cond = res.conditions[-1]
    pr = res.predictions[(res.predictions["condition"] == cond.name) & res.predictions["primary"]]
    pred_of = {sp: dict(zip(g["case_id"].astype(str), g["pred"])) for sp, g in pr.groupby("spec")}
    name = {0: "benign", 1: "malignant"}
    ch = res.choices[(res.choices["condition"] == cond.name) & (res.choices["init"] == "ddsm")]
    beta_of = dict(zip(ch["fold"].astype(int), ch["beta"].astype(float)))
    fig = figures.fig7_overlays(
        tfull.images[pick], tfull.masks[pick], maps["ddsm_finetune"][pick], maps["ddsm_transfer"][pick],
        labels=("fine-tune", "knowledge transfer"), ids=list(case_ids[pick]),
        confounders=None if tfull.confounders is None else tfull.confounders[pick],
        true_labels=[name[int(ds.cv.labels[i])] for i in pick],
        predictions=[(name[int(pred_of["ddsm_finetune"][str(case_ids[i])])],
                      name[int(pred_of["ddsm_transfer"][str(case_ids[i])])]) for i in pick],
        betas=[beta_of[int(folds[i])] for i in pick] if all(int(folds[i]) in beta_of for i in pick) else None,
        title=f"Fig. 7: group-4 maps of the {spec_label('ddsm_finetune', trunks).rsplit(',', 1)[0]} models, "
              f"condition {cond.name}, test fold of each case ({cond.primary} rendering)")
    save_figure(fig, "fig7_overlays", rd)
    return {"per_case": per_case, "summary": summary, "figures": {"fig7_overlays": fig}}


# --------------------------------------------------------------------------------------------
# Interpretability: Figs. 5, 8, 9
# --------------------------------------------------------------------------------------------
def step_interpretability(cfg: Config, *, progress: bool = True) -> dict[str, Any]:
    """Notebook 08: the proposed Lesion/Background explanation (Eq. 6) with Grad-CAM, HiResCAM, the
    GLCM/deep-feature correlation and k-NN explanations beside it (Figs. 5, 8, 9), and its cost."""
    from mammo_lib.repro import figures
    from mammo_lib.explain.cam import cam_map
    from mammo_lib.explain.eq6 import explain_roi, lesion_background
    from mammo_lib.explain.glcm import glcm_feature_table
    from mammo_lib.explain.knn import feature_correlation, knn_explain, penultimate_features
    from mammo_lib.protocol.cross_validation import make_folds

    ex = cfg.section("explain")
    from mammo_lib.repro.table2 import run_design

    ds = roi_sets(cfg, progress=progress)
    fold_seed = run_design(cfg, progress=progress).default[1]  # fold_model's replicate
    test = ds.cv_test if ds.cv_test is not None else ds.cv
    folds = make_folds(ds.cv.labels, ds.cv.groups, n_splits=int(cfg.section("cv")["n_splits"]),
                       seed=int(cfg["seed"]) + fold_seed)
    te_idx, tr_idx = np.flatnonzero(folds == 0), np.flatnonzero(folds != 0)
    ids = ds.cv.index["case_id"].to_numpy()
    t = test.by_case_ids(list(ids[te_idx]))
    model_kt = fold_model(cfg, "ddsm_transfer", 0)
    model_ft = fold_model(cfg, "ddsm_finetune", 0)
    labels = t.labels
    chosen = [int(np.flatnonzero(labels == c)[0]) for c in (0, 1) if (labels == c).any()][: int(ex.get("n_cases", 2))]
    rd = cfg.results_dir
    # The explanation's sanity table; the Background rule is the fixed default (docs/DECISIONS.md).
    sanity, rule = explanation_sanity_step(cfg, t, model_kt, model_ft, progress=progress)
    timings = []
    cases = []
    figs: dict[str, Any] = {}  # name -> matplotlib Figure, also written as figures/<name>.png
    train_feats = penultimate_features(model_kt, ds.cv.images[tr_idx], device=cfg["device"])
    test_feats = penultimate_features(model_kt, t.images, device=cfg["device"])
    glcm_df = glcm_feature_table(t.images)
    corr = feature_correlation(glcm_df, test_feats, top=10)
    write_table(corr.reset_index() if corr.index.name else corr, "fig8b_correlation", rd)
    # Fig. 8(b) per class: the correlation over the test ROIs of the explained case's class.
    corr_by_class = {cls: feature_correlation(glcm_df[labels == cls].reset_index(drop=True),
                                              test_feats[labels == cls], top=10)
                     for cls in (0, 1) if (labels == cls).sum() > 2}
    for c in chosen:
        roi, mask = t.images[c], t.masks[c]
        t0 = time.perf_counter()
        expl = explain_roi(model_kt, roi, batch_size=int(ex.get("batch_size", 33)), device=cfg["device"],
                           background_rule=rule)
        dt = time.perf_counter() - t0
        timings.append({"case_id": ids[te_idx][c], "label": int(labels[c]), "forward passes": 1 + 2 * expl.grid ** 2,
                        "seconds": round(dt, 3), "roi size": roi.shape[0], "arch": cfg["arch"], "device": cfg["device"]})
        expl.to_json(rd / "explanations" / f"{ids[te_idx][c]}.json")
        lesion, background = lesion_background(roi, background_rule=rule)
        kind = "benign" if labels[c] == 0 else "malignant"
        figs[f"fig5_lesion_background_{kind}"] = fig5 = figures.fig5_lesion_background(
            roi, lesion, background, expl, mask=mask, true_label=kind, background_rule=rule,
            model="DDSM-initialised knowledge-transfer model, fold 0")
        save_figure(fig5, f"fig5_lesion_background_{kind}", rd)
        # At norm5 (pytorch-grad-cam's usual DenseNet layer) Grad-CAM and HiResCAM differ; after the
        # final ReLU they coincide for global-average-pooling + one linear layer.
        cam = cam_map(model_kt, roi[None], method="gradcam", target_layer="norm5", device=cfg["device"])[0]
        hires = cam_map(model_kt, roi[None], method="hirescam", target_layer="norm5", device=cfg["device"])[0]
        knn = knn_explain(test_feats[c:c + 1], train_feats, ds.cv.labels[tr_idx], k=int(ex.get("knn_k", 5)),
                          train_ids=list(ids[tr_idx]))
        knn_rois = ds.cv.images[tr_idx][knn["train_index"].to_numpy()]
        fig = figures.fig8_panels(roi, cam, corr_by_class.get(int(labels[c]), corr), knn, knn_rois, expl, mask=mask,
                                  hirescam=hires, true_label=kind,
                                  model="DDSM-initialised knowledge-transfer model, fold 0")
        figs[f"fig8_panels_{kind}"] = fig
        save_figure(fig, f"fig8_panels_{kind}", rd)
        ft_map = group4_maps(model_ft, roi[None], device=cfg["device"])[0]
        kt_map = group4_maps(model_kt, roi[None], device=cfg["device"])[0]
        cases.append({"roi": roi, "mask": mask, "maps_ft": ft_map, "maps_kt": kt_map, "explanation": expl,
                      "label": int(labels[c]), "prediction": expl.predicted_label, "lesion": lesion,
                      "background": background, "kind": kind})
    # Fig. 9: the framework drawn from one real case (the malignant one), and the explanation grid.
    f9 = cases[-1]
    figs["fig9_framework"] = figures.fig9_framework(f9["roi"], f9["lesion"], f9["background"], f9["explanation"],
                                                    mask=f9["mask"], true_label=f9["kind"], background_rule=rule)
    save_figure(figs["fig9_framework"], "fig9_framework", rd)
    figs["explanation_grid"] = figures.explanation_grid(cases, labels=("fine-tune", "knowledge transfer"),
                                                        title="DDSM-initialised models, fold 0 (explanations of "
                                                              "the knowledge-transfer model)")
    save_figure(figs["explanation_grid"], "explanation_grid", rd)
    timing = pd.DataFrame(timings)
    write_table(timing, "explain_timing", rd)
    agreement = explanation_agreement(cfg, t, n=int(ex.get("n_agreement", 40)), background_rule=rule)
    write_table(agreement, "explanation_agreement", rd)
    return {"timing": timing, "cases": cases, "correlation": corr, "agreement": agreement, "sanity": sanity,
            "rule": rule, "figures": figs}


def initial_network(cfg: Config, spec: str):
    """The network ``spec``'s runs start from (the pre-trained trunk, its group 4 not yet trained for
    the task; the teacher of knowledge transfer), built as :func:`mammo_lib.repro.table2.fold_model` builds
    a run's model before loading its trained head."""
    from mammo_lib.networks.densenet import build_model

    _, trunks = table2_run(cfg, progress=False)
    init = "imagenet" if spec == "mask_only" else spec.split("_")[0]
    return build_model(cfg["arch"], weights=trunks[init]["weights"], seed=int(cfg["seed"]),
                       head=cfg.section("train").get("head", "gap"))


def explanation_sanity_step(cfg: Config, test: Any, model_kt: Any, model_ft: Any, *,
                            progress: bool = True) -> tuple[pd.DataFrame, str]:
    """Notebook 08's sanity table of the Eq. 6 explanation (``tables/explanation_sanity``) over the
    first ``explain.n_sanity`` test ROIs of fold 0: per Background rule the checks of
    :func:`mammo_lib.explain.sanity.explanation_sanity` on the DDSM knowledge-transfer model, with the
    trunk-only read-out (its initial network, :func:`initial_network`) and the fine-tuned model of
    the same fold and trunk as baselines (for the default rule only: each costs one explanation per
    ROI and rule). Returns the table and the rule the figures use: the fixed
    default :data:`mammo_lib.explain.eq6.DEFAULT_BACKGROUND_RULE` (``docs/DECISIONS.md``). Where no rule
    passes, ``tables/explanation_sanity.notes.md`` says the explanation is not evidence."""
    from mammo_lib.explain.eq6 import DEFAULT_BACKGROUND_RULE
    from mammo_lib.explain.sanity import explanation_sanity

    ex = cfg.section("explain")
    rd = cfg.results_dir
    n = min(int(ex.get("n_sanity", ex.get("n_agreement", 40))), len(test))
    sanity = explanation_sanity(model_kt, test.images[:n], test.masks[:n], random_seed=int(cfg["seed"]),
                                batch_size=int(ex.get("batch_size", 33)), device=cfg["device"], progress=progress,
                                initial_model=initial_network(cfg, "ddsm_transfer"), other_model=model_ft,
                                baseline_rules=(DEFAULT_BACKGROUND_RULE,))
    rule = DEFAULT_BACKGROUND_RULE
    write_table(sanity, "explanation_sanity", rd)
    notes = rd / "tables" / "explanation_sanity.notes.md"
    d = sanity[sanity["rule"] == rule]
    base = ""
    if len(d):
        r = d.iloc[0]
        base = (f" Baselines for `{rule}`: the trained model's labels agree {r['trunk_label_agreement']:.2f} "
                f"(kappa {r['trunk_kappa']:.2f}) with its own initial network (group 4 not trained), "
                f"{r['other_model_label_agreement']:.2f} (kappa {r['other_model_kappa']:.2f}) with the "
                f"fine-tuned model on the same trunk, {r['random_net_label_agreement']:.2f} (kappa "
                f"{r['random_net_kappa']:.2f}) with group 4 re-initialised.")
    if not sanity.attrs.get("any_passes", False):
        write_text(notes, f"**No Background rule passes the sanity checks** on these models, so the Eq. 6 "
                          f"explanation is not evidence of what the model uses. The figures use "
                          f"the default complementary split `{rule}`.{base}\n")
    else:
        passing = ", ".join(f"`{x}`" for x in sanity.loc[sanity["passes"], "rule"])
        write_text(notes, f"Rules that pass the sanity checks: {passing}. The figures use the default "
                          f"complementary split `{rule}`"
                          + ("." if rule in set(sanity.loc[sanity["passes"], "rule"]) else
                             ", which does not pass: its explanation is not evidence.") + f"{base}\n")
    return sanity, rule


def explanation_agreement(cfg: Config, test: Any, *, n: int = 40, background_rule: str | None = None) -> pd.DataFrame:
    """Beyond the paper: over the first ``n`` test ROIs of fold 0, how often the Eq. 6 label is
    *Lesion* on cells covering the mass vs elsewhere, for each Table 2 model of that fold."""
    from mammo_lib.explain.eq6 import explain_roi, lesion_agreement

    ex = cfg.section("explain")
    rows = []
    for spec in TABLE2_SPECS:
        model = fold_model(cfg, spec, 0)
        per = [lesion_agreement(explain_roi(model, test.images[i], batch_size=int(ex.get("batch_size", 33)),
                                            device=cfg["device"], background_rule=background_rule), test.masks[i])
               for i in range(min(n, len(test)))]
        df = pd.DataFrame(per)
        rows.append({"spec": spec, "background rule": background_rule, "ROIs": len(df),
                     "P(Lesion | mass cell)": round(float(df["p_lesion_on_mass"].mean()), 3),
                     "P(Lesion | other cell)": round(float(df["p_lesion_off_mass"].mean()), 3),
                     "Lesion fraction": round(float(df["lesion_fraction"].mean()), 3)})
    return pd.DataFrame(rows)
