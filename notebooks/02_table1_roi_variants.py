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
# # 02 Table 1: ROI extraction and augmentation (Sec. 3.2, Table 1)
#
# Reproduces Table 1: how the way the ROI is cut around a mass (original box, double box, overlap
# 0.9, mass-centred window) and the augmentation (flip, rotation) change the accuracy of a
# fine-tuned DenseNet121. It produces the tables `table1` and `table1_per_fold`. The paper used
# OMI-DB, which is restricted; here the profile's cross-validation set takes its place and the
# table says so.

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
# ## Step 1: fine-tune each configuration with k-fold cross-validation
#
# For each of Table 1's five rows: cut the ROIs that way, fine-tune group 4 + classifier from the
# ImageNet weights (or their stand-in, see `docs/DECISIONS.md`: missing ImageNet weights) with that
# row's augmentation, and report the mean ± standard deviation of the test accuracy over the folds,
# beside the paper's number.

# %%
out = steps.step_table1(cfg, progress=progress)
out["table"]
