# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.7
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 08 Interpretability: the Lesion / Background explanation (Sec. 4.2, Eq. 1-2, Eq. 6, Figs. 5, 8, 9)
#
# Reproduces the paper's explanation of a prediction: the ROI is split into a *Lesion* and a
# *Background* image by GLCM variance (Eq. 1-2), and each cell of the group-4 grid is labelled by
# which of the two the model's activations stay closer to (Eq. 6). It produces the tables
# `explanation_sanity`, `explainer_randomisation`, `explain_timing`, `explanation_agreement` and
# `fig8b_correlation`, and the figures `fig5_lesion_background_*`, `fig8_panels_*`, `fig9_framework`
# and `explanation_grid`.

# %% tags=["parameters"]
# Parameters: papermill injects values after this cell; `papermill --help-notebook` lists them.
profile: str = ""  # smoke | demo | full, or a YAML path; empty: env MAMMO_PROFILE, else demo
data_root: str = ""  # folder with the real datasets; "" uses the built-in synthetic phantom
device: str = ""  # cpu | cuda; "" takes the profile's device
progress: bool = True  # show progress bars for long steps

# %%
# Setup: the profile gives every setting not set above; figures are shown inline
# %matplotlib inline
from IPython.display import Markdown, display

from mammo_lib.repro import steps

cfg = steps.open_profile(profile, data_root=data_root, device=device)  # also pins the CPU threads

# %% [markdown]
# ## Step 1: sanity checks of the explanation
#
# Before any figure: does the explanation depend on the model? It is compared with a predictor that
# only counts changed pixels, with a network whose group 4 is re-initialised (Adebayo et al. 2018),
# with the frozen trunk alone and with the fine-tuned model (raw agreement and Cohen's kappa), and on
# how much more its Lesion label follows the mass than a random network's. The figures use the
# complementary `soft` split, fixed in advance; while no rule passes, the explanation is not
# evidence (`docs/DECISIONS.md`: the Background image).

# %%
out = steps.step_interpretability(cfg, progress=progress)
display(out["sanity"])
print("Background rule used below:", out["rule"], "| any rule passes:", out["sanity"].attrs["any_passes"])

# %% [markdown]
# The same model-randomisation check for every explainer behind the one interface: Eq. 6, Grad-CAM,
# HiResCAM and the kNN explanation, each compared with itself on the re-initialised network (equal
# labels, rank correlation of the maps, overlap of the neighbours). An explanation that hardly changes
# does not follow the trained weights.

# %%
display(out["randomisation"])

# %% [markdown]
# ## Step 2: the cost of an explanation
#
# One forward pass for the ROI and two per grid cell (Lesion and Background), timed on one benign
# and one malignant test ROI.

# %%
out["timing"]

# %% [markdown]
# ## Step 3: Fig. 5, Lesion and Background images and the Eq. 6 labels
#
# For one benign and one malignant ROI: the ROI, its Lesion and Background images, and the grid of
# cells labelled Lesion or Background by Eq. 6.

# %%
for name, fig in out["figures"].items():
    if name.startswith("fig5_"):
        display(fig)

# %% [markdown]
# ## Step 4: Fig. 8, the explanation beside other explanations
#
# Grad-CAM and HiResCAM maps, the correlation between GLCM features and the model's deep features
# (Fig. 8b), and the nearest training ROIs in the model's feature space (k-NN), beside the Eq. 6
# labels.

# %%
for name, fig in out["figures"].items():
    if name.startswith("fig8_"):
        display(fig)

# %% [markdown]
# ## Step 5: Fig. 9, the framework on one case, and the explanation grid
#
# The steps of the explanation drawn from one malignant test ROI (Fig. 9), then the fine-tuned and
# knowledge-transfer models' maps and explanations side by side.

# %%
display(out["figures"]["fig9_framework"])
out["figures"]["explanation_grid"]
