"""Tests of mammo_lib.networks.activation: group hooks, Eq. 3 maps, Eq. 4 distances (Sec. 3.3, 4.1)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mammo_lib.networks.activation import (
    GROUP_LAYERS, GroupActivations, activation_distance, activation_distances, activation_map,
)
from mammo_lib.networks.densenet import build_model, set_trainable, to_model_input

S2 = math.sqrt(2.0)

# (f_mask, f_roi, paper d, "at" d), single 2x2 maps written as 4-vectors; values by hand.
DISTANCE_CASES = [
    ([1, 0, 0, 0], [0, 1, 0, 0], S2, 2 / 4),                          # orthogonal unit maps
    ([1, 1, 0, 0], [1, 0, 0, 0], math.sqrt(2 - S2), (2 - S2) / 4),      # 45 degrees apart
    ([3, 0, 4, 0], [3, 0, 4, 0], 0.0, 0.0),                           # identical
    ([3, 0, 4, 0], [0.3, 0, 0.4, 0], 0.0, 0.0),                       # scale invariance
    ([0, 0, 0, 0], [0, 0, 5, 0], 1.0, 1 / 4),                         # zero map: eps, no NaN
]

# (call, exception, message fragment)
FAILURES = [
    (lambda m: GroupActivations(m, groups=(5,)), ValueError, "unknown groups"),
    (lambda m: GroupActivations(m, groups=()), ValueError, "empty"),
    (lambda m: GroupActivations(m, mode="training"), ValueError, "mode"),
    (lambda m: GroupActivations(torch.nn.Linear(2, 2)), ValueError, "DenseNet"),
    (lambda m: activation_map(torch.zeros(2, 3, 4)), ValueError, r"\(N,C,H,W\)"),
    (lambda m: activation_distance(torch.zeros(1, 2, 2), torch.zeros(1, 2, 3)), ValueError, "differ"),
    (lambda m: activation_distance(torch.zeros(2, 2), torch.zeros(2, 2)), ValueError, r"\(N,H,W\)"),
    (lambda m: activation_distance(torch.zeros(1, 2, 2), torch.zeros(1, 2, 2), form="l1"), ValueError, "form"),
    (lambda m: activation_distances(m, np.zeros((2, 32, 32)), np.zeros((2, 32, 16))), ValueError, "same shape"),
    (lambda m: activation_distances(m, np.zeros((2, 32, 32)), np.zeros((2, 32, 32)), batch_size=0),
     ValueError, "batch_size"),
]

# group -> (channels, side) of "small" at 64 px: sides are input/4, /8, /16, /32 like 56/28/14/7 at 224.
SMALL_SHAPES = {1: (32, 16), 2: (32, 8), 3: (32, 4), 4: (32, 2)}


@pytest.fixture
def model():
    return build_model("small", seed=0)


def _x(n: int = 3, size: int = 64, seed: int = 0) -> torch.Tensor:
    return to_model_input(torch.rand(n, size, size, generator=torch.Generator().manual_seed(seed)))


def _reference(model, x: torch.Tensor, group: int) -> torch.Tensor:
    """Group activation by slicing model.features (conv0, norm0, relu0, pool0, db1, t1, db2, t2, db3, ...)."""
    if group == 4:
        return F.relu(model.features(x))
    return model.features[: 3 + 2 * group](x)


@pytest.mark.parametrize("call, exc, fragment", FAILURES)
def test_failures(model, call, exc, fragment):
    with pytest.raises(exc, match=fragment):
        call(model)


def test_group_layers_are_the_spec_modules(model):
    names = dict(model.named_modules())
    assert all(GROUP_LAYERS[g] in names for g in (1, 2, 3, 4))
    assert GROUP_LAYERS[4] == "features.norm5"


def test_group_activations_match_manual_forward(model):
    x = _x()
    model.eval()
    with GroupActivations(model, groups=(1, 2, 3, 4)) as acts:
        model(x)
    with torch.no_grad():
        for g, (c, side) in SMALL_SHAPES.items():
            assert acts[g].shape == (3, c, side, side)
            assert torch.allclose(acts[g], _reference(model, x, g), atol=1e-6), g
    assert acts[4].min() >= 0  # read after norm5 and the ReLU


def test_gradients_flow_through_hooked_norm5_despite_inplace_relu(model):
    x = _x(2)
    model.eval()
    with GroupActivations(model, groups=(4,)) as acts:
        logits = model(x)
    (logits.sum() + activation_map(acts[4]).sum()).backward()
    hooked = model.features.norm5.weight.grad.clone()
    model.zero_grad()
    features = model.features(x)
    reference = F.relu(features)
    out = model.classifier(torch.flatten(F.adaptive_avg_pool2d(reference, 1), 1))
    (out.sum() + activation_map(reference).sum()).backward()
    assert hooked.abs().sum() > 0
    assert torch.allclose(hooked, model.features.norm5.weight.grad, atol=1e-5)


def test_detach_option(model):
    with GroupActivations(model, groups=(3, 4), detach=True) as acts:
        model(_x(1))
    assert not acts[3].requires_grad and not acts[4].requires_grad


def test_key_errors(model):
    with GroupActivations(model, groups=(4,)) as acts:
        with pytest.raises(KeyError, match="no activation yet"):
            acts[4]
        model(_x(1))
        with pytest.raises(KeyError, match="not hooked"):
            acts[2]


def test_hooks_removed_and_modes_restored_even_on_error(model):
    model.train()
    model.features.norm0.eval()
    flags = {n: m.training for n, m in model.named_modules()}
    gacts = GroupActivations(model, groups=(1, 2, 3, 4), mode="eval")
    with pytest.raises(RuntimeError, match="boom"):
        with gacts:
            assert len(gacts.hooks) == 4
            assert not any(m.training for m in model.modules())
            raise RuntimeError("boom")
    assert gacts.hooks == {}
    assert all(not m._forward_hooks for m in model.modules())
    assert {n: m.training for n, m in model.named_modules()} == flags


def test_train_mode_keeps_frozen_batchnorm_in_eval(model):
    set_trainable(model, "group4+classifier")
    model.eval()
    with GroupActivations(model, groups=(4,), mode="train"):
        assert model.training and model.features.norm5.training
        assert not model.features.norm0.training
    assert not model.training and not model.features.norm5.training


def test_batched_equals_one_by_one(model):
    x = _x(3)
    model.eval()
    with GroupActivations(model, groups=(2, 4), detach=True) as acts:
        model(x)
        batched = {g: acts[g] for g in (2, 4)}
        singles = {g: [] for g in (2, 4)}
        for i in range(3):
            model(x[i:i + 1])
            for g in (2, 4):
                singles[g].append(acts[g])
    for g in (2, 4):
        assert torch.allclose(batched[g], torch.cat(singles[g]), atol=1e-5)


def test_activation_map_hand_computed():
    A = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]],
                       [[-1.0, 0.0], [2.0, -2.0]]]])  # (1, 2, 2, 2)
    expected = torch.tensor([[[1.0, 2.0], [6.5, 10.0]]])  # ((1+1)/2, (4+0)/2; (9+4)/2, (16+4)/2)
    assert torch.equal(activation_map(A), expected)


@pytest.mark.parametrize("fm, fr, paper, at", DISTANCE_CASES)
def test_activation_distance_hand_values(fm, fr, paper, at):
    f_mask = torch.tensor(fm, dtype=torch.float64).view(1, 2, 2)
    f_roi = torch.tensor(fr, dtype=torch.float64).view(1, 2, 2).requires_grad_()
    d = activation_distance(f_mask, f_roi)
    assert d.shape == (1,)
    assert d.item() == pytest.approx(paper, abs=1e-9)
    assert activation_distance(f_mask, f_roi, form="at").item() == pytest.approx(at, abs=1e-9)
    d.sum().backward()
    assert torch.isfinite(f_roi.grad).all()


def test_activation_distance_batch_equals_rows():
    gen = torch.Generator().manual_seed(1)
    fm, fr = torch.rand(4, 3, 3, generator=gen), torch.rand(4, 3, 3, generator=gen)
    batched = activation_distance(fm, fr)
    rows = torch.cat([activation_distance(fm[i:i + 1], fr[i:i + 1]) for i in range(4)])
    assert torch.allclose(batched, rows)
    assert torch.allclose(activation_distance(fm, fr, form="at"), batched ** 2 / 9)


def test_activation_distances_frame(model):
    gen = np.random.default_rng(0)
    rois = gen.random((3, 64, 64)).astype(np.float32)
    masks = (gen.random((3, 64, 64)) > 0.5).astype(np.uint8)
    model.train()
    stats = model.features.norm0.running_mean.clone()
    df = activation_distances(model, rois, masks, batch_size=2, progress=False)
    assert list(df.columns) == ["sample", "group", "d"] and len(df) == 12
    assert model.training and torch.equal(model.features.norm0.running_mean, stats)
    one_by_one = activation_distances(model, rois, masks, batch_size=1, progress=False)
    assert np.allclose(df["d"], one_by_one["d"], atol=1e-5)
    # sample 1, group 4 by hand: Eq. 4 between the eval-mode maps of mask 1 and ROI 1.
    model.eval()
    with torch.no_grad():
        fm = activation_map(_reference(model, to_model_input(torch.from_numpy(masks[1:2]).float()), 4))
        fr = activation_map(_reference(model, to_model_input(torch.from_numpy(rois[1:2])), 4))
    d = df.query("sample == 1 and group == 4")["d"].item()
    assert d == pytest.approx(activation_distance(fm, fr).item(), abs=1e-5)
    assert 0 < d <= 2  # 2x2 maps: a 1x1 map would always give 0
