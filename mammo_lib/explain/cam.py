"""CAM-style localisation maps for Fig. 8a: Grad-CAM (ref. [49]) and HiResCAM (ref. [50]).

Computed with pytorch-grad-cam (``pytorch_grad_cam``) on a thin wrapper around the caller's
DenseNet. Why a wrapper: torchvision's ``DenseNet.forward`` applies
``F.relu(features, inplace=True)`` to the output of ``model.features`` (= ``norm5``), so a hook
on ``norm5`` stores a tensor that the next operation overwrites, and the gradient hook sits on a
tensor modified in place (Sec. 3.3). :class:`DenseNetCAMHead` recomputes the same forward,
``features -> ReLU (not in place) -> global average pool -> flatten -> classifier``, with the
caller's own ``features`` and ``classifier`` modules (no copy, same weights), and its ``relu``
module gives the target layer a tensor of its own.

Target layers (``target_layer``):

- ``"relu"`` (default): group 4 after norm5 and ReLU, the tensor of ``F^4`` (Eq. 3, Sec. 3.3).
  With global average pooling and one linear layer after it, dY/dA is constant over space, so
  Grad-CAM and HiResCAM give the same map there (Draelos & Carin, ref. [50], Sec. 3).
- ``"norm5"``: before the ReLU (pytorch-grad-cam's usual ``model.features[-1]`` for DenseNet);
  the ReLU's gate makes the gradient vary over space and the two methods differ.
"""
from __future__ import annotations

from typing import Literal, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from pytorch_grad_cam import GradCAM, HiResCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import Tensor, nn

from mammo_lib.utils.progress import tqdm
from mammo_lib.networks.densenet import on_device, preserve_mode, to_model_input

CamMethod = Literal["gradcam", "hirescam"]
TargetLayer = Literal["relu", "norm5"]
#: pytorch-grad-cam classes by ``method`` name.
CAM_METHODS: dict[str, type] = {"gradcam": GradCAM, "hirescam": HiResCAM}
TARGET_LAYERS: tuple[str, ...] = ("relu", "norm5")


class DenseNetCAMHead(nn.Module):
    """torchvision DenseNet forward without the in-place ReLU, sharing the caller's submodules.

    ``forward(x) = classifier(flatten(avgpool(relu(features(x)))))`` equals ``DenseNet.forward``;
    ``self.relu`` is a separate, not-in-place ReLU whose output a CAM hook can keep.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        if not (isinstance(getattr(model, "features", None), nn.Module)
                and isinstance(getattr(model, "classifier", None), nn.Module)
                and hasattr(model.features, "norm5")):
            raise TypeError(f"expected a torchvision DenseNet (features.norm5, classifier), "
                            f"got {type(model).__name__}")
        self.features = model.features
        self.relu = nn.ReLU(inplace=False)
        self.classifier = model.classifier

    def forward(self, x: Tensor) -> Tensor:
        a = self.relu(self.features(x))
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(a, 1), 1))


def _targets(target_class: Union[None, int, Sequence[int]], n: int, num_classes: int) -> Optional[np.ndarray]:
    """Per-image target classes, or None for the predicted class."""
    if target_class is None:
        return None
    if isinstance(target_class, (int, np.integer)) and not isinstance(target_class, bool):
        classes = np.full(n, int(target_class))
    else:
        classes = np.asarray(target_class)
        if classes.shape != (n,) or not np.issubdtype(classes.dtype, np.integer):
            raise ValueError(f"target_class must be None, an int or {n} ints (one per image), got {target_class!r}")
    if classes.size and (classes.min() < 0 or classes.max() >= num_classes):
        raise ValueError(f"target_class must lie in [0, {num_classes - 1}], got {np.unique(classes).tolist()}")
    return classes


def cam_map(model: nn.Module, images: np.ndarray, *, method: CamMethod = "gradcam",
            target_class: Union[None, int, Sequence[int]] = None, device: str | torch.device = "cpu",
            target_layer: TargetLayer = "relu", batch_size: int = 16, progress: bool = False) -> np.ndarray:
    """Grad-CAM / HiResCAM maps of grey ROIs, upsampled to the ROI size, in [0, 1] (Fig. 8a).

    Grad-CAM: ``relu(sum_c mean_hw(dY_k/dA_c) * A_c)``; HiResCAM: ``relu(sum_c dY_k/dA_c * A_c)``
    with ``Y_k`` the logit of the target class and ``A`` the ``target_layer`` output (module
    docstring). As pytorch-grad-cam does, each map is min-max scaled, resized bilinearly
    (half-pixel centres, as :func:`mammo_lib.explain.localization.upsample_map`) to the ROI size and
    min-max scaled again; an all-zero map stays zero.

    The model runs in eval mode. Its modes, hooks, ``requires_grad`` flags, parameter ``.grad``
    and device (moved to ``device`` for the call if needed) are restored; gradients are taken
    with respect to the input, so parameters receive none. Works inside ``torch.no_grad`` or
    ``torch.inference_mode`` blocks.

    Args:
        images: ``(N, S, S)`` grey ROIs in [0, 1].
        method: ``"gradcam"`` or ``"hirescam"``.
        target_class: None (each image's predicted class), one class for all, or one per image.
        target_layer: ``"relu"`` (default, group 4 as in Eq. 3) or ``"norm5"``.

    Returns:
        ``(N, S, S)`` float32 maps in [0, 1].
    """
    if method not in CAM_METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {tuple(CAM_METHODS)}")
    if target_layer not in TARGET_LAYERS:
        raise ValueError(f"unknown target_layer {target_layer!r}; choose one of {TARGET_LAYERS}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    head = DenseNetCAMHead(model)
    arr = np.asarray(images)
    if arr.ndim != 3 or 0 in arr.shape:
        raise ValueError(f"images must be a non-empty (N, S, S) array of grey ROIs, got shape {arr.shape}")
    num_classes = getattr(model.classifier, "out_features", None)
    classes = _targets(target_class, len(arr), num_classes if num_classes is not None else np.iinfo(np.int64).max)

    device = torch.device(device)
    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    grads = [p.grad for p in params]
    layer = head.relu if target_layer == "relu" else model.features.norm5
    out: list[np.ndarray] = []
    try:
        with (on_device(model, device), preserve_mode(model), torch.inference_mode(False),
              torch.enable_grad()):
            for p in params:
                p.requires_grad_(False)
            cam = CAM_METHODS[method](model=head, target_layers=[layer])   # registers hooks, head.eval()
            try:  # not ``with cam``: BaseCAM.__exit__ swallows IndexError
                for start in tqdm(range(0, len(arr), batch_size), disable=not progress, desc=method):
                    x = torch.as_tensor(arr[start:start + batch_size], dtype=params[0].dtype).to(device)
                    x = to_model_input(x).detach().requires_grad_(True)
                    targets = None if classes is None else [
                        ClassifierOutputTarget(int(c)) for c in classes[start:start + batch_size]]
                    out.append(np.asarray(cam(input_tensor=x, targets=targets), dtype=np.float32))
            finally:
                cam.activations_and_grads.release()
    finally:
        for p, flag, grad in zip(params, flags, grads):
            p.requires_grad_(flag)
            p.grad = grad
    return np.clip(np.concatenate(out), 0.0, 1.0)
