"""Tests of mammo_lib.data.augment: joint flips and rotation of ROI and mask (Sec. 3.2, Sec. 3.2)."""
from __future__ import annotations

import pytest
import torch

from mammo_lib.data.augment import AUGMENTATIONS, AugmentParams, JointAugment

# (augmentations with p=1 and no rotation, flip dims applied by hand)
FLIP_CASES = [
    (("hflip",), (-1,)),
    (("vflip",), (-2,)),
    (("hflip", "vflip"), (-2, -1)),
]

# (constructor kwargs, exception, fragment)
INIT_FAILURES = [
    (dict(augmentations=("hflip", "shear")), ValueError, "valid: \\('hflip', 'vflip', 'rotate'\\)"),
    (dict(augmentations=("hflip", "hflip")), ValueError, "repeated"),
    (dict(p=1.5), ValueError, "probability"),
    (dict(p=-0.1), ValueError, "probability"),
    (dict(max_degrees=-5.0), ValueError, "max_degrees"),
]

# (image, mask, exception, fragment) for __call__
CALL_FAILURES = [
    (torch.zeros(1, 8, 8, dtype=torch.uint8), torch.zeros(1, 8, 8), TypeError, "float"),
    (torch.zeros(1, 8, 8), torch.zeros(1, 8, 9), ValueError, "differs"),
    (torch.zeros(8), torch.zeros(8), ValueError, r"\(H,W\)"),
    (torch.zeros(1, 8, 8).numpy(), torch.zeros(1, 8, 8), TypeError, "torch.Tensor"),
]


def _pair(size: int = 15, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    image = torch.rand(1, size, size, generator=gen)
    mask = (torch.rand(1, size, size, generator=gen) > 0.5).to(torch.uint8)
    return image, mask


def _centroid(t: torch.Tensor) -> torch.Tensor:
    t = t.double().squeeze(0)
    rows, cols = torch.meshgrid(torch.arange(t.shape[0]), torch.arange(t.shape[1]), indexing="ij")
    return torch.stack([(rows * t).sum(), (cols * t).sum()]) / t.sum()


@pytest.mark.parametrize("kwargs, exc, fragment", INIT_FAILURES)
def test_init_failures(kwargs, exc, fragment):
    with pytest.raises(exc, match=fragment):
        JointAugment(**kwargs)


@pytest.mark.parametrize("image, mask, exc, fragment", CALL_FAILURES)
def test_call_failures(image, mask, exc, fragment):
    with pytest.raises(exc, match=fragment):
        JointAugment()(image, mask)


def test_p_zero_is_identity():
    image, mask = _pair()
    out_image, out_mask = JointAugment(p=0.0)(image, mask, generator=torch.Generator().manual_seed(1))
    assert torch.equal(out_image, image) and torch.equal(out_mask, mask)


@pytest.mark.parametrize("augmentations, dims", FLIP_CASES)
def test_flips_by_hand(augmentations, dims):
    image, mask = _pair()
    out_image, out_mask = JointAugment(augmentations, p=1.0)(image, mask)
    assert torch.equal(out_image, torch.flip(image, dims))
    assert torch.equal(out_mask, torch.flip(mask, dims))


def test_rotation_by_90_degrees_is_rot90():
    image, mask = _pair()
    out_image, out_mask = JointAugment(p=1.0).apply(image, mask, AugmentParams(rotate=True, angle=90.0))
    # torchvision: positive angle = counter-clockwise, as torch.rot90 with k=1 over (rows, cols).
    assert torch.allclose(out_image, torch.rot90(image, 1, (-2, -1)), atol=1e-5)
    assert torch.equal(out_mask, torch.rot90(mask, 1, (-2, -1)))


@pytest.mark.parametrize("dtype", [torch.uint8, torch.bool, torch.float32])
def test_rotated_mask_stays_binary_with_dtype_and_shape(dtype):
    image, mask = _pair(31)
    mask = mask.to(dtype)
    augment = JointAugment(("rotate",), p=1.0)
    for seed in range(3):
        out_image, out_mask = augment(image, mask, generator=torch.Generator().manual_seed(seed))
        assert out_mask.dtype == dtype and out_mask.shape == mask.shape and out_image.shape == image.shape
        assert set(torch.unique(out_mask.float()).tolist()) <= {0.0, 1.0}
        assert not torch.equal(out_mask, mask)


def test_two_dimensional_inputs_keep_their_shape():
    image, mask = _pair()
    out_image, out_mask = JointAugment(p=1.0)(image[0], mask[0], generator=torch.Generator().manual_seed(0))
    assert out_image.shape == (15, 15) and out_mask.shape == (15, 15)


def test_same_generator_seed_same_output_and_global_rng_untouched():
    image, mask = _pair()
    augment = JointAugment()
    state = torch.random.get_rng_state()
    runs = [[augment(image, mask, generator=g) for _ in range(4)]
            for g in (torch.Generator().manual_seed(5), torch.Generator().manual_seed(5))]
    assert torch.equal(torch.random.get_rng_state(), state)
    for (a_img, a_msk), (b_img, b_msk) in zip(*runs):
        assert torch.equal(a_img, b_img) and torch.equal(a_msk, b_msk)
    other = [augment(image, mask, generator=torch.Generator().manual_seed(6)) for _ in range(4)]
    assert not all(torch.equal(a[0], b[0]) for a, b in zip(runs[0], other))


def test_angles_uniform_within_bounds():
    augment = JointAugment(("rotate",), p=1.0, max_degrees=30.0)
    gen = torch.Generator().manual_seed(0)
    angles = torch.tensor([augment.sample(gen).angle for _ in range(400)])
    assert angles.abs().max() <= 30.0
    assert angles.min() < -25.0 and angles.max() > 25.0
    assert abs(angles.mean().item()) < 3.0  # sd of the mean: 30/sqrt(3)/20 = 0.87


def test_each_operation_drawn_with_probability_p():
    augment = JointAugment(p=0.5)
    gen = torch.Generator().manual_seed(0)
    draws = [augment.sample(gen) for _ in range(400)]
    for name in AUGMENTATIONS:
        rate = sum(getattr(d, name) for d in draws) / len(draws)
        assert 0.4 < rate < 0.6, name
    assert all(d.angle == 0.0 for d in draws if not d.rotate)


def test_image_and_mask_move_together():
    """A 3x3 marker lands at the same place in the image and in the mask."""
    image = torch.zeros(1, 33, 33)
    image[0, 5:8, 20:23] = 1.0
    mask = (image > 0).to(torch.uint8)
    augment = JointAugment(p=1.0)
    for seed in range(5):
        out_image, out_mask = augment(image, mask, generator=torch.Generator().manual_seed(seed))
        assert out_mask.sum() > 0
        assert torch.allclose(_centroid(out_image), _centroid(out_mask), atol=0.5)
        assert not torch.allclose(_centroid(out_mask), _centroid(mask), atol=0.5)


def test_confounders_follow_the_mask():
    image, mask = _pair(31)
    confounders = torch.cat([mask, 1 - mask]).float()
    out_image, out_mask, out_conf = JointAugment(p=1.0)(image, mask, confounders,
                                                        generator=torch.Generator().manual_seed(2))
    assert out_conf.shape == (2, 31, 31) and out_conf.dtype == torch.float32
    assert torch.equal(out_conf[0], out_mask[0].float())
    assert torch.equal(out_image, JointAugment(p=1.0)(image, mask, generator=torch.Generator().manual_seed(2))[0])
