"""Writing results: tables as CSV + Markdown, figures as PNG, and ``REPORT.md`` with our
numbers beside the paper's."""
from __future__ import annotations

import json
import os
import platform
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

import numpy as np

import pandas as pd

from mammo_lib.repro import paper
from mammo_lib.repro.config import Config
from mammo_lib.utils.files import save_figure as save_png
from mammo_lib.utils.files import write_csv, write_json, write_text


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
    csv = write_csv(tdir / f"{name}.csv", df)
    md = write_text(tdir / f"{name}.md", markdown_table(df, floatfmt))
    return {"csv": csv, "md": md}


def read_table(name: str, results_dir: Path) -> pd.DataFrame | None:
    """``tables/<name>.csv`` under ``results_dir``, or None when it was not produced."""
    p = Path(results_dir) / "tables" / f"{name}.csv"
    return pd.read_csv(p) if p.exists() else None


def save_figure(fig: Any, name: str, results_dir: Path, dpi: int = 150) -> Path:
    """Save a matplotlib figure as ``figures/<name>.png`` atomically and close it."""
    import matplotlib.pyplot as plt

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
    from mammo_lib.numerics import describe
    from mammo_lib.utils.precision import current

    return {"python": platform.python_version(), "platform": platform.platform(), "device": dev,
            "numerics (CPU kernels; docs/DECISIONS.md)": describe(),
            "float precision (profile key precision)": current(),
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
    """The summary: the calibration gate first, then per condition and initialisation what
    knowledge transfer did (sentences written by the Table 2 step, ``tables/summary.notes.md``)."""
    notes = Path(results_dir) / "tables" / "summary.notes.md"
    lines = ["## Summary\n"]
    if not notes.exists():
        return "## Summary\n\n_Table 2 not produced in this run._\n"
    lines.append(notes.read_text())
    mask = read_table("fig4b", results_dir)
    if mask is not None and len(mask):
        lines.append(f"- A model trained on binary masks alone reaches {mask.iloc[0]['accuracy % (ours)']} % "
                     f"(paper, Fig. 4b: {paper.FIG4_ACCURACY['mask_only']} %).")
    sanity = read_table("explanation_sanity", results_dir)
    if sanity is not None and len(sanity):
        d = sanity[sanity["default"].astype(str).str.lower() == "true"]
        if len(d):
            r = d.iloc[0]
            ok = str(r["passes"]).lower() == "true"
            others = (sanity["passes"].astype(str).str.lower() == "true").any()
            lines.append(f"- Lesion/Background explanation (Eq. 6): default Background rule `{r['rule']}`; "
                         f"pixel-change agreement {float(r['pixel_change_agreement']):.2f}, label agreement with a "
                         f"network whose group 4 is re-initialised {float(r['random_net_label_agreement']):.2f}, "
                         f"mass margin minus the random network's {float(r['mass_margin_minus_random']):+.2f}: "
                         + ("passes the sanity checks." if ok else
                            "**it fails the sanity checks (another rule passes), so the explanation is not presented "
                            "as evidence.**" if others else
                            "**no rule passes the sanity checks, so the explanation is not presented as evidence.**"))
    return "\n".join(lines) + "\n"


#: Table 2's design, shown first (``docs/DECISIONS.md``, "The instrument"): title, table
#: (``name:family`` shows the rows of one family of ``table2_primary``), note, figures.
DESIGN_SECTIONS: list[tuple[str, str, str | None, tuple[str, ...]]] = [
    ("Table 2 design: every pre-trained trunk and its gates", "table2_trunks",
     "One row per initialisation and trunk seed. Trunk gate (`passes`): at least 70 % on its own test split and "
     "the frozen teacher's group-4 energy on mass cells at least twice the mass cells' share of the grid. "
     "Calibration gate (`calibrated`, condition B): fine-tuning reaches at least 85 % in distribution and flips "
     "at least 25 % of its predictions on the reversed rendering, a mask-only model at least 80 %. A trunk that "
     "fails either is left out of the verdict; too few passing trunks (`cv.min_passing_trunks`) means no "
     "conclusion.", ()),
    ("Pre-specified primary analysis (co-primary outcomes, corrected tests)", "table2_primary:primary",
     "Declared in the profile before any run: knowledge transfer at the fixed beta `cv.primary_beta` minus "
     "fine-tuning, and the trend over the grid (per-unit slope on log2(1 + beta)). Differences in points, pooled "
     "over folds x fold seeds x passing trunks (`n`). `p_corrected`: Nadeau-Bengio corrected resampled t "
     "(the training sets of the folds overlap), Holm-adjusted over the cells of this family; `p_paired_t "
     "(paper-comparable)`: the plain paired t, the test comparable to the paper's p = 0.0082 / 0.0069; "
     "`ci_lo`/`ci_hi`: 95 % CI of the corrected t; `mde`: the smallest effect detectable at 80 % power; "
     "`boot_lo/hi (patients)`: patient-cluster bootstrap 95 % CI. In condition B neutral accuracy, flip rate "
     "(lower is better) and reversed-rendering accuracy are co-primary. All rows: `tables/table2_primary.csv`.",
     ()),
    ("Controls: the nulls and the positive control", "table2_primary:controls",
     "Knowledge transfer at the primary beta against Eq. 5 with a shuffled teacher (another case's mask map), a "
     "uniform target and an off-centre (rolled) target: nulls that carry no case-specific mask location "
     "(every ROI is mass-centred, so the teacher maps are centred blobs). Knowledge transfer helps only where "
     "it beats fine-tuning and every null. The oracle target is the mask pooled to the grid. Positive control: "
     "the same two arms with a classifier that reads only group 4's own channels (DenseNet's concatenation "
     "passes the frozen transition-3 features to the classifier unchanged).", ()),
    ("Mechanism: where the calcification's effect on the logit goes", "table2_mechanism",
     "Default replicate, condition B: each test case's rendering with a calcification against one without "
     "(same mass and tissue). The change of the logit margin splits exactly into the frozen pass-through "
     "channels and group 4's own channels (GAP + linear head); `|w|`: the classifier's mean margin weight on "
     "each half; `confounder energy own`: share of group 4's own-channel energy on the calcification's cells "
     "(against those cells' share of the grid).", ("table2_mechanism",)),
    ("Per trunk and pooled: knowledge transfer minus fine-tune", "table2_per_trunk",
     "Every trunk, passing or not (`used in verdict`), then the pooled row over the trunks used.", ()),
    ("Secondary: beta chosen per fold on the inner split (the paper's procedure)", "table2_primary:secondary",
     "In condition B the inner validation split carries the shortcut, so this choice rewards it; reported "
     "beside the pre-specified analysis, not instead of it.", ()),
    ("Oracle analysis: selection on a neutral rendering of the inner split (labelled oracle)", "table2_primary:oracle",
     "Condition B only. The same grid runs, but every run's epoch, and knowledge transfer's beta, are selected on "
     "the inner validation cases rendered without the shortcut, for both arms: information a real study does not "
     "have, so this is an upper bound on what a shortcut-blind selection could show, not a result to report as "
     "the method's. Holm over its own cells.", ()),
]

#: REPORT.md sections: title, table, note, figures embedded under the table.
SECTIONS: list[tuple[str, str, str | None, tuple[str, ...]]] = [
    ("Datasets", "datasets", None, ("fig2_roi_contexts",)),
    ("Exclusions", "exclusions_summary", "Every case left out, with its reason, is in `tables/exclusions.csv`.", ()),
    ("Pre-trained trunks: Fig. 6 distances of every trunk", "trunk_gate",
     "Each trunk is trained on all layers, then groups 1-3 are frozen (Sec. 3.3); the gate's values and Fig. 6's "
     "median distances for each (the gates are also in the design's first table).", ()),
    ("DDSM pre-training stage (one row per trunk seed)", "pretraining", None, ()),
    ("Calibration gate per trunk seed (checked before any verdict)", "calibration_gate",
     "Condition B plants a calcification shortcut. The instrument can show an effect only if fine-tuning "
     "takes the shortcut (high in-distribution accuracy, predictions that flip when the calcifications are "
     "reversed) and the mask alone carries the label.", ()),
    ("Table 2: fine-tune vs knowledge transfer (default replicate, the paper's procedure)", "table2_comparison", None,
     ("table2_confusion",)),
    ("Every run of the default replicate, per spec", "table2_controls",
     "Means over the folds of the default replicate (trunk seed, fold seed) for every arm, controls included.", ()),
    ("Dose-response: beta of Eq. 5", "table2_dose_response",
     "Means over every fold, fold seed and trunk seed for every beta of the grid (beta 0 = fine-tuning; form "
     "`at` = the attention-transfer reference's mean squared difference). `times chosen`: folds whose inner "
     "validation split chose that beta.", ("table2_dose_response",)),
    ("beta chosen in each fold (inner validation split)", "beta_selection", None, ()),
    ("Fig. 4(b): mask-only vs ROI-only models", "fig4b", None, ("fig4b_confusion",)),
    ("Significance of knowledge transfer vs fine-tune", "significance",
     "The paper's test is unnamed. Its p = 0.0082 / 0.0069 are consistent only with the paired t-test over "
     "the five folds (a standard deviation of fold differences of about 8 points): five-fold Wilcoxon cannot "
     "go below p = 0.0625, and McNemar on 274 pooled lesions with the paper's gains of 46 and 50 lesions "
     "gives p far below 0.0082. All statistics: `tables/significance_full.csv`.", ()),
    ("Table 1: ROI extraction and augmentation (paper: OMI-DB)", "table1", None, ()),
    ("Fig. 6: activation distances d^j (pre-trained network)", "fig6_summary", None,
     ("fig6_distances", "fig4a_activation_levels")),
    ("Beyond the paper: where the models look (group-4 activation energy)", "localization_summary", None,
     ("fig7_overlays",)),
    ("Sanity checks of the Lesion/Background explanation", "explanation_sanity",
     "One row per Background rule (docs/DECISIONS.md). `pixel_change_agreement`: share of cells whose Eq. 6 "
     "label equals the replacement that changes fewer pixels (at most 0.65 to pass); "
     "`random_net_label_agreement`: labels of the trained model vs the same network with group 4 "
     "re-initialised (model-randomisation check, Adebayo et al. 2018; at most 0.85); "
     "`mass_margin_minus_random`: P(Lesion | mass cell) - P(Lesion | other cell), trained minus random "
     "(above 0). Baselines, each as raw agreement and Cohen's kappa: `trunk_*` (labels of the initial "
     "network, group 4 not trained) and `other_model_*` (fine-tune vs knowledge transfer on the same trunk). "
     "The default is the complementary `soft` split, fixed in advance; while no rule passes the explanation "
     "is not evidence.", ()),
    ("Beyond the paper: the model-randomisation check of every explainer", "explainer_randomisation",
     "Eq. 6, Grad-CAM, HiResCAM and kNN behind one interface, each explaining the same test ROIs with the "
     "trained network and with group 4 and the classifier re-initialised (Adebayo et al. 2018). `similarity`: "
     "the explainer's own measure (`label_agreement` of Eq. 6 cells, Spearman `rank_correlation` of CAM maps, "
     "Jaccard `neighbour_overlap` of the kNN cases); `changes` when at most 0.85. `mass_share_*`: share of "
     "the positive evidence on the mask.", ()),
    ("Beyond the paper: do the Lesion cells of Eq. 6 lie on the mass?", "explanation_agreement",
     "A cell is a mass cell when at least a quarter of its window lies in the mask.",
     ("fig5_lesion_background_benign", "fig5_lesion_background_malignant", "fig8_panels_benign",
      "fig8_panels_malignant", "fig9_framework", "explanation_grid")),
    ("Explanation timing", "explain_timing", None, ()),
]


def _section(rd: Path, title: str, name: str, note: str | None, figs: tuple[str, ...], *,
             shown: set[str]) -> list[str]:
    """One REPORT.md section: the table (``name:family`` keeps the rows of one ``family``), its note,
    its notes file and its figures (added to ``shown``); a table not made is said to be missing."""
    name, _, family = name.partition(":")
    df = read_table(name, rd)
    out = [f"## {title}\n"]
    if df is None:
        return out + ["_not produced in this run_\n"]
    if family and "family" in df.columns:
        df = df[df["family"] == family].drop(columns=["family"])
        if df.empty:  # a family this run has no rows of (the oracle analysis without condition B)
            return []
    out.append(markdown_table(df))
    if note:
        out.append(note + "\n")
    notes_file = rd / "tables" / f"{name}.notes.md"
    if notes_file.exists() and not family:
        out.append(notes_file.read_text() + "\n")
    for f in figs:
        if (rd / "figures" / f"{f}.png").exists():
            out.append(f"![{f}](figures/{f}.png)\n")
            shown.add(f)
    return out


def build_report(results_dir: Path, provenance: Mapping[str, Any]) -> str:
    """Assemble ``REPORT.md`` from the tables the notebooks wrote (missing ones are said to be
    missing), each figure shown inline under its table."""
    rd = Path(results_dir)
    out: list[str] = []
    prof = provenance.get("profile", "?")
    out.append(f"# mammo-kt reproduction report ({prof} profile)\n")
    out.append("Li et al., *An interpretable CNN-based model for mass classification in mammography*, "
               "Knowledge-Based Systems 316 (2025) 113372. Our numbers beside the paper's.\n")
    if provenance.get("phantom"):
        out.append("> **Data: the built-in synthetic phantom, not real mammograms.** Our numbers test the "
                   "method's claim on data with a known confounder; they are not estimates of the paper's "
                   "BCDR/CBIS-DDSM results. Run the `full` profile on the real datasets for those. The "
                   "instrument (conditions, stand-in pre-training, cached trunk, gate) is described in "
                   "`docs/DECISIONS.md`.\n")
    shown: set[str] = set()
    design = [sec for sec in DESIGN_SECTIONS if read_table(sec[1].split(":")[0], rd) is not None]
    for sec in design:
        out += _section(rd, *sec, shown=shown)
    out.append(headline(rd))  # the verdict follows the design's tables
    for sec in SECTIONS:
        out += _section(rd, *sec, shown=shown)
    rest = [f for f in sorted((rd / "figures").glob("*.png")) if f.stem not in shown] if (rd / "figures").exists() else []
    if rest:
        out.append("## Other figures\n")
        out += [f"![{f.stem}](figures/{f.name})\n" for f in rest]
    out.append(on_another_machine(provenance))
    out.append("## Provenance\n")
    prov = dict(provenance)
    env = prov.pop("environment", {})
    for k, v in prov.items():
        out.append(f"- **{k}**: {json.dumps(v, default=str) if isinstance(v, (dict, list)) else v}")
    for k, v in env.items():
        out.append(f"- **{k}**: {json.dumps(v) if isinstance(v, dict) else v}")
    out.append("")
    return "\n".join(out)


def on_another_machine(provenance: Mapping[str, Any]) -> str:
    """What a rerun elsewhere reproduces and what moves, and by about how much (``docs/DECISIONS.md``,
    "Same numbers on every CPU"), for the run that ``provenance`` describes."""
    env = provenance.get("environment", {})
    num = env.get("numerics (CPU kernels; docs/DECISIONS.md)", {}) or {}
    precision = env.get("float precision (profile key precision)", "float32")
    kernels = (f"{num.get('cpu', '?')}, ATen {num.get('aten capability', '?')}, oneDNN {num.get('onednn max isa', '?')}, "
               f"MKL {num.get('mkl cbwr', '?')}, {num.get('torch threads', '?')} threads")
    text = [f"This run computed in {precision} ({kernels}). On any x86-64 CPU with AVX2, "
            "with the kernels pinned (the default: `import mammo_lib` sets them) and the same thread count, a rerun "
            "is expected to give these tables bit for bit; GPU runs are not bitwise reproducible."]
    if precision == "float64":
        text.append("Under other kernels (a CPU without AVX2, `MAMMO_NUMERICS=native`), float64 keeps the trainings "
                    "the same draws: emulated on the project's machine, 11 of 37 smoke tables moved, by at most 8 % "
                    "of the committed-results check's tolerance (2e-3 relative), and no decision moved.")
    else:
        text.append("Under other kernels (a CPU without AVX2, `MAMMO_NUMERICS=native`) or another thread count, a "
                    "float32 training is another draw: a rounding-level difference can flip one ReLU and Adam's "
                    "first step makes it a different network. Expect each trunk's rows (`table2_per_trunk`) to move "
                    "by about as much as they differ between trunk seeds, and every number downstream of a training "
                    "(accuracies, p-values, correlations, localization shares) to move within its interval; the "
                    "pooled rows and the verdict are what the repeated trunks and fold seeds make robust to it. "
                    "Numbers computed before any training (data, Table 1's ROI counts, the phantom's checks) do "
                    "not move.")
    return "## On another machine\n\n" + " ".join(text) + "\n"


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
    from mammo_lib.repro.runner import TIMES_FILE, load_times

    times = load_times(cfg.results_dir)  # fresh and cached runs apart (mammo_lib.repro.runner)
    per_kind = {k: (times.get(k) or {}).get("notebooks") for k in ("fresh", "cached")}
    total = ((times.get("fresh") or {}).get("last complete run") or {}).get("total (s)")
    prov = {
        "profile": cfg.name,
        "phantom": cfg.uses_phantom,
        "data_root": str(cfg.data_root) if cfg.data_root else "built-in phantom",
        "arch": cfg["arch"], "roi size": cfg["roi_size"],
        "classifier head (Sec. 3.3)": cfg["train"]["head"],
        "Table 2 training": "group 4 + classifier from the cached frozen trunk; flips (no rotation)",
        "seed": cfg["seed"],
        "data fingerprint": data_fingerprint(cfg),
        "wall time per notebook, fresh run (s)": per_kind["fresh"] or "n/a (no fresh run recorded)",
        "wall time per notebook, cached run (s)": per_kind["cached"] or "n/a (no cached run recorded)",
        "total wall time, last complete fresh run (s)": total if total is not None else "n/a",
        "wall times": f"{TIMES_FILE}: fresh = from an empty working folder (--fresh), cached = over its "
                      f"caches (--force); with the machine's load average",
        "environment": environment_info(cfg["device"]),
    }
    write_json(cfg.results_dir / "provenance.json", prov)
    return write_text(cfg.results_dir / "REPORT.md", build_report(cfg.results_dir, prov))


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
