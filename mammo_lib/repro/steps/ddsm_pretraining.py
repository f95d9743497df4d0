"""Notebook 03, pre-training: both trunks of every trunk seed, their test accuracy and their gate."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from mammo_lib.repro.config import Config
from mammo_lib.repro.datasets import roi_sets
from mammo_lib.repro.report import write_table
from mammo_lib.repro.table2 import trunk_seeds, trunk_table, trunks_of


def step_pretrain(cfg: Config, *, progress: bool = True) -> dict[str, Any]:
    """Notebook 03: both trunks of every trunk seed, their own test accuracy and their gate (Fig. 6
    distances included): tables ``trunk_gate`` (= ``table2_trunks`` before the instrument adds the
    calibration gate) and ``pretraining`` (one row per DDSM trunk)."""

    ds = roi_sets(cfg, progress=progress)
    by_seed = {t: trunks_of(cfg, t, progress=progress) for t in trunk_seeds(cfg)}
    gate = trunk_table(by_seed)
    write_table(gate, "trunk_gate", cfg.results_dir)
    rows = []
    for t, trunks in by_seed.items():
        dd = trunks["ddsm"]
        m = dict(dd["result"].metrics)
        rows.append({"seed": t, "init": dd["note"], "train masses": len(ds.pre_train), "test masses": len(ds.pre_test),
                     "best epoch": m.get("best_epoch"), "epochs run": m.get("epochs_run"),
                     "test accuracy %": round(100 * m["accuracy"], 1),
                     "test AUC": round(m.get("auc", float("nan")), 3),
                     "sensitivity %": round(100 * m["sensitivity"], 1),
                     "specificity %": round(100 * m["specificity"], 1), "passes its gate": bool(dd["gate"]["passes"])})
    table = pd.DataFrame(rows)
    write_table(table, "pretraining", cfg.results_dir)
    first = by_seed[trunk_seeds(cfg)[0]]
    return {"table": table, "gate": gate, "checkpoint": Path(first["ddsm"]["weights"]), "trunks": first,
            "trunks_by_seed": by_seed}
