"""Tests of mammo_lib.engines.trunk_cache: the cached frozen trunk equals the full network (logits, Eq. 5
loss, group-4 maps), flips, the controls' targets, and reproducible head training."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from support.tiny import S, data  # tiny ROIs and masks, small DenseNet: 2x2 group-4 grid at 64 px

from mammo_lib.networks.activation import GroupActivations, activation_map
from mammo_lib.networks.densenet import apply_train_mode, build_model, mask_to_model_input, set_trainable, to_model_input
from mammo_lib.engines.training import TrainConfig, _step_loss
from mammo_lib.networks.transfer import KnowledgeTransferLoss, make_teacher
from mammo_lib.networks.densenet import passthrough_channels
from mammo_lib.engines.trunk_cache import (FLIPS, TrunkCache, _target_maps, build_cache, derangement, group4_activation,
                                   group4_maps_cached, head_logits, head_loss, predict_cached, rolled_maps, train_head,
                                   trunk_forward)


# name, build_cache kwargs, expected error
BUILD_FAIL_CASES = [
    ("unknown flip", dict(flips=("rot90",)), "flips must be"),
    ("no flip", dict(flips=()), "flips must be"),
]

TRAIN_FAIL_CASES = [
    ("omega 3", dict(omega=(3, 4)), "omega=(4,)"),
    ("all layers", dict(trainable="all"), "group4+classifier"),
]


@pytest.mark.parametrize("name,kw,msg", BUILD_FAIL_CASES)
def test_build_cache_rejects(name, kw, msg):
    x, m, y = data(2)
    with pytest.raises(ValueError, match=msg.replace("(", r"\(").replace(")", r"\)")):
        build_cache(build_model("small", seed=0), x, m, progress=False, **kw)


@pytest.mark.parametrize("name,kw,msg", TRAIN_FAIL_CASES)
def test_train_head_rejects(name, kw, msg):
    x, m, y = data(4)
    model = build_model("small", seed=0)
    c = build_cache(model, x, m, labels=y, progress=False)
    with pytest.raises(ValueError, match=msg.replace("(", r"\(").replace(")", r"\)").replace("+", r"\+")):
        train_head(model, c, c, TrainConfig(**kw))


@pytest.mark.parametrize("head", ["gap", "flatten", "gap_own"])
def test_cached_logits_equal_full_network(head):
    x, m, y = data()
    model = build_model("small", seed=1, head=head, input_size=S)
    model.eval()
    with torch.no_grad():
        full = model(to_model_input(torch.from_numpy(x)))
        cached = head_logits(model, group4_activation(model, trunk_forward(model, to_model_input(torch.from_numpy(x)))))
    torch.testing.assert_close(cached, full, rtol=0, atol=1e-5)
    c = build_cache(model, x, m, labels=y, progress=False)
    p = predict_cached(model, c)
    torch.testing.assert_close(torch.from_numpy(p), torch.softmax(full.double(), 1), rtol=0, atol=1e-5)


def test_cache_flips_are_the_flipped_inputs():
    x, m, y = data(3)
    model = build_model("small", seed=2)
    c = build_cache(model, x, m, labels=y, progress=False)
    assert c.features.shape[:2] == (3, 4)
    model.eval()
    with torch.no_grad():
        for code, dims in enumerate([(), (-1,), (-2,), (-2, -1)]):
            xi = torch.from_numpy(x).flip(dims) if dims else torch.from_numpy(x)
            torch.testing.assert_close(c.features[:, code], trunk_forward(model, to_model_input(xi)), rtol=0, atol=1e-5)
    # oracle target: the flipped mask average-pooled to the grid
    g = c.oracle_maps.shape[-1]
    want = F.adaptive_avg_pool2d(torch.from_numpy(m).float().flip(-1)[:, None], g)[:, 0]
    torch.testing.assert_close(c.oracle_maps[:, 1], want)


def test_cached_kt_loss_equals_uncached():
    """Eq. 5 on the cache = Eq. 5 through the whole network with a frozen teacher (train mode of
    group 4, frozen BatchNorms in eval as apply_train_mode sets them)."""
    x, m, y = data()
    model = build_model("small", seed=3)
    teacher = make_teacher(model)
    c = build_cache(model, x, m, labels=y, progress=False, teacher=teacher)
    cfg = TrainConfig(method="transfer", beta=8.0)
    set_trainable(model, "group4+classifier")
    apply_train_mode(model)
    xt, mt, yt = torch.from_numpy(x), torch.from_numpy(m), torch.from_numpy(y)
    loss_full, parts_full = _step_loss(model, xt, mt, yt, cfg, torch.device("cpu"),
                                       KnowledgeTransferLoss(8.0, (4,), "paper"), teacher, None)
    apply_train_mode(model)
    loss_c, parts_c = head_loss(model, c.features[:, 0], yt, c.teacher_maps[:, 0], cfg)
    torch.testing.assert_close(loss_c, loss_full, rtol=0, atol=1e-5)
    assert parts_c["d4"] == pytest.approx(parts_full["d4"], abs=1e-5)


def test_teacher_maps_are_eq3_of_the_mask_forward():
    x, m, y = data(4)
    model = build_model("small", seed=4)
    c = build_cache(model, x, m, labels=y, progress=False)
    with torch.no_grad(), GroupActivations(model, (4,), mode="eval", detach=True) as acts:
        model(mask_to_model_input(torch.from_numpy(m)))
        want = activation_map(acts[4])
    torch.testing.assert_close(c.teacher_maps[:, 0], want, rtol=0, atol=1e-6)


@pytest.mark.parametrize("n", [2, 3, 7, 50])
def test_derangement_has_no_fixed_point(n):
    p = derangement(n, seed=n)
    assert sorted(p.tolist()) == list(range(n))
    assert (p != np.arange(n)).all()


def test_derangement_needs_two():
    with pytest.raises(ValueError, match="at least 2"):
        derangement(1, 0)


@pytest.mark.parametrize("target", ["teacher", "shuffled", "oracle", "uniform", "rolled"])
def test_train_head_reproducible_and_trunk_untouched(target):
    x, m, y = data(12)
    c = build_cache(build_model("small", seed=5), x, m, labels=y, progress=False)
    tr, va = c.subset(range(8)), c.subset(range(8, 12))
    cfg = TrainConfig(method="transfer", beta=8.0, epochs=3, batch_size=4, lr=1e-2, seed=7,
                      augment=("hflip", "vflip", "rotate"))
    runs = []
    for _ in range(2):
        model = build_model("small", seed=5)
        before = {k: v.clone() for k, v in model.state_dict().items() if k.startswith("features.conv0")}
        res = train_head(model, tr, va, cfg, target=target, shuffle_seed=1)
        runs.append(res.history[["train_loss", "val_loss"]].to_numpy())
        for k, v in before.items():
            torch.testing.assert_close(model.state_dict()[k], v)
        assert res.history["train_d4"].notna().all()
    np.testing.assert_array_equal(runs[0], runs[1])


def test_finetune_has_no_transfer_term():
    x, m, y = data(8)
    c = build_cache(build_model("small", seed=6), x, m, labels=y, progress=False)
    res = train_head(build_model("small", seed=6), c.subset(range(6)), c.subset(range(6, 8)),
                     TrainConfig(method="finetune", epochs=2, batch_size=3, seed=0))
    assert res.history["train_d4"].isna().all()
    assert (res.history["train_loss"] == res.history["train_ce"]).all()


def test_cache_roundtrip(tmp_path):
    x, m, y = data(3)
    c = build_cache(build_model("small", seed=0), x, m, labels=y, ids=["a", "b", "c"], progress=False)
    d = TrunkCache.load(c.save(tmp_path / "c.pt"))
    torch.testing.assert_close(d.features, c.features)
    assert d.ids == ["a", "b", "c"] and d.flips == FLIPS
    np.testing.assert_array_equal(d.labels, y)


@pytest.mark.slow
def test_densenet121_224_cached_path_equals_full_network():
    """The paper's network at 224 px: 7x7 grid; cached logits and Eq. 5 loss equal the full path."""
    rng = np.random.default_rng(0)
    x = rng.random((2, 224, 224), dtype=np.float32)
    m = np.zeros((2, 224, 224), np.uint8)
    m[:, 80:150, 60:170] = 1
    y = np.array([0, 1])
    model = build_model("densenet121", seed=0)
    teacher = make_teacher(model)
    c = build_cache(model, x, m, labels=y, flips=("none",), teacher=teacher, batch_size=2, progress=False)
    assert c.features.shape == (2, 1, 512, 7, 7) and c.teacher_maps.shape == (2, 1, 7, 7)
    model.eval()
    with torch.no_grad():
        full = model(to_model_input(torch.from_numpy(x)))
    torch.testing.assert_close(torch.from_numpy(predict_cached(model, c)), torch.softmax(full.double(), 1),
                               rtol=0, atol=1e-5)
    cfg = TrainConfig(method="transfer", beta=22.0)
    set_trainable(model, "group4+classifier")
    apply_train_mode(model)
    with torch.no_grad():
        loss_full, _ = _step_loss(model, torch.from_numpy(x), torch.from_numpy(m), torch.from_numpy(y), cfg,
                                  torch.device("cpu"), KnowledgeTransferLoss(22.0, (4,), "paper"), teacher, None)
        apply_train_mode(model)
        loss_c, _ = head_loss(model, c.features[:, 0], torch.from_numpy(y), c.teacher_maps[:, 0], cfg)
    torch.testing.assert_close(loss_c, loss_full, rtol=0, atol=1e-5)


