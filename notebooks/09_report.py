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
# # 09 Report
#
# Gathers every table of notebooks 01-08 beside the paper's numbers, the figures, and the
# provenance (profile, data manifest, package versions, device, seeds, wall time) into `REPORT.md`
# in the results folder. Table 2's design comes first: the gates of every trunk, the pre-specified
# primary analysis, the controls and the positive control, the mechanism, per-trunk and pooled
# differences, then the verdict that follows from them.

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
# ## Step 1: write and show REPORT.md
#
# A table or figure that a skipped notebook did not make is named as missing, not left out.

# %%
from mammo_lib.repro.report import write_report

path = write_report(cfg)
Markdown(path.read_text())
