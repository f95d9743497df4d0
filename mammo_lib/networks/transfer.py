"""Knowledge transfer from binary masks to ROIs (Eq. 5, Sec. 4.1).

The mask's activation maps come from a network that "will not participate in the training
process": by default a frozen copy of the initial, pre-trained network (docs/DECISIONS.md,
:func:`make_teacher`); any other model can be passed instead.

One training step::

    with GroupActivations(model, loss_fn.omega) as acts:
        logits = model(to_model_input(rois))
    roi_maps = {j: activation_map(acts[j]) for j in loss_fn.omega}
    mask_maps = teacher_maps(teacher, mask_to_model_input(masks), loss_fn.omega)
    loss, parts = loss_fn(logits, labels, roi_maps, mask_maps)
"""
from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mammo_lib.utils.precision import full
from mammo_lib.networks.activation import DISTANCE_FORMS, GROUP_LAYERS, DistanceForm, GroupActivations, activation_distance, activation_map

#: Default weight of the transfer term. The paper gives no value; docs/DECISIONS.md: choose beta on
#: the inner validation split and report it. The attention-transfer reference (ref. [15]) uses
#: beta = 1000 with ``form="at"`` (whose values are smaller by a factor of about H*W).
DEFAULT_BETA = 1.0
#: Groups Omega of Eq. 5 (Sec. 4.1: default {4}).
DEFAULT_OMEGA = (4,)


def make_teacher(model: nn.Module) -> nn.Module:
    """A frozen copy of ``model`` for the mask branch (docs/DECISIONS.md): deep copy, eval mode, no
    gradients. The caller's model is untouched."""
    teacher = copy.deepcopy(model)
    teacher.eval()
    teacher.requires_grad_(False)
    return teacher


def teacher_maps(teacher: nn.Module, mask_input: Tensor, groups: Iterable[int] = DEFAULT_OMEGA) -> dict[int, Tensor]:
    """Eq. 3 activation maps of the mask inputs, ``{j: (N,H,W)}``; computed in eval mode under
    ``torch.no_grad`` so they never receive gradients (the teacher's modes are restored).

    Args:
        mask_input: masks already through :func:`mammo_lib.networks.densenet.mask_to_model_input`, ``(N,3,H,W)``.
    """
    if not isinstance(mask_input, Tensor) or mask_input.ndim != 4 or mask_input.shape[1] != 3:
        shape = tuple(mask_input.shape) if isinstance(mask_input, Tensor) else type(mask_input).__name__
        raise ValueError(f"mask_input must be (N,3,H,W) from mask_to_model_input, got {shape}")
    groups = tuple(groups)
    with GroupActivations(teacher, groups, mode="eval", detach=True) as acts, torch.no_grad():
        teacher(mask_input)
        return {g: activation_map(full(acts[g])) for g in groups}  # full-precision maps also under autocast


class KnowledgeTransferLoss(nn.Module):
    """Eq. 5: ``CE(logits, target) + (beta/2) * sum_{j in omega} mean_batch d^j``, d from Eq. 4.

    Args:
        beta: weight of the transfer term (see :data:`DEFAULT_BETA`; 0 gives plain cross-entropy).
        omega: groups Omega whose maps are compared (default {4}).
        form: ``"paper"`` (Eq. 4 as written) or ``"at"`` (the reference's mean squared difference),
            see :func:`mammo_lib.networks.activation.activation_distance`.

    ``forward`` returns the loss and a dict of floats: ``"ce"``, ``"d<j>"`` (batch mean of d^j) for
    each j in omega, ``"total"``. Mask maps are detached: no gradient reaches the mask branch.
    """

    def __init__(self, beta: float = DEFAULT_BETA, omega: Iterable[int] = DEFAULT_OMEGA,
                 form: DistanceForm = "paper"):
        super().__init__()
        omega = tuple(omega)
        if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not beta >= 0:
            raise ValueError(f"beta must be a number >= 0, got {beta!r}")
        if not omega:
            raise ValueError("omega is empty; choose groups from (1, 2, 3, 4)")
        bad = [j for j in omega if j not in GROUP_LAYERS]
        if bad:
            raise ValueError(f"unknown groups in omega {bad}; choose from {tuple(GROUP_LAYERS)}")
        if form not in DISTANCE_FORMS:
            raise ValueError(f"unknown form {form!r}; choose one of {DISTANCE_FORMS}")
        self.beta = float(beta)
        self.omega = tuple(dict.fromkeys(omega))
        self.form = form

    def extra_repr(self) -> str:
        return f"beta={self.beta}, omega={self.omega}, form={self.form!r}"

    def forward(self, logits: Tensor, target: Tensor, roi_maps: Mapping[int, Tensor],
                mask_maps: Mapping[int, Tensor]) -> tuple[Tensor, dict[str, float]]:
        ce = F.cross_entropy(logits, target)
        parts: dict[str, float] = {"ce": float(ce.detach())}
        transfer = ce.new_zeros(())
        for j in self.omega:
            if j not in roi_maps or j not in mask_maps:
                raise KeyError(f"group {j} of omega missing from the maps (roi: {sorted(roi_maps)}, "
                               f"mask: {sorted(mask_maps)})")
            d = activation_distance(mask_maps[j].detach(), roi_maps[j], form=self.form)
            if d.shape[0] != logits.shape[0]:
                raise ValueError(f"group {j}: {d.shape[0]} maps for a batch of {logits.shape[0]} logits")
            d_mean = d.mean()
            parts[f"d{j}"] = float(d_mean.detach())
            transfer = transfer + d_mean
        total = ce + (self.beta / 2.0) * transfer
        parts["total"] = float(total.detach())
        return total, parts