# rolled null target of arange(9) on a 3x3 grid (s = 1): per flip, (rows, cols) shifted by (+-1, +-1),
# -1 along a flipped axis (hflip: columns, vflip: rows), worked out by hand
ROLLED_3X3 = {
    "none": [[8, 6, 7], [2, 0, 1], [5, 3, 4]],     # rows +1, cols +1
    "hflip": [[7, 8, 6], [1, 2, 0], [4, 5, 3]],    # rows +1, cols -1
    "vflip": [[5, 3, 4], [8, 6, 7], [2, 0, 1]],    # rows -1, cols +1
    "hvflip": [[4, 5, 3], [7, 8, 6], [1, 2, 0]],   # rows -1, cols -1
}


def test_rolled_maps_by_hand():
    m = torch.arange(9.0).view(1, 1, 3, 3).expand(1, 4, 3, 3)
    got = rolled_maps(m, FLIPS)
    for j, name in enumerate(FLIPS):
        assert got[0, j].tolist() == ROLLED_3X3[name], name
    # even grid: +s = -s modulo g, every flip the same roll (2x2: the diagonal swap)
    two = rolled_maps(torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]] * 4]), FLIPS)
    assert all(two[0, j].tolist() == [[4.0, 3.0], [2.0, 1.0]] for j in range(4))


