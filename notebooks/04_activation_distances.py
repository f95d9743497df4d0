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
# # 04 Activation maps and distances (Eq. 3-4, Fig. 4a, Fig. 6)
#
# Reproduces the observation behind knowledge transfer: a pre-trained network's activation maps of
# an ROI and of its binary mask differ, the more so the deeper the group. It produces the table
# `fig6_summary` and the figures `fig6_distances` and `fig4a_activation_levels`.

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
# ## Step 1: Eq. 4 distances over the training set
#
# For every ROI and its mask, the Eq. 3 activation map F^j (mean over channels of the squared
# activations) at groups j = 1..4 of the pre-trained network, and the Eq. 4 distance d^j between
# the two maps, each flattened and l2-normalised. The table summarises d^j per group.

# %%
out = steps.step_distances(cfg, progress=progress)
print("network:", out["network"])
display(out["summary"])

# %% [markdown]
# ## Step 2: Fig. 6, the distribution of the distances
#
# The distribution of d^j per group, drawn as log(d^j) + 10 like the paper's Fig. 6.

# %%
out["figures"]["fig6_distances"]

# %% [markdown]
# ## Step 3: Fig. 4(a), activation maps at four levels
#
# One malignant ROI and its mask with their Eq. 3 maps at groups 1-4, as in Fig. 4(a).

# %%
out["figures"]["fig4a_activation_levels"]
