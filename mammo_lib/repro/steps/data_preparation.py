"""Notebook 01, data preparation: the profile's datasets, their ROIs, counts, exclusions and Fig. 2."""
from __future__ import annotations

from typing import Any

import pandas as pd

from mammo_lib.repro.config import Config
from mammo_lib.repro.datasets import dataset_table, roi_sets
from mammo_lib.repro.report import save_figure, write_table


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
    case = load_record(rec, intensity=cfg["intensity"])
    fig = figures.fig2_roi_contexts(case.image, case.mask, min_context=int(cfg["min_context"]),
                                    size=int(cfg["roi_size"]))
    save_figure(fig, "fig2_roi_contexts", rd)
    return {"datasets": ds, "counts": counts, "exclusions": ds.exclusions, "exclusions_summary": summ,
            "figures": {"fig2_roi_contexts": fig}}
