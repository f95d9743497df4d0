"""Generate the numbered notebooks (kept thin: a parameters cell, library calls, displays).

The notebooks in notebooks/ are this script's output: edit the cells here, then run
    .venv/bin/python tools/make_notebooks.py
(tests/test_packaging.py checks that the committed notebooks match it).
"""
import sys
from pathlib import Path

import nbformat as nbf

OUT = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[1] / "notebooks"
PARAMS = '''# Parameters: papermill injects values after this cell; `papermill --help-notebook` lists them.
profile: str = ""  # smoke | demo | full, or a YAML path; empty: env MAMMO_PROFILE, else demo
data_root: str = ""  # folder with the real datasets; "" uses the built-in synthetic phantom
device: str = ""  # cpu | cuda; "" takes the profile's device
progress: bool = True  # show progress bars for long steps'''
SETUP = '''# Setup: resolve the profile (every parameter not given above comes from its YAML file)
import pandas as pd
from IPython.display import Image, Markdown, display

from mammo_lib import pipeline
from mammo_lib.config import load_config

cfg = load_config(profile, {"data_root": data_root or None, "device": device or None})
print(f"profile: {cfg.name}  arch: {cfg['arch']}  ROI size: {cfg['roi_size']}  device: {cfg['device']}")
print(f"results: {cfg.results_dir}")'''

def show(names):
    return "\n".join(f'display(Image(filename=str(cfg.results_dir / "figures" / "{n}.png")))' for n in names)

