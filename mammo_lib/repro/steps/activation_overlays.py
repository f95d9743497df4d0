"""Notebook 07, Fig. 7 and localisation scores of the group-4 activation maps."""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from mammo_lib.repro.config import Config
from mammo_lib.repro.datasets import roi_sets
from mammo_lib.repro.report import save_figure, write_table
from mammo_lib.networks.activation import group4_maps
from mammo_lib.repro.table2 import TABLE2_SPECS, fold_model, run as table2_run, run_design, spec_label


def step_localization(cfg: Config, *, progress: bool = True) -> dict[str, Any]:
    """Notebook 07: Fig. 7 overlays (fine-tune vs transfer) and, beyond the paper, the share of
    group-4 activation energy on the mass and on the planted confounders, per test fold."""
    from mammo_lib.repro import figures
    from mammo_lib.explain.localization import localization_table, summarize_localization
    from mammo_lib.protocol.cross_validation import make_folds


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
