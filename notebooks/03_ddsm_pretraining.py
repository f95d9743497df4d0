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
# # 03 The pre-trained networks: ImageNet and DDSM (Sec. 3.3, 5.1)
#
# Table 2 starts from a *pre-trained* network whose groups 1-3 stay frozen while group 4 and the
# classifier are trained (Sec. 3.3). This notebook makes the two starting points of Table 2's rows,
# "ImageNet" and "DDSM", and checks them before any use. Every trunk seed of the profile
# (`cv.trunk_seeds`) pre-trains its own pair, so that no verdict hangs on one trunk. It produces the
# tables `pretraining` (one row per DDSM trunk, on its official test split) and `trunk_gate`.

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
# ## Step 1: the two starting networks
#
# "ImageNet" rows use torchvision's ImageNet weights. Where they cannot be had (the small network,
# an offline machine) a generic synthetic pre-training takes their role: shapes on 1/f texture,
# with bright dots in half of the images, and no mammographic label (`docs/DECISIONS.md`: missing
# ImageNet weights). "DDSM" rows train all layers on CBIS-DDSM (here its phantom twin) starting
# from the ImageNet network of the same seed, and are scored on CBIS-DDSM's official test set; they stop
# `pretrain.patience` epochs after their best validation accuracy and keep that epoch.

# %%
out = steps.step_pretrain(cfg, progress=progress)
display(out["table"])
print("DDSM checkpoint:", out["checkpoint"].name)

# %% [markdown]
# ## Step 2: the gate, before any use
#
# A starting network is used only if it is good enough to carry the paper's argument: at least
# 70 % on its own test split, and a frozen teacher whose group-4 activation (Eq. 3) on the mask
# puts at least twice the mass's share of the grid on the mass, so that the Eq. 5 target is
# specific to each case. The table also gives the median distances d^1..d^4 of Fig. 6 (Eq. 4).
# One row per initialisation and trunk seed; a trunk that fails is left out of Table 2's verdict
# (`docs/DECISIONS.md`: the instrument, second revision).

# %%
out["gate"]