NBS = {
"01_data_preparation": ("""# 01 Data preparation (Sec. 3.1-3.2, Fig. 2)

Loads the datasets of the profile (the built-in phantom by default; CBIS-DDSM and BCDR with the `full`
profile), checks real data against `data_manifest.csv`, and extracts the mass-centred ROIs:
a crop of max(224, w) x max(224, h) around the mask's bounding box, zero-padded at the image border,
resized with bicubic interpolation (masks: nearest neighbour). ROIs are cached on disk by parameters.""", [
("# Verify real data against data_manifest.csv (the phantom is checked by its determinism tests)",
 '''if cfg.uses_phantom:
    print("built-in phantom: generated deterministically from seed", cfg["phantom"]["seed"])
else:
    display(pipeline.verify_data(cfg))'''),
("# Load, preprocess and cache the ROIs; write counts, exclusions and Fig. 2",
 '''out = pipeline.step_data(cfg, progress=progress)
display(out["counts"])'''),
("# NBVAL_CHECK_OUTPUT\n# class counts of the cross-validation set (pinned for the smoke profile)",
 '''ds = out["datasets"]
print(f"cross-validation set: {len(ds.cv)} masses, {int((ds.cv.labels == 0).sum())} benign, {int((ds.cv.labels == 1).sum())} malignant")'''),
("# Exclusions: nothing is dropped silently",
 '''print(f"{len(out['exclusions'])} excluded cases")
display(out["exclusions_summary"])'''),
("# Fig. 2: the two ROI contexts for one mass", show(["fig2_roi_contexts"])),
]),
"02_table1_roi_variants": ("""# 02 Table 1: ROI extraction and augmentation

Fine-tunes the network (group 4 + classifier) with each of Table 1's ROI/augmentation configurations.
The paper ran this on OMI-DB (restricted); here it runs on the profile's cross-validation set and
says so in the table.""", [
("# Run (or resume) the k-fold comparison of the five configurations",
 '''out = pipeline.step_table1(cfg, progress=progress)
display(out["table"])'''),
]),
"03_ddsm_pretraining": ("""# 03 Pre-trained trunks: ImageNet (or its stand-in) and DDSM, and their gate

Table 2 trains group 4 + classifier on top of a *pre-trained* network whose groups 1-3 stay frozen
(Sec. 3.3, 5.1). "ImageNet" rows use torchvision's ImageNet weights; where they cannot be had (the
small network, an offline machine) a generic synthetic pre-training takes their role: shapes (disc,
ellipse, spiculated star, polygon) on 1/f texture, with bright dots in half of every image, so the
trunk encodes shape and small bright structures without any mammographic label. "DDSM" rows start
from all-layer training on CBIS-DDSM (its phantom twin here, confounders independent of the label),
itself starting from the ImageNet role, and report on the official test set.

**Gate** (printed below, before any use): at least 70 % on the trunk's own test split; the frozen
teacher's group-4 energy on mass cells at least twice the mass cells' share of the grid, so that
Eq. 5 has a case-specific target; and Fig. 6's median d^1..d^4.""", [
("# Pre-train both trunks (read back when done for these parameters) and gate them",
 '''out = pipeline.step_pretrain(cfg, progress=progress)
display(out["gate"])
display(out["table"])
print("DDSM checkpoint:", out["checkpoint"].name)'''),
]),
"04_activation_distances": ("""# 04 Activation maps and distances (Eq. 3-4, Fig. 4a, Fig. 6)

Eq. 3 activation maps of ROIs and binary masks at groups 1-4 of the pre-trained network, and the
distribution of the Eq. 4 distance d^j over the training set, shown as log(d^j) + 10 like the paper.""", [
("# Distances over the cross-validation set with the pre-trained network",
 '''out = pipeline.step_distances(cfg, progress=progress)
print("network:", out["network"])
display(out["summary"])'''),
("# Fig. 6 and Fig. 4(a)", show(["fig6_distances", "fig4a_activation_levels"])),
]),
"05_table2_finetune_vs_transfer": ("""# 05 Table 2 as a calibrated instrument: fine-tune vs knowledge transfer (Eq. 4-5), Fig. 4(b)

Five-fold cross-validation (stratified, grouped by patient) with an 80:20 inner split for model
selection (Sec. 3.1). Groups 1-3 are frozen, so their output and the frozen teacher's map of every
mask are computed once per ROI and flip and cached; group 4 + classifier then train from the cache
(flips replace continuous rotation there). In every outer fold and for every initialisation the whole
beta grid is trained (Eq. 4 form at 0, 2, 8, 32, 128 and the attention-transfer reference form at
1000); knowledge transfer's beta is the one its own inner validation split prefers.

Two phantom conditions: **A**, confounders independent of the label (the paper's assumption), and
**B**, a calcification shortcut in training (P(calc | malignant) 0.9, benign 0.1), scored on a neutral
rendering of the same test masses and on the reversed one. Controls: a *shuffled* teacher (another
case's mask map) and an *oracle* target (the mask pooled to the grid).

The **calibration gate** comes first: can this instrument show an effect at all?""", [
("# Run (or read back) every training of the instrument",
 '''out = pipeline.step_table2(cfg, progress=progress)'''),
("# 1. Calibration gate (condition B): does fine-tuning take the shortcut, does the mask carry the label?",
 '''display(out["gate"])'''),
("# 2. The verdict, computed from the tables (gate first)",
 '''display(Markdown("\\n".join(out["verdict"])))'''),
("# 3. Table 2 per condition beside the paper, and the controls",
 '''display(out["comparison"])
display(out["controls"])'''),
("# 4. Dose-response: accuracy, flips, d^4 and energy on the mass against beta",
 '''display(out["dose"])
''' + show(["table2_dose_response"])),
("# 5. Fig. 4(b): a model trained on binary masks alone vs one trained on ROIs",
 '''display(out["fig4b"])
''' + show(["table2_confusion", "fig4b_confusion"])),
]),
"06_significance": ("""# 06 Significance of knowledge transfer vs fine-tune (and vs the shuffled teacher)

The paper reports p = 0.0082 (ImageNet) and p = 0.0069 (DDSM) without naming the test. Per condition
we report the paired t-test and the Wilcoxon signed-rank test over the five folds, McNemar's test on
the pooled lesions, and a bootstrap confidence interval of the accuracy difference. Only the paired
t-test is consistent with the paper's values: five-fold Wilcoxon cannot go below p = 0.0625, and
McNemar on 274 lesions with gains of 46 and 50 lesions gives p far below 0.0082.""", [
("# Tests",
 '''table = pipeline.step_significance(cfg, progress=progress)
display(table)'''),
]),
"07_activation_overlays": ("""# 07 Where the models look (Fig. 7, and a number for it)

Group-4 activation maps of the fine-tuned and the knowledge-transfer models, rescaled to [0, 1],
resized to the ROI and overlaid with the mask outline (Fig. 7). Beyond the paper: the share of
activation energy inside the mass mask and, on the phantom, on the planted confounders, with a
pointing-game score, over every test fold.""", [
("# Localisation over the test folds",
 '''out = pipeline.step_localization(cfg, progress=progress)
display(out["summary"])'''),
("# Fig. 7", show(["fig7_overlays"])),
]),
"08_interpretability": ("""# 08 Interpretability: Lesion / Background explanation (Sec. 4.2, Eq. 6, Figs. 5, 8, 9)

GLCM variance (Eq. 1-2) splits the ROI into a *Lesion* and a *Background* image (ROI = Lesion +
Background); each window of the group-4 grid is replaced by one or the other and the Eq. 6 distances
between activation tensors label each cell. Before the figures, **sanity checks** decide which split
rule the explanation uses and whether it can be read as evidence at all: agreement with a predictor
that only counts changed pixels, the model-randomisation check (Adebayo et al. 2018: group 4
re-initialised), and whether the Lesion label follows the mass more than a random network's does.
Beside it: Grad-CAM / HiResCAM, the GLCM/deep-feature correlation and k-NN explanations (Fig. 8).""", [
("# Sanity table (one row per Background rule), then one benign and one malignant explanation",
 '''out = pipeline.step_interpretability(cfg, progress=progress)
display(out["sanity"])
print("Background rule used below:", out["rule"], "| any rule passes:", out["sanity"].attrs["any_passes"])
display(out["timing"])'''),
("# Figs. 5, 8, 9 (the framework on one real case) and the explanation grid",
 '''import glob, os
for f in sorted(glob.glob(str(cfg.results_dir / "figures" / "fig[589]*.png"))) + [str(cfg.results_dir / "figures" / "explanation_grid.png")]:
    display(Image(filename=f))'''),
]),
"09_report": ("""# 09 Report

Assembles `REPORT.md` in the results folder: every table beside the paper's numbers, the figures,
and the provenance (profile, data manifest hash, package versions, device, seeds, wall time).""", [
("# Write REPORT.md",
 '''from mammo_lib.report import write_report
path = write_report(cfg)
display(Markdown(path.read_text()))'''),
]),
}

# Outputs nbval compares (smoke profile): rounded numbers worth pinning.
PINNED = {"01_data_preparation": "cross-validation set: 24 masses, 12 benign, 12 malignant\n"}

for name, (intro, cells) in NBS.items():
    nb = nbf.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    nb.cells.append(nbf.v4.new_markdown_cell(intro))
    c = nbf.v4.new_code_cell(PARAMS); c.metadata["tags"] = ["parameters"]; nb.cells.append(c)
    nb.cells.append(nbf.v4.new_code_cell(SETUP))
    for label, src in cells:
        cell = nbf.v4.new_code_cell(label + "\n" + src)
        if label.startswith("# NBVAL_CHECK_OUTPUT"):
            cell.outputs = [nbf.v4.new_output("stream", name="stdout", text=PINNED[name])]
            cell.execution_count = 1
        nb.cells.append(cell)
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"{name[:2]}-{i:02d}"
    nbf.write(nb, OUT / f"{name}.ipynb")
print("written", len(NBS))
