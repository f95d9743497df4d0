"""Tests of training several heads together (mammo_lib.engines.trunk_cache.StackedHead, train_heads): the
stacked group 4 is each network's own group 4, a joint step is Eq. 5's step of every network, and
training G networks together gives what training each alone gives (batching invariance)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from mammo_lib.networks.densenet import build_model, set_trainable
from mammo_lib.engines.training import TrainConfig, make_optimizer, epoch_generator
from mammo_lib.engines.trunk_cache import (StackedHead, _flip_codes, build_cache, group4_activation, head_logits, head_loss,
                                   train_head, train_heads)

from support.tiny import S, data  # tiny ROIs and masks, small DenseNet: 2x2 group-4 grid at 64 px

# name, what goes wrong, expected ValueError message
JOINT_FAIL_CASES = [
    ("settings differ", dict(cfgs=[TrainConfig(epochs=1, batch_size=4), TrainConfig(epochs=1, batch_size=4, lr=1e-2)]),
     "may differ only in ('method', 'beta', 'distance_form'); they differ in ['lr']"),
    ("seeds differ", dict(cfgs=[TrainConfig(epochs=1, batch_size=4), TrainConfig(epochs=1, batch_size=4, seed=1)]),
     "they differ in ['seed']"),
    ("one config short", dict(cfgs=[TrainConfig(epochs=1, batch_size=4)]), "need one config and one target per network"),
    ("bad target", dict(targets=["teacher", "random"]), "target must be one of"),
    ("architectures differ", dict(archs=("small", "densenet121")), "need the same architecture"),
    ("heads differ", dict(heads=("gap", "flatten")), "need one head type"),
    ("positive control with gap", dict(heads=("gap", "gap_own")), "need one head type"),
]


@pytest.fixture(scope="module")
def cache():
    x, m, y = data(16)
    return build_cache(build_model("small", seed=5), x, m, labels=y, progress=False)


@pytest.mark.parametrize("name,kw,msg", JOINT_FAIL_CASES)
def test_train_heads_rejects(cache, name, kw, msg):
    archs, heads = kw.get("archs", ("small", "small")), kw.get("heads", ("gap", "gap"))
    models = [build_model(a, seed=0, head=h, input_size=S) for a, h in zip(archs, heads)]
    cfgs = kw.get("cfgs", [TrainConfig(epochs=1, batch_size=4)] * 2)
    with pytest.raises(ValueError) as err:
        train_heads(models, cache.subset(range(8)), cache.subset(range(8, 12)), cfgs, targets=kw.get("targets"))
    assert msg in str(err.value)


@pytest.mark.parametrize("head", ["gap", "flatten", "gap_own"])
def test_stacked_head_is_each_networks_group4(cache, head):
    nets = [build_model("small", seed=s, head=head, input_size=S) for s in (0, 1, 2)]
    t = cache.features[:6, 1]
    with torch.no_grad():
        for n_nets in (1, 3):
            stacked = StackedHead(nets[:n_nets]).eval()
            a = stacked(t)
            for g, (net, lg) in enumerate(zip(nets, stacked.logits(a))):
                net.eval()
                a_g = group4_activation(net, t)
                if n_nets == 1:  # G = 1 is the network's own operations: bit for bit
                    assert torch.equal(a[:, g], a_g) and torch.equal(lg, head_logits(net, a_g))
                torch.testing.assert_close(a[:, g], a_g, rtol=1e-5, atol=1e-6)
                torch.testing.assert_close(lg, head_logits(net, a_g), rtol=1e-5, atol=1e-6)
    # state_of gives each network's own head state back under its own names
    stacked = StackedHead(nets)
    for g, net in enumerate(nets):
        own = {k: v for k, v in net.state_dict().items()
               if k.startswith(("features.denseblock4.", "features.norm5.", "classifier."))}
        got = stacked.state_of(g)
        assert sorted(got) == sorted(own)
        for k in own:
            assert torch.equal(got[k], own[k]), k


def test_one_joint_step_is_eq5_adam_step_of_every_network(cache):
    """Epoch 0 with one batch: each network moves as one Adam step on its own Eq. 5 loss
    (head_loss, the loss tested equal to the uncached network's)."""
    tr, va = cache.subset(range(10)), cache.subset(range(10, 16))
    cfgs = [TrainConfig(epochs=1, batch_size=10, seed=3, lr=1e-2, method=m, beta=b, distance_form=f)
            for m, b, f in (("finetune", 0.0, "paper"), ("transfer", 8.0, "paper"), ("transfer", 1000.0, "at"))]
    nets = [build_model("small", seed=4) for _ in cfgs]
    res = train_heads(nets, tr, va, cfgs)
    gen = epoch_generator(3, 0)
    order = torch.randperm(len(tr), generator=gen)
    codes = _flip_codes(cfgs[0].augment, len(tr), gen, 4)[order]
    t, y = tr.features[order, codes], torch.from_numpy(tr.labels)[order]
    for cfg, r in zip(cfgs, res):
        ref = build_model("small", seed=4)
        ref.eval()
        set_trainable(ref, "group4+classifier")
        for mod in (ref.features.denseblock4, ref.features.norm5, ref.classifier):
            mod.train()
        opt = make_optimizer([p for p in ref.parameters() if p.requires_grad], cfg)
        loss, _ = head_loss(ref, t, y, tr.teacher_maps[order, codes] if cfg.method == "transfer" else None, cfg)
        opt.zero_grad()
        loss.backward()
        opt.step()
        got, want = r.model.state_dict(), ref.state_dict()
        for k in want:
            torch.testing.assert_close(got[k], want[k], rtol=1e-5, atol=1e-6, msg=k)
        assert r.history["train_loss"].iloc[0] == pytest.approx(float(loss.detach()), rel=1e-6)


@pytest.mark.parametrize("patience", [None, 1])
def test_together_equals_one_by_one(cache, patience):
    """The beta grid and both controls trained together = each trained alone, history for history."""
    tr, va = cache.subset(range(10)), cache.subset(range(10, 16))
    runs = [("finetune", 0.0, "paper", "teacher"), ("transfer", 2.0, "paper", "teacher"),
            ("transfer", 32.0, "paper", "shuffled"), ("transfer", 8.0, "paper", "oracle"),
            ("transfer", 1000.0, "at", "teacher")]
    cfgs = [TrainConfig(epochs=5, batch_size=4, seed=7, lr=5e-3, method=m, beta=b, distance_form=f,
                        patience=patience, class_weighting=True) for m, b, f, _ in runs]
    targets = [r[3] for r in runs]
    joint = train_heads([build_model("small", seed=1) for _ in runs], tr, va, cfgs, targets=targets, shuffle_seed=2)
    for cfg, target, j in zip(cfgs, targets, joint):
        alone = train_head(build_model("small", seed=1), tr, va, cfg, target=target, shuffle_seed=2)
        assert j.best_epoch == alone.best_epoch and len(j.history) == len(alone.history)
        cols = ["train_loss", "train_ce", "train_d4", "val_loss", "val_accuracy"]
        np.testing.assert_allclose(j.history[cols].to_numpy(), alone.history[cols].to_numpy(), rtol=1e-5, atol=1e-6)
        for k, v in alone.model.state_dict().items():
            torch.testing.assert_close(j.model.state_dict()[k], v, rtol=1e-4, atol=1e-5, msg=k)
    if patience == 1:  # here the networks stop at different epochs, each on its own validation curve
        assert len({len(j.history) for j in joint}) > 1


def test_train_heads_leaves_the_trunk_and_caller_flags(cache):
    nets = [build_model("small", seed=0) for _ in range(2)]
    trunk = {k: v.clone() for k, v in nets[0].state_dict().items() if not k.startswith(
        ("features.denseblock4.", "features.norm5.", "classifier."))}
    flags = [p.requires_grad for p in nets[0].parameters()]
    nets[0].train()
    train_heads(nets, cache.subset(range(8)), cache.subset(range(8, 12)),
                [TrainConfig(epochs=2, batch_size=4, method="transfer", beta=8.0)] * 2)
    for k, v in trunk.items():
        assert torch.equal(nets[0].state_dict()[k], v), k
    assert [p.requires_grad for p in nets[0].parameters()] == flags and nets[0].training


@pytest.mark.parametrize("head", ["gap", "gap_own"])
def test_null_targets_and_positive_control_together_equal_one_by_one(cache, head):
    """The nulls (uniform, rolled) and the teacher, with either head, trained together = alone."""
    tr, va = cache.subset(range(10)), cache.subset(range(10, 16))
    runs = [("finetune", 0.0, "teacher"), ("transfer", 32.0, "teacher"), ("transfer", 32.0, "uniform"),
            ("transfer", 8.0, "rolled")]
    cfgs = [TrainConfig(epochs=4, batch_size=4, seed=7, lr=5e-3, method=m, beta=b, class_weighting=True)
            for m, b, _ in runs]
    targets = [r[2] for r in runs]
    joint = train_heads([build_model("small", seed=1, head=head) for _ in runs], tr, va, cfgs, targets=targets)
    for cfg, target, j in zip(cfgs, targets, joint):
        alone = train_head(build_model("small", seed=1, head=head), tr, va, cfg, target=target)
        cols = ["train_loss", "train_ce", "train_d4", "val_loss", "val_accuracy"]
        assert j.best_epoch == alone.best_epoch
        np.testing.assert_allclose(j.history[cols].to_numpy(), alone.history[cols].to_numpy(), rtol=1e-5, atol=1e-6)
        for k, v in alone.model.state_dict().items():
            torch.testing.assert_close(j.model.state_dict()[k], v, rtol=1e-4, atol=1e-5, msg=k)
    # the targets matter: the three Eq. 5 runs at one beta do not train to the same weights
    w = [j.model.classifier.weight for j in joint[1:3]]
    assert not torch.allclose(w[0], w[1])


def test_uniform_step_is_eq5_against_ones(cache):
    """One batch, one Adam step: the uniform null is Eq. 5 with a target of ones (head_loss)."""
    tr, va = cache.subset(range(8)), cache.subset(range(8, 12))
    cfg = TrainConfig(epochs=1, batch_size=8, seed=3, lr=1e-2, method="transfer", beta=8.0)
    res = train_head(build_model("small", seed=4, head="gap_own"), tr, va, cfg, target="uniform")
    gen = epoch_generator(3, 0)
    order = torch.randperm(len(tr), generator=gen)
    codes = _flip_codes(cfg.augment, len(tr), gen, 4)[order]
    t, y = tr.features[order, codes], torch.from_numpy(tr.labels)[order]
    ref = build_model("small", seed=4, head="gap_own")
    ref.eval()
    set_trainable(ref, "group4+classifier")
    for mod in (ref.features.denseblock4, ref.features.norm5, ref.classifier):
        mod.train()
    opt = make_optimizer([p for p in ref.parameters() if p.requires_grad], cfg)
    loss, _ = head_loss(ref, t, y, torch.ones(len(t), *tr.teacher_maps.shape[-2:]), cfg)
    opt.zero_grad()
    loss.backward()
    opt.step()
    for k, v in ref.state_dict().items():
        torch.testing.assert_close(res.model.state_dict()[k], v, rtol=1e-5, atol=1e-6, msg=k)


def test_positive_control_head_state_loads_back(cache, tmp_path):
    """A gap_own head saved as the instrument saves it (group 4 + classifier) loads into a fresh
    network of the same initialisation (instrument.load_head) and predicts the same."""
    from mammo_lib.protocol.instrument import load_head
    from mammo_lib.utils.files import save_torch
    from mammo_lib.networks.densenet import TRAINABLE_PREFIXES
    from mammo_lib.engines.trunk_cache import predict_cached

    res = train_head(build_model("small", seed=2, head="gap_own"), cache.subset(range(8)), cache.subset(range(8, 12)),
                     TrainConfig(epochs=2, batch_size=4, method="transfer", beta=8.0))
    head = {k: v for k, v in res.model.state_dict().items() if k.startswith(TRAINABLE_PREFIXES["group4+classifier"])}
    assert head["classifier.weight"].shape[1] == 16
    save_torch(head, tmp_path / "head.pt")
    back = load_head(build_model("small", seed=2, head="gap_own"), tmp_path / "head.pt")
    np.testing.assert_array_equal(predict_cached(back, cache), predict_cached(res.model, cache))


def test_select_also_is_a_second_selection_of_the_same_training(cache):
    """``select_also``: the training and the primary selection are those of a run without it, bit
    for bit; on the same validation set the second selection is the first; on another set it is
    the epoch that set's rule picks (best accuracy, ties lower loss), from its own history."""
    tr, va = cache.subset(range(10)), cache.subset(range(10, 16))
    other = cache.subset(range(0, 6))  # other cases: another curve
    cfgs = [TrainConfig(epochs=6, batch_size=4, seed=2, lr=1e-2, method=m, beta=b)
            for m, b in (("finetune", 0.0), ("transfer", 8.0))]
    plain = train_heads([build_model("small", seed=1) for _ in cfgs], tr, va, cfgs)
    same = train_heads([build_model("small", seed=1) for _ in cfgs], tr, va, cfgs, select_also=va)
    two = train_heads([build_model("small", seed=1) for _ in cfgs], tr, va, cfgs, select_also=other)
    for p, s, t in zip(plain, same, two):
        assert p.best_epoch == s.best_epoch == t.best_epoch and p.also is None
        for k, v in p.model.state_dict().items():
            assert torch.equal(s.model.state_dict()[k], v) and torch.equal(t.model.state_dict()[k], v), k
        assert s.also.best_epoch == s.best_epoch and s.also.val_accuracy == s.best_val_accuracy
        for k, v in s.also.state.items():
            assert torch.equal(v, s.model.state_dict()[k]), k
        h = t.history
        want = h.sort_values(["also_val_accuracy", "also_val_loss"], ascending=[False, True], kind="mergesort").iloc[0]
        assert t.also.best_epoch == int(want["epoch"]) and t.also.val_accuracy == want["also_val_accuracy"]
        # the state selected on the other set predicts that set as recorded at its epoch
        net = build_model("small", seed=1)
        net.load_state_dict(t.also.state, strict=False)
        from mammo_lib.engines.trunk_cache import predict_cached
        acc = float((predict_cached(net, other).argmax(1) == other.labels).mean())
        assert acc == pytest.approx(t.also.val_accuracy)
    with pytest.raises(ValueError, match="select_also needs >= 1 validation case"):
        train_heads([build_model("small", seed=1)], tr, va, cfgs[:1], select_also=cache.subset([]))
