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
# # 01 Data preparation (Sec. 3.1-3.2, Fig. 2)
#
# Reproduces the paper's data section: the datasets and their class counts (Sec. 3.1) and the
# mass-centred ROIs every later step is trained on (Sec. 3.2, Fig. 2). It produces the tables
# `datasets`, `exclusions` and `exclusions_summary` and the figure `fig2_roi_contexts` in the
# results folder. With the default profiles the data are a synthetic phantom built to BCDR's and
# CBIS-DDSM's sizes; the `full` profile reads the real datasets from `data_root`.

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
# ## Step 1: check the real files
#
# Real CBIS-DDSM and BCDR files are checked against `data_manifest.csv` (size and checksum of every
# file); a missing or altered file stops here with its name. The phantom is generated from a seed, so
# there is nothing to check.

# %%
if cfg.uses_phantom:
    print("built-in phantom: generated deterministically from seed", cfg["phantom"]["seed"])
else:
    from mammo_lib.repro.datasets import verify_data

    display(verify_data(cfg))

# %% [markdown]
# ## Step 2: the datasets (Sec. 3.1)
#
# Loads the masses of the cross-validation set (BCDR: 274 masses) and of the pre-training set
# (CBIS-DDSM, official train/test split), and cuts the mass-centred ROI of each (Sec. 3.2): a
# window of max(224, w) x max(224, h) around the mask's bounding box, zero-padded at the image
# border, resized with bicubic interpolation (the mask with nearest neighbour).

# %%
out = steps.step_data(cfg, progress=progress)
display(out["counts"])

# %%
# NBVAL_CHECK_OUTPUT
# class counts of the cross-validation set (pinned for the smoke profile)
ds = out["datasets"]
print(f"cross-validation set: {len(ds.cv)} masses, {int((ds.cv.labels == 0).sum())} benign, {int((ds.cv.labels == 1).sum())} malignant")

# %% [markdown]
# ## Step 3: what was left out, and why
#
# A case that cannot be used (an unreadable file, an empty mask, a BCDR-F01 mass outside the
# balanced draw of 59 benign and 74 malignant) is listed with its reason; nothing is dropped
# silently.

# %%
print(f"{len(out['exclusions'])} excluded cases")
display(out["exclusions_summary"])

# %% [markdown]
# ## Step 4: Fig. 2, the two ROI contexts
#
# One malignant mass with the tight bounding box and the mass-centred window (at least 224 x 224
# pixels of context), as in the paper's Fig. 2.

# %%
out["figures"]["fig2_roi_contexts"]
