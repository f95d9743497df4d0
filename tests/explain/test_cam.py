"""Tests for mammo_lib.explain.cam: Grad-CAM / HiResCAM against a hand computation with torch.autograd."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mammo_lib.explain.cam import DenseNetCAMHead, cam_map
from mammo_lib.networks.densenet import build_model, set_trainable, to_model_input

SIZE = 96  # the small DenseNet divides by 32: a 3x3 group-4 grid

ERROR_CASES = [
    ("method", dict(method="scorecam"), ValueError, "unknown method"),
    ("target layer", dict(target_layer="conv0"), ValueError, "unknown target_layer"),
    ("class out of range", dict(target_class=2), ValueError, r"\[0, 1\]"),
    ("class list length", dict(target_class=[0]), ValueError, "one per image"),
    ("bool class", dict(target_class=True), ValueError, "target_class"),
    ("batch size", dict(batch_size=0), ValueError, "batch_size"),
]


def warmed_model(seed: int) -> torch.nn.Module:
    """A small DenseNet whose BatchNorm statistics moved off their defaults (else its CAMs are often 0)."""
    m = build_model("small", seed=seed)
    with torch.no_grad():
        m.train()
        m(to_model_input(torch.rand(8, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))))
    m.eval()
    return m


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return warmed_model(1)


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(0).random((3, SIZE, SIZE)).astype(np.float32)


def _minmax(x: torch.Tensor) -> torch.Tensor:
    lo = x.amin(dim=(1, 2), keepdim=True)
    x = x - lo
    return x / (1e-7 + x.amax(dim=(1, 2), keepdim=True))


def hand_cam(model: torch.nn.Module, images: np.ndarray, method: str, layer: str,
             target: list[int] | None = None) -> np.ndarray:
    """Eq. of refs. [49, 50] by torch.autograd, then pytorch-grad-cam's scaling (min-max, bilinear, min-max)."""
    model.eval()
    x = to_model_input(torch.from_numpy(images))
    n5 = model.features(x)                            # norm5 output
    n5.retain_grad()
    a = F.relu(n5)
    a.retain_grad()
    logits = model.classifier(a.mean(dim=(2, 3)))
    k = logits.argmax(1) if target is None else torch.tensor(target)
    logits[torch.arange(len(k)), k].sum().backward()
    act, grad = (a, a.grad) if layer == "relu" else (n5, n5.grad)
    if method == "gradcam":
        cam = (grad.mean(dim=(2, 3), keepdim=True) * act).sum(1)
    else:
        cam = (grad * act).sum(1)
    cam = _minmax(F.relu(cam.detach()))
    up = F.interpolate(cam[:, None], size=images.shape[1:], mode="bilinear", align_corners=False)[:, 0]
    model.zero_grad(set_to_none=True)
    return _minmax(up).numpy()


@pytest.mark.parametrize("method", ["gradcam", "hirescam"])
@pytest.mark.parametrize("layer", ["relu", "norm5"])
def test_matches_hand_computation(model, images, method, layer) -> None:
    got = cam_map(model, images, method=method, target_layer=layer)
    assert got.shape == images.shape and got.dtype == np.float32
    assert got.min() >= 0 and np.allclose(got.reshape(len(got), -1).max(1), 1.0)   # no dead map
    np.testing.assert_allclose(got, hand_cam(model, images, method, layer), atol=1e-4)


def test_target_class_and_methods(model, images) -> None:
    for target in ([0, 1, 0], [1, 1, 1]):
        got = cam_map(model, images, target_class=target, target_layer="norm5")
        np.testing.assert_allclose(got, hand_cam(model, images, "gradcam", "norm5", target), atol=1e-4)
    np.testing.assert_allclose(cam_map(model, images, target_class=1),
                               cam_map(model, images, target_class=[1, 1, 1]), atol=0)
    # After the ReLU dY/dA is constant over space (GAP + linear): the two methods coincide there,
    # while the ReLU's gate separates them at norm5.
    np.testing.assert_allclose(cam_map(model, images, method="gradcam"),
                               cam_map(model, images, method="hirescam"), atol=1e-4)
    assert np.abs(cam_map(model, images, method="gradcam", target_layer="norm5")
                  - cam_map(model, images, method="hirescam", target_layer="norm5")).max() > 1e-3


def test_batch_equals_one_by_one(model, images) -> None:
    batch = cam_map(model, images, method="hirescam", target_layer="norm5", batch_size=2)
    for i in range(len(images)):
        single = cam_map(model, images[i:i + 1], method="hirescam", target_layer="norm5")
        np.testing.assert_allclose(batch[i], single[0], atol=1e-5)


def _hook_counts(m: torch.nn.Module) -> list[int]:
    return [len(mod._forward_hooks) + len(mod._forward_pre_hooks) + len(mod._backward_hooks)
            for mod in m.modules()]


def test_caller_state_restored(images) -> None:
    m = warmed_model(2)
    trainable = set(set_trainable(m, "group4+classifier"))
    m.train()
    m.features.denseblock1.eval()                      # a mixed mode must come back as it was
    modes = [mod.training for mod in m.modules()]
    marker = torch.full_like(m.classifier.weight, 0.5)
    m.classifier.weight.grad = marker
    hooks = _hook_counts(m)
    stats = m.features.norm5.running_mean.clone()
    with torch.inference_mode():                       # gradients are still taken inside
        out = cam_map(m, images[:2], target_layer="norm5")
    assert out.shape == (2, SIZE, SIZE) and out.max() > 0
    assert [mod.training for mod in m.modules()] == modes
    assert _hook_counts(m) == hooks
    assert {n for n, p in m.named_parameters() if p.requires_grad} == trainable
    assert m.classifier.weight.grad is marker
    assert all(p.grad is None for n, p in m.named_parameters() if n != "classifier.weight")
    assert torch.equal(stats, m.features.norm5.running_mean)


def test_head_equals_densenet_forward(model, images) -> None:
    x = to_model_input(torch.from_numpy(images))
    with torch.no_grad():
        torch.testing.assert_close(DenseNetCAMHead(model)(x), model(x))
    assert DenseNetCAMHead(model).features is model.features


@pytest.mark.parametrize("name,kwargs,exc,match", ERROR_CASES, ids=[c[0] for c in ERROR_CASES])
def test_errors(model, images, name, kwargs, exc, match) -> None:
    with pytest.raises(exc, match=match):
        cam_map(model, images, **kwargs)


def test_input_errors(model) -> None:
    with pytest.raises(ValueError, match=r"\(N, S, S\)"):
        cam_map(model, np.zeros((SIZE, SIZE), np.float32))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        cam_map(model, np.full((1, SIZE, SIZE), 3.0, np.float32))
    with pytest.raises(TypeError, match="DenseNet"):
        cam_map(torch.nn.Linear(2, 2), np.zeros((1, SIZE, SIZE), np.float32))
