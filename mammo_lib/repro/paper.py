"""The paper's published numbers (Li et al., KBS 2025), for side-by-side comparison in the report."""
from __future__ import annotations

#: Table 1 (OMI-DB, fine-tuned DenseNet121), accuracy in percent, keyed by our Table 1 config names.
TABLE1 = {
    "original_roi": ("Original ROI (Ortega-Martorell et al.)", 54.4),
    "double_box": ("Double bounding box (Hamidinekoo et al.)", 57.4),
    "double_box_flip": ("Double bounding box, flip (Li et al.)", 60.9),
    "overlap_0.9": ("Original ROI with overlap ratio 0.9 (Shen et al.)", 53.6),
    "proposed": ("Proposed: mass-centred crop, flip, rotate", 63.6),
}

#: Table 2 (BCDR, 274 lesions, 5-fold CV): mean, std of accuracy in percent and the summed
#: confusion matrix [[TN, FP], [FN, TP]].
TABLE2 = {
    "imagenet_finetune": (51.5, 9.3, [[53, 91], [42, 88]]),
    "imagenet_transfer": (68.2, 5.5, [[90, 54], [33, 97]]),
    "ddsm_finetune": (67.9, 3.8, [[94, 50], [38, 92]]),
    "ddsm_transfer": (86.1, 3.4, [[121, 23], [15, 115]]),
}

#: Table 2 rows as the paper labels them.
TABLE2_LABELS = {
    "imagenet_finetune": ("ImageNet", "Fine-tune"),
    "imagenet_transfer": ("ImageNet", "Knowledge transfer"),
    "ddsm_finetune": ("DDSM", "Fine-tune"),
    "ddsm_transfer": ("DDSM", "Knowledge transfer"),
}

#: Fig. 4(b): BCDR test accuracy (percent) of a model trained on binary masks alone and on ROIs.
FIG4_ACCURACY = {"mask_only": 81.8, "roi_only": 63.6}

#: Knowledge transfer vs fine-tune significance (test unnamed in the paper).
P_VALUES = {"imagenet": 0.0082, "ddsm": 0.0069}
