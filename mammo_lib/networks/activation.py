"""Group activations, activation maps (Eq. 3) and their distance (Eq. 4), Sec. 4.1.

A DenseNet121 "group" k is denseblock k with the transition after it (docs/DECISIONS.md); its
activation is read at the output of denseblock k (56, 28, 14 and 7 px square at 224 input), for
group 4 after ``norm5`` *and* the ReLU that torchvision applies in ``DenseNet.forward``.

Typical use (the ROI branch of Eq. 5)::

    with GroupActivations(model, groups=(4,)) as acts:
        logits = model(to_model_input(rois))
    roi_maps = {4: activation_map(acts[4])}
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Literal, Optional

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mammo_lib.utils.progress import tqdm
from mammo_lib.networks.densenet import apply_train_mode, mask_to_model_input, on_device, preserve_mode, to_model_input

#: Module (by ``named_modules`` name) whose output is group k's activation (docs/DECISIONS.md).
GROUP_LAYERS: dict[int, str] = {
    1: "features.denseblock1",
    2: "features.denseblock2",
    3: "features.denseblock3",
    4: "features.norm5",  # + ReLU, as DenseNet.forward does
}

DistanceForm = Literal["paper", "at"]
DISTANCE_FORMS = ("paper", "at")


class GroupActivations:
    """Context manager capturing group activations with forward hooks (torch-cam style).

    Args:
        model: a torchvision DenseNet.
        groups: which of :data:`GROUP_LAYERS` to capture.
        mode: ``None`` leaves the model's mode alone; ``"eval"`` calls ``model.eval()``;
            ``"train"`` calls :func:`mammo_lib.networks.densenet.apply_train_mode` (``train()`` with frozen
            BatchNorm kept in eval). Modes of all submodules are restored on exit.
        detach: store detached copies (no gradients); by default gradients flow through them.

    ``acts[j]`` is group j's ``(N,C,H,W)`` tensor of the last forward inside the block; it stays
    readable after the block. Outputs are cloned, because ``DenseNet.forward`` applies an in-place
    ReLU to the ``norm5`` output that would otherwise overwrite the stored tensor.
    """

    def __init__(self, model: nn.Module, groups: Iterable[int] = (4,), *,
                 mode: Optional[Literal["eval", "train"]] = None, detach: bool = False):
        groups = tuple(groups)
        if not groups:
            raise ValueError("groups is empty; choose from (1, 2, 3, 4)")
        bad = [g for g in groups if g not in GROUP_LAYERS]
        if bad:
            raise ValueError(f"unknown groups {bad}; choose from {tuple(GROUP_LAYERS)}")
        if mode not in (None, "eval", "train"):
            raise ValueError(f"mode must be None, 'eval' or 'train', got {mode!r}")
        modules = dict(model.named_modules())
        missing = [GROUP_LAYERS[g] for g in groups if GROUP_LAYERS[g] not in modules]
        if missing:
            raise ValueError(f"model has no module {missing}: expected a torchvision DenseNet")
        self.model = model
        self.groups = tuple(dict.fromkeys(groups))
        self.mode = mode
        self.detach = detach
        self._modules = {g: modules[GROUP_LAYERS[g]] for g in self.groups}
        self._handles: dict[int, torch.utils.hooks.RemovableHandle] = {}
        self._acts: dict[int, Tensor] = {}
        self._mode_guard = None

    @property
    def hooks(self) -> dict[int, torch.utils.hooks.RemovableHandle]:
        """The registered hooks by group (empty outside the ``with`` block)."""
        return dict(self._handles)

    def _hook(self, group: int):
        def hook(_module: nn.Module, _inputs: tuple, output: Tensor) -> None:
            out = output.clone()
            if group == 4:
                out = F.relu(out)
            self._acts[group] = out.detach() if self.detach else out
        return hook

    def __enter__(self) -> "GroupActivations":
        if self._handles:
            raise RuntimeError("GroupActivations is already active (not re-entrant)")
        self._mode_guard = preserve_mode(self.model)
        self._mode_guard.__enter__()
        try:
            if self.mode == "eval":
                self.model.eval()
            elif self.mode == "train":
                apply_train_mode(self.model)
            self._acts.clear()
            for g, module in self._modules.items():
                self._handles[g] = module.register_forward_hook(self._hook(g))
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        for handle in self._handles.values():
            handle.remove()
        self._handles.clear()
        if self._mode_guard is not None:
            guard, self._mode_guard = self._mode_guard, None
            guard.__exit__(None, None, None)

    def __getitem__(self, group: int) -> Tensor:
        if group not in self._modules:
            raise KeyError(f"group {group} is not hooked (hooked: {self.groups})")
        if group not in self._acts:
            raise KeyError(f"group {group} has no activation yet: run a forward inside the block")
        return self._acts[group]

    def __contains__(self, group: object) -> bool:
        return group in self._acts

    def as_dict(self) -> dict[int, Tensor]:
        """All captured activations by group."""
        return dict(self._acts)


def activation_map(A: Tensor) -> Tensor:
    """Eq. 3: ``F = (1/C) * sum_i |A_i|^2``; ``(N,C,H,W) -> (N,H,W)``."""
    if not isinstance(A, Tensor):
        raise TypeError(f"expected a torch.Tensor, got {type(A).__name__}")
    if A.ndim != 4:
        raise ValueError(f"expected an activation tensor (N,C,H,W), got shape {tuple(A.shape)}")
    return A.abs().pow(2).mean(dim=1)


def activation_distance(f_mask: Tensor, f_roi: Tensor, form: DistanceForm = "paper",
                        eps: float = 1e-12) -> Tensor:
    """Distance between the mask's and the ROI's activation maps, one value per sample.

    ``form="paper"`` is Eq. 4, ``d = || v_M/||v_M||_2 - v_R/||v_R||_2 ||_2`` with ``v = vec(F)``;
    ``form="at"`` is the attention-transfer reference (Zagoruyko & Komodakis, ref. [15],
    ``(at(x) - at(y)).pow(2).mean()``): the mean over positions of the squared difference of the
    normalised maps, i.e. ``d_paper**2 / (H*W)``. ``eps`` bounds the norm from below so an
    all-zero map gives a finite value (docs/DECISIONS.md: both forms, paper by default).

    Args:
        f_mask, f_roi: maps ``(N,H,W)`` from :func:`activation_map`.

    Returns:
        ``(N,)`` distances.
    """
    if form not in DISTANCE_FORMS:
        raise ValueError(f"unknown form {form!r}; choose one of {DISTANCE_FORMS}")
    for name, f in (("f_mask", f_mask), ("f_roi", f_roi)):
        if not isinstance(f, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(f).__name__}")
        if f.ndim != 3:
            raise ValueError(f"{name} must be maps (N,H,W), got shape {tuple(f.shape)}")
    if f_mask.shape != f_roi.shape:
        raise ValueError(f"map shapes differ: f_mask {tuple(f_mask.shape)}, f_roi {tuple(f_roi.shape)}")
    vm = F.normalize(f_mask.flatten(1), p=2, dim=1, eps=eps)
    vr = F.normalize(f_roi.flatten(1), p=2, dim=1, eps=eps)
    diff = vm - vr
    if form == "at":
        return diff.pow(2).mean(dim=1)
    return torch.linalg.vector_norm(diff, ord=2, dim=1)


def activation_distances(model: nn.Module, rois: np.ndarray, masks: np.ndarray,
                         groups: Iterable[int] = (1, 2, 3, 4), *, batch_size: int = 16,
                         device: str | torch.device = "cpu", form: DistanceForm = "paper",
                         progress: bool = True) -> pd.DataFrame:
    """Eq. 4 distances ``d^j`` between mask and ROI inputs of one network (Fig. 6 data).

    Runs ``model`` in eval mode under ``torch.inference_mode``; its modes (and device, if it
    had to be moved to ``device``) are restored.

    Args:
        rois: ``(N,S,S)`` grey ROIs in [0, 1].
        masks: ``(N,S,S)`` binary masks in {0, 1}.

    Returns:
        One row per sample and group: ``sample`` (row index in ``rois``), ``group``, ``d``.
    """
    groups = tuple(groups)
    rois_a, masks_a = np.asarray(rois), np.asarray(masks)
    if rois_a.ndim != 3 or masks_a.shape != rois_a.shape:
        raise ValueError(f"rois and masks must be (N,S,S) of the same shape, got "
                         f"{rois_a.shape} and {masks_a.shape}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if form not in DISTANCE_FORMS:
        raise ValueError(f"unknown form {form!r}; choose one of {DISTANCE_FORMS}")
    device = torch.device(device)
    param = next(model.parameters())
    n = len(rois_a)
    out: dict[int, list[Tensor]] = {g: [] for g in groups}
    with on_device(model, device), GroupActivations(model, groups, mode="eval") as acts, torch.inference_mode():
        for start in tqdm(range(0, n, batch_size), disable=not progress, desc="activation distances"):
            stop = min(start + batch_size, n)
            r = to_model_input(torch.as_tensor(rois_a[start:stop], dtype=param.dtype).to(device))
            m = mask_to_model_input(torch.as_tensor(masks_a[start:stop]).to(device), dtype=param.dtype)
            model(m)
            mask_maps = {g: activation_map(acts[g]) for g in groups}
            model(r)
            for g in groups:
                out[g].append(activation_distance(mask_maps[g], activation_map(acts[g]), form).cpu())
    frames = [pd.DataFrame({"sample": np.arange(n), "group": g,
                            "d": torch.cat(out[g]).double().numpy() if n else np.empty(0)})
              for g in groups]
    return pd.concat(frames, ignore_index=True)


def group4_maps(model, images: np.ndarray, *, batch_size: int = 32, device: str = "cpu") -> np.ndarray:
    """F^4 (Eq. 3) for every ROI, (N, g, g), under inference mode; the model's mode and device restored."""
    import torch

    from mammo_lib.networks.activation import GroupActivations, activation_map
    from mammo_lib.networks.densenet import on_device, to_model_input

    out = []
    with on_device(model, device), torch.inference_mode(), GroupActivations(model, groups=(4,), mode="eval") as acts:
        for s in range(0, len(images), batch_size):
            model(to_model_input(torch.from_numpy(images[s:s + batch_size]).to(device)))
            out.append(activation_map(acts[4]).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 1, 1), np.float32)