def test_rolled_maps_move_with_the_flip():
    """The target of a flipped ROI is the flipped target of the ROI: flip(rolled[:, f]) equals the
    unflipped-frame roll of flip(maps[:, f]), for an odd grid (7) where +s and -s differ."""
    g = torch.rand(2, 4, 7, 7, generator=torch.Generator().manual_seed(0))
    r = rolled_maps(g, FLIPS)
    for code, dims in enumerate([(), (-1,), (-2,), (-2, -1)]):
        unflip = (lambda t: t.flip(dims)) if dims else (lambda t: t)
        torch.testing.assert_close(unflip(r[:, code]), torch.roll(unflip(g[:, code]), (3, 3), (-2, -1)), rtol=0, atol=0)
    with pytest.raises(ValueError, match="expected maps"):
        rolled_maps(g, ("none",))


def test_null_target_maps_of_a_batch():
    teacher = torch.arange(2 * 4 * 9, dtype=torch.float32).view(2, 4, 3, 3)
    oracle = torch.zeros_like(teacher)
    idx, codes = torch.tensor([1, 0]), torch.tensor([2, 0])
    uni = _target_maps(teacher, oracle, idx, codes, "uniform", None)
    assert uni.shape == (2, 3, 3) and bool((uni == 1).all())
    rolled = _target_maps(teacher, oracle, idx, codes, "rolled", None, rolled_maps(teacher, FLIPS))
    assert (rolled[0] - teacher[1, 2, 0, 0]).tolist() == ROLLED_3X3["vflip"]
    assert (rolled[1] - teacher[0, 0, 0, 0]).tolist() == ROLLED_3X3["none"]
    # existing targets unchanged
    assert torch.equal(_target_maps(teacher, oracle, idx, codes, "teacher", None), teacher[idx, codes])
    with pytest.raises(ValueError, match="rolled maps"):
        _target_maps(teacher, oracle, idx, codes, "rolled", None)


def test_uniform_target_distance_by_hand():
    """Eq. 4 against the uniform target: || v/||v|| - 1/g ||, e.g. 0 for a flat map and
    sqrt(2 - 2/g) for a map on one cell of a g x g grid (g = 2: 1)."""
    from mammo_lib.networks.activation import activation_distance
    ones = torch.ones(2, 2, 2)
    f = torch.tensor([[[3.0, 3.0], [3.0, 3.0]], [[5.0, 0.0], [0.0, 0.0]]])
    d = activation_distance(ones, f)
    torch.testing.assert_close(d, torch.tensor([0.0, 1.0]))


def test_group4_maps_by_channel_set():
    """Eq. 3 is a channel mean, so C * F(all) = P * F(passthrough) + (C - P) * F(own)."""
    x, m, y = data(3)
    model = build_model("small", seed=2, head="gap_own")
    c = build_cache(model, x, m, labels=y, flips=("none",), progress=False)
    maps = {k: group4_maps_cached(model, c, channels=k) for k in ("all", "own", "passthrough")}
    p, n = passthrough_channels(model), model.features.norm5.num_features
    np.testing.assert_allclose(n * maps["all"], p * maps["passthrough"] + (n - p) * maps["own"], rtol=1e-5)
    with torch.no_grad():
        a = group4_activation(model.eval(), c.features[:, 0])
    np.testing.assert_allclose(maps["own"], activation_map(a[:, p:]).numpy(), rtol=1e-6)
    with pytest.raises(ValueError, match="channels must be one of"):
        group4_maps_cached(model, c, channels="new")
