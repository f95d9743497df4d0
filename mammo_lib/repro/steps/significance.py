"""Notebook 06, significance: knowledge transfer vs fine-tuning per condition (Sec. 5.1)."""
from __future__ import annotations


import numpy as np
import pandas as pd

from mammo_lib.repro.config import Config
from mammo_lib.repro.report import write_table
from mammo_lib.repro.table2 import run as table2_run


def step_significance(cfg: Config, *, progress: bool = True) -> pd.DataFrame:
    """Notebook 06: per condition, KT vs fine-tune (and vs the shuffled teacher): the paired t-test
    over folds (the one test consistent with the paper's p-values), Wilcoxon, McNemar over pooled
    lesions, bootstrap CI."""
    from mammo_lib.repro import paper
    from mammo_lib.metrics.stats import significance_table

    res, _ = table2_run(cfg, progress=progress)
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
