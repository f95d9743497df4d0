# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 07 Where the models look (Fig. 7)
#
# Reproduces Fig. 7: the group-4 activation maps (Eq. 3) of the fine-tuned and the
# knowledge-transfer models on test ROIs, overlaid with the mass outline. Beyond the paper, it puts
# a number on the figure. It produces the tables `localization_summary` and
# `localization_per_case` and the figure `fig7_overlays`.

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
# ## Step 1: how much of the activation falls on the mass
#
# Over every test fold: the share of group-4 activation energy inside the mass mask, on the
# phantom's planted confounders, and a pointing-game score (is the strongest cell on the mass?),
# per Table 2 model.

# %%
out = steps.step_localization(cfg, progress=progress)
out["summary"]

# %% [markdown]
# ## Step 2: Fig. 7, fine-tune vs knowledge transfer
#
# Two benign and two malignant test ROIs with the DDSM-initialised models' maps, rescaled to
# [0, 1], resized to the ROI and overlaid with the mask outline, with each model's prediction.

# %%
out["figures"]["fig7_overlays"]
