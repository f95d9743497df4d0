"""Joint image/mask augmentation of training ROIs (Sec. 3.2; Sec. 3.2).

Horizontal flip, vertical flip and rotation, each applied with probability 0.5, with the same
geometry to the ROI, its mask and any confounder maps. Rotation angle: uniform in [-30, 30]
degrees (docs/DECISIONS.md; the paper gives none). Images rotate bilinearly, masks with nearest
neighbour (they stay binary); the area rotated in from outside is 0.

The random draws come from an explicit ``torch.Generator`` when one is given (torchvision's own
v2 transforms only use the global RNG), and are applied with ``torchvision.transforms.v2.functional``
on ``tv_tensors.Image`` / ``tv_tensors.Mask``.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Optional, Union

import torch
from torch import Tensor
from torchvision import tv_tensors
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

#: Names accepted in ``JointAugment(augmentations=...)``.
AUGMENTATIONS = ("hflip", "vflip", "rotate")


@dataclass(frozen=True)
class AugmentParams:
    """One draw: which operations apply (in ``JointAugment.augmentations`` order) and the angle."""

    hflip: bool = False
    vflip: bool = False
    rotate: bool = False
    angle: float = 0.0


class JointAugment:
    """Random flips and rotation applied identically to an ROI and its mask (Sec. 3.2).

    Args:
        augmentations: names from :data:`AUGMENTATIONS`, applied in this order.
        p: probability of each operation, drawn independently (paper: 0.5).
        max_degrees: rotation angle is uniform in ``[-max_degrees, max_degrees]`` (Sec. 3.2: 30).

    Every call consumes the same number of random draws (one per operation, plus the angle for
    ``"rotate"``) whatever is applied.
    """

    def __init__(self, augmentations: Iterable[str] = AUGMENTATIONS, p: float = 0.5,
                 max_degrees: float = 30.0):
        augmentations = tuple(augmentations)
        bad = [a for a in augmentations if a not in AUGMENTATIONS]
        if bad:
            raise ValueError(f"unknown augmentations {bad}; valid: {AUGMENTATIONS}")
        if len(set(augmentations)) != len(augmentations):
            raise ValueError(f"augmentations repeated: {augmentations}")
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p <= 1.0:
            raise ValueError(f"p must be a probability in [0, 1], got {p!r}")
        if isinstance(max_degrees, bool) or not isinstance(max_degrees, (int, float)) \
                or not 0.0 <= max_degrees <= 180.0:
            raise ValueError(f"max_degrees must be in [0, 180], got {max_degrees!r}")
        self.augmentations = augmentations
        self.p = float(p)
        self.max_degrees = float(max_degrees)

    def __repr__(self) -> str:
        return (f"JointAugment(augmentations={self.augmentations}, p={self.p}, "
                f"max_degrees={self.max_degrees})")

    def sample(self, generator: Optional[torch.Generator] = None) -> AugmentParams:
        """Draw one set of parameters (from ``generator``, else torch's global RNG)."""
        draws = torch.rand(len(self.augmentations), generator=generator).tolist()
        chosen = {name: u < self.p for name, u in zip(self.augmentations, draws)}
        angle = 0.0
        if "rotate" in self.augmentations:
            u = float(torch.rand((), generator=generator))
            angle = (2.0 * u - 1.0) * self.max_degrees if chosen["rotate"] else 0.0
        return AugmentParams(**chosen, angle=angle)

    def apply(self, image: Tensor, mask: Tensor, params: AugmentParams,
              confounders: Optional[Tensor] = None) -> Union[tuple[Tensor, Tensor], tuple[Tensor, Tensor, Tensor]]:
        """Apply ``params`` to ``image`` (bilinear) and to ``mask`` and ``confounders`` (nearest)."""
        _check(image, mask, confounders)
        img = tv_tensors.Image(image)
        maps = [_as_mask(mask)] + ([] if confounders is None else [_as_mask(confounders)])
        for name in self.augmentations:
            if not getattr(params, name):
                continue
            if name == "hflip":
                img, maps = TF.horizontal_flip(img), [TF.horizontal_flip(m) for m in maps]
            elif name == "vflip":
                img, maps = TF.vertical_flip(img), [TF.vertical_flip(m) for m in maps]
            else:
                img = TF.rotate(img, params.angle, interpolation=InterpolationMode.BILINEAR, fill=0.0)
                maps = [TF.rotate(m, params.angle, interpolation=InterpolationMode.NEAREST, fill=0)
                        for m in maps]
        out_image = _like(img, image)
        out_maps = [_like(m, ref) for m, ref in zip(maps, (mask, confounders))]
        return (out_image, *out_maps)  # type: ignore[return-value]

    def __call__(self, image: Tensor, mask: Tensor, confounders: Optional[Tensor] = None, *,
                 generator: Optional[torch.Generator] = None
                 ) -> Union[tuple[Tensor, Tensor], tuple[Tensor, Tensor, Tensor]]:
        """Augment one ROI: ``image`` (1,H,W) float, ``mask`` (1,H,W) binary, optional
        ``confounders`` (K,H,W) label maps; returns ``(image, mask)`` or
        ``(image, mask, confounders)`` with the input shapes and dtypes."""
        return self.apply(image, mask, self.sample(generator), confounders)


def _check(image: Tensor, mask: Tensor, confounders: Optional[Tensor]) -> None:
    for name, t in (("image", image), ("mask", mask), ("confounders", confounders)):
        if t is None and name == "confounders":
            continue
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.ndim not in (2, 3):
            raise ValueError(f"{name} must be (H,W) or (C,H,W), got shape {tuple(t.shape)}")
    if not image.is_floating_point():
        raise TypeError(f"image must be a float tensor, got {image.dtype}")
    for name, t in (("mask", mask), ("confounders", confounders)):
        if t is not None and t.shape[-2:] != image.shape[-2:]:
            raise ValueError(f"{name} size {tuple(t.shape[-2:])} differs from image size "
                             f"{tuple(image.shape[-2:])}")


def _as_mask(t: Tensor) -> tv_tensors.Mask:
    # grid_sample has no bool kernel: carry bool masks as uint8.
    return tv_tensors.Mask(t.to(torch.uint8) if t.dtype == torch.bool else t)


def _like(out: Tensor, ref: Tensor) -> Tensor:
    """``out`` with the class, shape and dtype of ``ref`` (a plain tensor for a plain input)."""
    out = out.reshape(ref.shape)
    res = out.as_subclass(type(ref)) if isinstance(ref, tv_tensors.TVTensor) else out.as_subclass(Tensor)
    return res.to(ref.dtype)
