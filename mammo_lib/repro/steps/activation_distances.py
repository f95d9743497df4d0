"""Notebook 04, Fig. 4(a) and Fig. 6: activation levels and the mask-to-ROI activation distances (Eq. 4)."""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from mammo_lib.repro.config import Config
from mammo_lib.repro.datasets import roi_sets
from mammo_lib.repro.report import save_figure, write_table
from mammo_lib.repro.table2 import imagenet_trunk
from mammo_lib.utils.files import write_text


def pretrained_network(cfg: Config, *, progress: bool = True):
    """The 'pre-trained network' of Fig. 4(a)/Fig. 6: ImageNet weights when available, else the
    profile's stand-in (the report says which)."""
    from mammo_lib.networks.densenet import build_model

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
