"""Tests of mammo_lib.networks.transfer: the teacher and the knowledge-transfer loss (Eq. 5, Sec. 4.1)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mammo_lib.networks.activation import GroupActivations, activation_map
from mammo_lib.networks.densenet import build_model, feature_grid, mask_to_model_input, set_trainable, to_model_input
from mammo_lib.networks.transfer import KnowledgeTransferLoss, make_teacher, teacher_maps

LN2, S2 = math.log(2.0), math.sqrt(2.0)


def _maps(*rows: list[float]) -> torch.Tensor:
    """(N, 2, 2) maps from 4-vectors."""
    return torch.tensor(rows, dtype=torch.float64).view(len(rows), 2, 2)


# (loss kwargs, roi maps, mask maps, expected parts). logits are zeros (CE = ln 2 for any target).
# Paper d([1,0,0,0], [0,1,0,0]) = sqrt 2, "at" d = 1/2; identical maps give 0.
LOSS_CASES = [
    (dict(beta=0.0), {4: _maps([1, 0, 0, 0])}, {4: _maps([0, 1, 0, 0])},
     {"ce": LN2, "d4": S2, "total": LN2}),
    (dict(beta=2.0), {4: _maps([1, 0, 0, 0])}, {4: _maps([0, 1, 0, 0])},
     {"ce": LN2, "d4": S2, "total": LN2 + S2}),
    (dict(beta=1000.0, form="at"), {4: _maps([1, 0, 0, 0])}, {4: _maps([0, 1, 0, 0])},
     {"ce": LN2, "d4": 0.5, "total": LN2 + 250.0}),
    (dict(beta=1.0, omega=(3, 4)), {3: _maps([2, 0, 0, 0]), 4: _maps([1, 1, 0, 0])},
     {3: _maps([0, 0, 0, 7]), 4: _maps([1, 0, 0, 0])},
     {"ce": LN2, "d3": S2, "d4": math.sqrt(2 - S2), "total": LN2 + (S2 + math.sqrt(2 - S2)) / 2}),
]

# (loss kwargs, exception, fragment)
INIT_FAILURES = [
    (dict(beta=-1.0), ValueError, "beta"),
    (dict(beta=float("nan")), ValueError, "beta"),
    (dict(omega=()), ValueError, "empty"),
    (dict(omega=(0, 4)), ValueError, "unknown groups"),
    (dict(form="cosine"), ValueError, "form"),
]


@pytest.fixture
def model():
    return build_model("small", seed=0)


def _batch(n: int = 2, size: int = 64, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    rois = to_model_input(torch.rand(n, size, size, generator=gen))
    masks = mask_to_model_input((torch.rand(n, size, size, generator=gen) > 0.5).to(torch.uint8))
    return rois, masks, torch.arange(n) % 2


@pytest.mark.parametrize("kwargs, roi, mask, expected", LOSS_CASES)
def test_loss_hand_values(kwargs, roi, mask, expected):
    loss_fn = KnowledgeTransferLoss(**kwargs)
    loss, parts = loss_fn(torch.zeros(1, 2, dtype=torch.float64), torch.tensor([1]), roi, mask)
    assert set(parts) == set(expected)
    for key, value in expected.items():
        assert parts[key] == pytest.approx(value, abs=1e-9), key
    assert loss.item() == pytest.approx(expected["total"], abs=1e-9)


def test_batch_mean_of_distances():
    loss_fn = KnowledgeTransferLoss(beta=2.0)
    roi = _maps([1, 0, 0, 0], [0, 0, 3, 0])
    mask = _maps([0, 1, 0, 0], [0, 0, 1, 0])  # d = sqrt 2, then 0
    logits = torch.tensor([[2.0, 0.0], [0.0, 0.0]], dtype=torch.float64)
    loss, parts = loss_fn(logits, torch.tensor([0, 1]), {4: roi}, {4: mask})
    ce = (math.log(1 + math.exp(-2.0)) + LN2) / 2
    assert parts["d4"] == pytest.approx(S2 / 2)
    assert loss.item() == pytest.approx(ce + S2 / 2)


def test_beta_zero_equals_cross_entropy_on_a_network(model):
    rois, masks, y = _batch()
    teacher = make_teacher(model)
    with GroupActivations(model, (4,)) as acts:
        logits = model(rois)
    loss, _ = KnowledgeTransferLoss(beta=0.0)(logits, y, {4: activation_map(acts[4])},
                                              teacher_maps(teacher, masks, (4,)))
    assert torch.equal(loss, F.cross_entropy(logits, y))


def test_gradients_reach_roi_maps_not_mask_maps():
    roi = _maps([1, 2, 0, 0]).requires_grad_()
    mask = _maps([0, 1, 0, 3]).requires_grad_()
    loss, _ = KnowledgeTransferLoss(beta=1.0)(torch.zeros(1, 2, requires_grad=True), torch.tensor([0]),
                                              {4: roi}, {4: mask})
    loss.backward()
    assert roi.grad is not None and roi.grad.abs().sum() > 0
    assert mask.grad is None


@pytest.mark.parametrize("kwargs, exc, fragment", INIT_FAILURES)
def test_init_failures(kwargs, exc, fragment):
    with pytest.raises(exc, match=fragment):
        KnowledgeTransferLoss(**kwargs)


def test_forward_failures():
    loss_fn = KnowledgeTransferLoss(omega=(3, 4))
    maps = {4: _maps([1, 0, 0, 0])}
    with pytest.raises(KeyError, match="group 3"):
        loss_fn(torch.zeros(1, 2), torch.tensor([0]), maps, maps)
    loss_fn = KnowledgeTransferLoss()
    with pytest.raises(ValueError, match="batch of 2"):
        loss_fn(torch.zeros(2, 2), torch.tensor([0, 1]), maps, maps)


def test_make_teacher_is_a_frozen_independent_copy(model):
    model.train()
    teacher = make_teacher(model)
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    assert model.training and all(p.requires_grad for p in model.parameters())
    with torch.no_grad():
        teacher.classifier.bias.add_(1.0)
    assert not torch.equal(teacher.classifier.bias, model.classifier.bias)


def test_teacher_maps_no_gradients_and_mode_restored(model):
    rois, masks, _ = _batch(3)
    model.train()  # a trainable model used as teacher: still no gradients, eval-mode maps
    stats = model.features.norm0.running_mean.clone()
    maps = teacher_maps(model, masks, (2, 4))
    assert set(maps) == {2, 4}
    assert maps[2].shape == (3, 8, 8) and maps[4].shape == (3, 2, 2)
    assert not maps[4].requires_grad and maps[4].grad_fn is None
    assert model.training and torch.equal(model.features.norm0.running_mean, stats)
    model.eval()
    with torch.no_grad():
        expected = activation_map(F.relu(model.features(masks)))
    assert torch.allclose(maps[4], expected, atol=1e-6)
    with pytest.raises(ValueError, match=r"\(N,3,H,W\)"):
        teacher_maps(model, masks[:, 0], (4,))


def test_transfer_term_changes_trained_gradients(model):
    """The d term reaches the trainable group-4 parameters through the hooks."""
    set_trainable(model, "group4+classifier")
    teacher = make_teacher(model)
    rois, masks, y = _batch()
    grads = {}
    for beta in (0.0, 10.0):
        model.zero_grad()
        with GroupActivations(model, (4,), mode="train") as acts:
            logits = model(rois)
        loss, _ = KnowledgeTransferLoss(beta=beta)(logits, y, {4: activation_map(acts[4])},
                                                   teacher_maps(teacher, masks, (4,)))
        loss.backward()
        grads[beta] = model.features.norm5.weight.grad.clone()
        assert model.features.conv0.weight.grad is None
    assert not torch.allclose(grads[0.0], grads[10.0])


@pytest.mark.slow
def test_full_densenet121_at_224():
    model = build_model("densenet121", weights=None, seed=0)
    assert model.classifier.in_features == 1024 and model.classifier.out_features == 2
    assert feature_grid(model, 224) == 7
    set_trainable(model, "group4+classifier")
    teacher = make_teacher(model)
    gen = torch.Generator().manual_seed(0)
    rois = to_model_input(torch.rand(1, 224, 224, generator=gen))
    masks = mask_to_model_input((torch.rand(1, 224, 224, generator=gen) > 0.5).to(torch.uint8))
    with GroupActivations(model, (1, 2, 3, 4), mode="train") as acts:
        logits = model(rois)
    shapes = {g: tuple(acts[g].shape) for g in (1, 2, 3, 4)}
    assert shapes == {1: (1, 256, 56, 56), 2: (1, 512, 28, 28), 3: (1, 1024, 14, 14), 4: (1, 1024, 7, 7)}
    loss, parts = KnowledgeTransferLoss(beta=1.0)(logits, torch.tensor([1]), {4: activation_map(acts[4])},
                                                  teacher_maps(teacher, masks, (4,)))
    loss.backward()
    assert parts["d4"] > 0
    assert model.features.norm5.weight.grad.abs().sum() > 0
    assert model.features.denseblock3.denselayer1.conv1.weight.grad is None
