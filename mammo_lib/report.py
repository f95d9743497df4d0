"""Writing results: tables as CSV + Markdown, figures as PNG, and ``REPORT.md`` with our
numbers beside the paper's."""
from __future__ import annotations

import json
import os
import platform
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from . import paper


def atomic_write_text(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file and ``os.replace`` (no partial files)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json(path: Path, obj: Any) -> Path:
    """Write ``obj`` as indented JSON atomically (numpy scalars and arrays allowed)."""
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def markdown_table(df: pd.DataFrame, floatfmt: str = ".3g") -> str:
    """A GitHub Markdown table (no optional dependency on ``tabulate``)."""
    def fmt(v: Any) -> str:
        if isinstance(v, (float, np.floating)):
            return "" if np.isnan(v) else format(float(v), floatfmt)
        return str(v).replace("|", "\\|").replace("\n", " ")
    cols = [str(c).replace("|", "\\|") for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for row in df.itertuples(index=False):
        lines.append("| " + " | ".join(fmt(v) for v in row) + " |")
    return "\n".join(lines) + "\n"


def write_table(df: pd.DataFrame, name: str, results_dir: Path, *, floatfmt: str = ".3g") -> dict[str, Path]:
    """Write ``tables/<name>.csv`` and ``tables/<name>.md`` under ``results_dir``."""
    tdir = Path(results_dir) / "tables"
    csv = atomic_write_text(tdir / f"{name}.csv", df.to_csv(index=False))
    md = atomic_write_text(tdir / f"{name}.md", markdown_table(df, floatfmt))
    return {"csv": csv, "md": md}


def read_table(name: str, results_dir: Path) -> pd.DataFrame | None:
    """``tables/<name>.csv`` under ``results_dir``, or None when it was not produced."""
    p = Path(results_dir) / "tables" / f"{name}.csv"
    return pd.read_csv(p) if p.exists() else None


def save_figure(fig: Any, name: str, results_dir: Path, dpi: int = 150) -> Path:
    """Save a matplotlib figure as ``figures/<name>.png`` atomically and close it."""
    import matplotlib.pyplot as plt

    from .figures import save_figure as save_png

    try:
        return save_png(fig, Path(results_dir) / "figures" / f"{name}.png", dpi=dpi)
    finally:
        plt.close(fig)


def environment_info(device: str = "cpu") -> dict[str, Any]:
    """Package versions, platform and device, for the report's provenance section."""
    import importlib.metadata as md

    import torch

    pkgs = {}
    for name in ("mammo-kt", "torch", "torchvision", "numpy", "pandas", "scipy", "scikit-image",
                 "scikit-learn", "pydicom", "grad-cam", "papermill"):
        try:
            pkgs[name] = md.version(name)
        except md.PackageNotFoundError:
            pkgs[name] = "not installed"
    dev = device
    if device.startswith("cuda") and torch.cuda.is_available():
        dev = f"{device} ({torch.cuda.get_device_name(0)})"
    elif device == "cpu":
        dev = f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads)"
    return {"python": platform.python_version(), "platform": platform.platform(), "device": dev,
            "packages": pkgs, "generated": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}


def _pct(x: float) -> str:
    return "n/a" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{100 * x:.1f}"


def _cm(v: Any) -> str:
    a = np.asarray(v).reshape(2, 2).astype(int)
    return f"[[{a[0, 0]}, {a[0, 1]}], [{a[1, 0]}, {a[1, 1]}]]"


def table2_comparison(summary: pd.DataFrame) -> pd.DataFrame:
    """Our Table 2 (summary per spec from ``CVResult.summary()``-like frames) beside the paper's."""
    rows = []
    by_spec = {r["spec"]: r for _, r in summary.iterrows()}
    for spec, (pm, ps, pcm) in paper.TABLE2.items():
        pre, meth = paper.TABLE2_LABELS[spec]
        r = by_spec.get(spec)
        rows.append({
            "pre-training": pre, "method": meth,
            "init used": "" if r is None else r.get("init_used", ""),
            "accuracy % (ours)": "n/a" if r is None else f"{_pct(r['acc_mean'])} ± {_pct(r['acc_std'])}",
            "accuracy % (paper)": f"{pm} ± {ps}",
            "confusion (ours)": "n/a" if r is None else _cm([r["tn"], r["fp"], r["fn"], r["tp"]]),
            "confusion (paper)": _cm(pcm),
        })
    return pd.DataFrame(rows)


def headline(results_dir: Path) -> str:
    """A few sentences computed from the tables: does knowledge transfer beat fine-tuning here,
    and does it move the group-4 activation onto the mass?"""
    summ = read_table("table2_summary", results_dir)
    if summ is None:
        return "## Summary\n\n_Table 2 not produced in this run._\n"
    s = summ.set_index("spec")
    loc = read_table("localization_summary", results_dir)
    lines = ["## Summary\n"]
    for pre in ("imagenet", "ddsm"):
        ft, kt = f"{pre}_finetune", f"{pre}_transfer"
        if ft not in s.index or kt not in s.index:
            continue
        d = 100 * (s.loc[kt, "acc_mean"] - s.loc[ft, "acc_mean"])
        pm, _, _ = paper.TABLE2[kt]
        pf, _, _ = paper.TABLE2[ft]
        txt = (f"- **{'ImageNet' if pre == 'imagenet' else 'DDSM'} rows**: knowledge transfer "
               f"{100 * s.loc[kt, 'acc_mean']:.1f} % vs fine-tune {100 * s.loc[ft, 'acc_mean']:.1f} % "
               f"({d:+.1f} points; paper {pm - pf:+.1f}).")
        if loc is not None and "spec" in loc:
            ls = loc.set_index("spec")
            if ft in ls.index and kt in ls.index:
                txt += (f" Share of group-4 activation energy inside the mass: {ls.loc[kt, 'mean_share_mass']:.3f} "
                        f"vs {ls.loc[ft, 'mean_share_mass']:.3f}; pointing game {100 * ls.loc[kt, 'pointing_accuracy']:.0f} % "
                        f"vs {100 * ls.loc[ft, 'pointing_accuracy']:.0f} %.")
        lines.append(txt)
    if "mask_only" in s.index:
        lines.append(f"- A model trained on binary masks alone reaches {100 * s.loc['mask_only', 'acc_mean']:.1f} % "
                     f"(paper, Fig. 4b: {paper.FIG4_ACCURACY['mask_only']} %).")
    notes = Path(results_dir) / "tables" / "summary.notes.md"
    if notes.exists():
        lines.append("\n" + notes.read_text())
    return "\n".join(lines) + "\n"


def build_report(results_dir: Path, provenance: Mapping[str, Any]) -> str:
    """Assemble ``REPORT.md`` from the tables the notebooks wrote (missing ones are said to be missing)."""
    rd = Path(results_dir)
    out: list[str] = []
    prof = provenance.get("profile", "?")
    out.append(f"# mammo-kt reproduction report ({prof} profile)\n")
    out.append("Li et al., *An interpretable CNN-based model for mass classification in mammography*, "
               "Knowledge-Based Systems 316 (2025) 113372. Our numbers beside the paper's.\n")
    if provenance.get("phantom"):
        out.append("> **Data: the built-in synthetic phantom, not real mammograms.** Our numbers test the "
                   "pipeline and the method's claim on data with a known confounder; they are not "
                   "estimates of the paper's BCDR/CBIS-DDSM results. Run the `full` profile on the real "
                   "datasets for those. What the phantom taught us about the method (why knowledge transfer "
                   "moves the activation onto the mass without changing accuracy here, and the intensity-"
                   "scaling leak we fixed): `docs/FINDINGS_phantom_kt.md`.\n")

    out.append(headline(rd))
    sections = [
        ("Datasets", "datasets", None),
        ("Exclusions", "exclusions_summary", "Every case left out, with its reason, is in `tables/exclusions.csv`."),
        ("Table 1: ROI extraction and augmentation (paper: OMI-DB)", "table1", None),
        ("DDSM pre-training stage", "pretraining", None),
        ("Knowledge-transfer weight beta (chosen on the inner validation split)", "beta_selection", None),
        ("Table 2: fine-tune vs knowledge transfer", "table2_comparison", None),
        ("Fig. 4(b): mask-only vs ROI-only models", "fig4b", None),
        ("Significance of knowledge transfer vs fine-tune", "significance",
         "The paper's test is unnamed. With five folds the Wilcoxon signed-rank test cannot go below "
         "p = 0.0625, so the paper's p-values can only come from a test over folds with a parametric "
         "assumption (paired t-test) or over lesions (McNemar). Per fold: `tables/table2_per_fold.csv`; "
         "all statistics: `tables/significance_full.csv`."),
        ("Fig. 6: activation distances d^j (pre-trained network)", "fig6_summary", None),
        ("Beyond the paper: where the models look (group-4 activation energy)", "localization_summary", None),
        ("Beyond the paper: do the Lesion cells of Eq. 6 lie on the mass?", "explanation_agreement",
         "A cell is a mass cell when at least a quarter of its window lies in the mask. An explanation "
         "that follows the lesion labels mass cells *Lesion* more often than the others."),
        ("Explanation timing", "explain_timing", None),
    ]
    for title, name, note in sections:
        df = read_table(name, rd)
        out.append(f"## {title}\n")
        if df is None:
            out.append("_not produced in this run_\n")
            continue
        out.append(markdown_table(df))
        if note:
            out.append(note + "\n")
        notes_file = rd / "tables" / f"{name}.notes.md"
        if notes_file.exists():
            out.append(notes_file.read_text() + "\n")

    figs = sorted((rd / "figures").glob("*.png")) if (rd / "figures").exists() else []
    out.append("## Figures\n")
    for f in figs:
        out.append(f"- [{f.stem}](figures/{f.name})")
    out.append("")
    out.append("## Provenance\n")
    prov = dict(provenance)
    env = prov.pop("environment", {})
    for k, v in prov.items():
        out.append(f"- **{k}**: {json.dumps(v, default=str) if isinstance(v, (dict, list)) else v}")
    for k, v in env.items():
        out.append(f"- **{k}**: {json.dumps(v) if isinstance(v, dict) else v}")
    out.append("")
    return "\n".join(out)


def data_fingerprint(cfg: Any) -> dict[str, str]:
    """sha256 of ``data_manifest.csv`` and, for the phantom, of its generated case tables."""
    import hashlib

    out = {}
    man = Path(cfg.root) / "data_manifest.csv"
    if man.exists():
        out["data_manifest.csv"] = hashlib.sha256(man.read_bytes()).hexdigest()[:16]
    if cfg.uses_phantom:
        for p in sorted((cfg.work_dir / "phantom").glob("*/cases*.csv")):
            out[f"phantom/{p.parent.name}/{p.name}"] = hashlib.sha256(p.read_bytes()).hexdigest()[:16]
    return out


def write_report(cfg: Any) -> Path:
    """Write ``REPORT.md`` (and ``provenance.json``) in the profile's results folder."""
    timings_file = cfg.work_dir / "executed" / "timings.json"
    timings = json.loads(timings_file.read_text()) if timings_file.exists() else {}
    prov = {
        "profile": cfg.name,
        "phantom": cfg.uses_phantom,
        "data_root": str(cfg.data_root) if cfg.data_root else "built-in phantom",
        "arch": cfg["arch"], "roi size": cfg["roi_size"],
        "seed": cfg["seed"],
        "data fingerprint": data_fingerprint(cfg),
        "wall time per notebook, latest execution (s)": timings or "n/a (notebooks run by hand)",
        "total wall time (s)": round(sum(timings.values()), 1) if timings else "n/a",
        "environment": environment_info(cfg["device"]),
    }
    write_json(cfg.results_dir / "provenance.json", prov)
    return atomic_write_text(cfg.results_dir / "REPORT.md", build_report(cfg.results_dir, prov))
