"""The reproduction's steps, one module per notebook, each resumable and cached on disk.

Notebooks call ``steps.open_profile(...)`` and then their one step with a
:class:`~mammo_lib.repro.config.Config`, and only display what it returns: the tables, and under
``"figures"`` the matplotlib Figures (name -> Figure) that the step also writes as
``results/figures/<name>.png``. Every step reads what an earlier step made through the same cached
functions, so each notebook also runs on its own (and a rerun costs little).

==  ==============================  =====================================================
01  :mod:`.data_preparation`        :func:`step_data`: datasets, ROIs, exclusions, Fig. 2
02  :mod:`.table1_roi_variants`     :func:`step_table1`: Table 1
03  :mod:`.ddsm_pretraining`        :func:`step_pretrain`: the pre-trained trunks, their gate
04  :mod:`.activation_distances`    :func:`step_distances`: Fig. 4(a), Fig. 6
05  :mod:`.table2_finetune_vs_transfer`  :func:`step_table2`: Table 2, dose-response, Fig. 4(b)
06  :mod:`.significance`            :func:`step_significance`: KT vs fine-tune tests
07  :mod:`.activation_overlays`     :func:`step_localization`: Fig. 7, localisation scores
08  :mod:`.interpretability`        :func:`step_interpretability`: Figs. 5 and 8, sanity
09  :func:`mammo_lib.repro.report.write_report`
==  ==============================  =====================================================
"""
from mammo_lib.repro.runtime import open_profile
from mammo_lib.repro.steps.activation_distances import step_distances
from mammo_lib.repro.steps.activation_overlays import step_localization
from mammo_lib.repro.steps.data_preparation import step_data
from mammo_lib.repro.steps.ddsm_pretraining import step_pretrain
from mammo_lib.repro.steps.interpretability import step_interpretability
from mammo_lib.repro.steps.significance import step_significance
from mammo_lib.repro.steps.table1_roi_variants import step_table1
from mammo_lib.repro.steps.table2_finetune_vs_transfer import step_table2

__all__ = ["open_profile", "step_data", "step_table1", "step_pretrain", "step_distances", "step_table2",
           "step_significance", "step_localization", "step_interpretability"]
