"""Notebook 02, Table 1: the ROI extraction / augmentation configurations under k-fold cross-validation."""
from __future__ import annotations

from typing import Any

import pandas as pd

from mammo_lib.repro.config import Config
from mammo_lib.repro.datasets import roi_sets
from mammo_lib.repro.report import write_phantom_notes, write_table
from mammo_lib.repro.runtime import run_dir, train_config
from mammo_lib.repro.table2 import imagenet_trunk


def step_table1(cfg: Config, *, progress: bool = True) -> dict[str, Any]:
    """Notebook 02: Table 1's ROI extraction / augmentation configurations, fine-tuned, k-fold CV
    on the profile's cross-validation set (the paper used OMI-DB, which is restricted)."""
    from mammo_lib.repro import paper
    from mammo_lib.protocol.cross_validation import RunSpec, run_cv
    from mammo_lib.data.roi import TABLE1_CONFIGS

    t1 = cfg.section("table1")
    rows = []
    per_fold = []

    trunk = imagenet_trunk(cfg, progress=progress)
    init = trunk["weights"] or "none"
    for name, (variant, augs) in TABLE1_CONFIGS.items():
        ds = roi_sets(cfg, variant=variant, progress=progress, pretraining=False,
                      size=int(t1.get("roi_size") or cfg["roi_size"]))
        tcfg = train_config(cfg, method="finetune", augment=tuple(augs), epochs=int(t1.get("epochs") or cfg["train"]["epochs"]))
        res = run_cv(ds.cv, [RunSpec(name, init, tcfg)], run_dir(cfg, "table1"), arch=cfg["arch"],
                     n_splits=int(t1["n_splits"]), seed=int(cfg["seed"]), test_data=ds.cv_test,
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
