"""Tests of mammo_lib.networks.densenet: architectures, weights loading, freezing, inputs (Sec. 3.3, 4.1)."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torchvision.models import DenseNet

from mammo_lib.networks.densenet import (
    ARCHS, IMAGENET_MEAN, IMAGENET_STD, TRAINABLE_SETS, WeightsUnavailableError, apply_train_mode,
    build_model, count_parameters, eval_mode, feature_grid, imagenet_weights_path, mask_to_model_input,
    OwnChannelsDenseNet, on_device, passthrough_channels, preserve_mode, set_trainable, to_model_input,
)

# on_device: (name, device asked for, .to() calls expected on a model living on `meta`)
ON_DEVICE_CASES = [
    ("moved there and back", "cpu", [torch.device("cpu"), torch.device("meta")]),
    ("already there: never moved", "meta", []),
    ("device object", torch.device("cpu"), [torch.device("cpu"), torch.device("meta")]),
]

# (kwargs of build_model, exception, message fragment)
BUILD_FAILURES = [
    (dict(arch="resnet18"), ValueError, "unknown arch"),
    (dict(arch="small", num_classes=0), ValueError, "num_classes"),
    (dict(arch="small", num_classes=2.0), ValueError, "num_classes"),
    (dict(arch="small", weights="imagenet"), ValueError, "densenet121"),
    (dict(arch="small", weights=3), TypeError, "weights must be"),
    (dict(arch="small", weights="no/such/file.pth"), FileNotFoundError, "no/such/file.pth"),
    (dict(arch="small", seed=1.5), TypeError, "seed"),
]

# (layers, prefixes every trainable name starts with, names that must be trainable)
TRAINABLE_CASES = [
    ("group4+classifier", ("features.denseblock4.", "features.norm5.", "classifier."),
     {"features.norm5.weight", "classifier.weight", "classifier.bias"}),
    ("classifier", ("classifier.",), {"classifier.weight", "classifier.bias"}),
    ("all", ("",), {"features.conv0.weight", "features.norm0.weight", "classifier.weight"}),
]

# (input, exception) for to_model_input
INPUT_FAILURES = [
    (torch.zeros(2, 8, 8, dtype=torch.uint8), TypeError),
    (torch.zeros(2, 2, 8, 8), ValueError),
    (torch.zeros(8, 8), ValueError),
    (torch.full((1, 8, 8), 255.0), ValueError),
    (torch.full((1, 8, 8), -0.5), ValueError),
]

# (input_size, feature grid of "small"): stride 32 overall
GRID_CASES = [(32, 1), (64, 2), (128, 4), (224, 7)]


def _state_equal(a: dict, b: dict, prefix: str = "") -> bool:
    keys = [k for k in a if k.startswith(prefix)]
    return bool(keys) and all(torch.equal(a[k], b[k]) for k in keys)


def _old_style(state: dict) -> dict:
    """torchvision's legacy file: denselayer1.norm1.weight -> denselayer1.norm.1.weight and no
    BatchNorm batch counters."""
    out = {}
    for k, v in state.items():
        if k.endswith("num_batches_tracked"):
            continue
        for part in ("norm", "relu", "conv"):
            for i in ("1", "2"):
                k = k.replace(f".{part}{i}.", f".{part}.{i}.")
        out[k] = v
    return out


# --------------------------------------------------------------------------- build


def test_small_is_torchvision_densenet_with_linear_head():
    model = build_model("small", num_classes=3, seed=0)
    assert type(model) is DenseNet
    assert isinstance(model.classifier, nn.Linear)
    # 16 init features, block 1: +2*8 = 32 ... transitions halve; the last block ends at 32.
    assert (model.classifier.in_features, model.classifier.out_features) == (32, 3)
    assert model(to_model_input(torch.rand(2, 32, 32))).shape == (2, 3)
    assert ARCHS["densenet121"] == dict(growth_rate=32, block_config=(6, 12, 24, 16),
                                        num_init_features=64, bn_size=4)


def test_seed_reproducible_without_touching_global_rng():
    before = torch.random.get_rng_state()
    a = build_model("small", seed=7).state_dict()
    b = build_model("small", seed=7).state_dict()
    c = build_model("small", seed=8).state_dict()
    assert torch.equal(torch.random.get_rng_state(), before)
    assert _state_equal(a, b)
    assert not torch.equal(a["features.conv0.weight"], c["features.conv0.weight"])


@pytest.mark.parametrize("kwargs, exc, fragment", BUILD_FAILURES)
def test_build_failures(kwargs, exc, fragment):
    with pytest.raises(exc, match=fragment):
        build_model(**kwargs)


def test_imagenet_absent_raises_with_instructions(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(WeightsUnavailableError) as info:
        build_model("densenet121", weights="imagenet")
    msg = str(info.value)
    assert "densenet121-a639ec97.pth" in msg
    assert str(tmp_path / "checkpoints") in msg
    assert "weights=" in msg
    assert imagenet_weights_path() == tmp_path / "checkpoints" / "densenet121-a639ec97.pth"


def test_imagenet_from_hub_cache_old_keys(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        reference = DenseNet(num_classes=1000, **ARCHS["densenet121"]).state_dict()
    (tmp_path / "checkpoints").mkdir()
    torch.save(_old_style(reference), imagenet_weights_path())
    model = build_model("densenet121", weights="imagenet", seed=0)
    state = model.state_dict()
    assert _state_equal(state, reference, "features.")
    assert model.classifier.weight.shape == (2, 1024)
    fresh = build_model("densenet121", seed=0).state_dict()
    assert _state_equal(state, fresh, "classifier.")  # new head: the seeded initialisation


def test_imagenet_style_file_loads_features_and_new_head(tmp_path):
    source = build_model("small", num_classes=1000, seed=1).state_dict()
    path = tmp_path / "imagenet_small.pth"
    torch.save(_old_style(source), path)
    state = build_model("small", weights=path, seed=2).state_dict()
    assert _state_equal(state, source, "features.")
    assert _state_equal(state, build_model("small", seed=2).state_dict(), "classifier.")


@pytest.mark.parametrize("wrap", [lambda s: {"model_state": s, "epoch": 4, "config": {"lr": 1e-3}},
                                  lambda s: s])
def test_own_checkpoint_loads_everything(tmp_path, wrap):
    source = build_model("small", seed=1)
    with torch.no_grad():
        source.classifier.bias.fill_(0.25)
    path = tmp_path / "ckpt.pt"
    torch.save(wrap(source.state_dict()), path)
    state = build_model("small", weights=str(path), seed=5).state_dict()
    assert _state_equal(state, source.state_dict())


def test_shape_mismatch_names_keys(tmp_path):
    other = DenseNet(growth_rate=4, block_config=(2, 2, 2, 2), num_init_features=16, bn_size=2,
                     num_classes=2)
    path = tmp_path / "other.pth"
    torch.save(other.state_dict(), path)
    with pytest.raises(ValueError, match=r"shape mismatch.*features\.denseblock1\.denselayer1"):
        build_model("small", weights=path)


def test_missing_key_named(tmp_path):
    state = build_model("small", seed=0).state_dict()
    del state["features.norm5.running_var"]
    path = tmp_path / "partial.pth"
    torch.save(state, path)
    with pytest.raises(ValueError, match="features.norm5.running_var"):
        build_model("small", weights=path)


def test_non_torch_file(tmp_path):
    path = tmp_path / "junk.pth"
    path.write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="junk.pth"):
        build_model("small", weights=path)


# --------------------------------------------------------------------------- freezing


@pytest.mark.parametrize("layers, prefixes, required", TRAINABLE_CASES)
def test_set_trainable(layers, prefixes, required):
    model = build_model("small", seed=0)
    names = set_trainable(model, layers)
    assert required <= set(names)
    assert all(n.startswith(prefixes) for n in names)
    by_name = dict(model.named_parameters())
    assert {n for n, p in by_name.items() if p.requires_grad} == set(names)
    assert count_parameters(model, trainable_only=True) == sum(by_name[n].numel() for n in names)
    if layers != "all":
        assert not by_name["features.denseblock3.denselayer2.conv2.weight"].requires_grad
    assert layers in TRAINABLE_SETS


def test_set_trainable_failures():
    with pytest.raises(ValueError, match="group4"):
        set_trainable(build_model("small", seed=0), "group3")
    with pytest.raises(TypeError, match="DenseNet"):
        set_trainable(nn.Linear(2, 2))


def test_apply_train_mode_keeps_frozen_batchnorm_statistics():
    model = build_model("small", seed=0)
    set_trainable(model, "group4+classifier")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        apply_train_mode(model)
        x = to_model_input(torch.rand(4, 32, 32, generator=gen))
        loss = nn.functional.cross_entropy(model(x), torch.tensor([0, 1, 0, 1]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = model.state_dict()
    assert model.training and model.features.denseblock4.denselayer1.norm1.training
    assert not model.features.norm0.training
    frozen = [k for k in after if not k.startswith(("features.denseblock4.", "features.norm5.", "classifier."))]
    assert any("running_mean" in k for k in frozen) and any("num_batches_tracked" in k for k in frozen)
    assert all(torch.equal(before[k], after[k]) for k in frozen)
    for k in ("features.norm5.running_mean", "features.norm5.running_var",
              "features.denseblock4.denselayer1.norm1.running_mean", "features.norm5.weight"):
        assert not torch.equal(before[k], after[k]), k


def test_apply_train_mode_all_trainable_is_train():
    model = build_model("small", seed=0)
    set_trainable(model, "all")
    model.eval()
    apply_train_mode(model)
    assert all(m.training for m in model.modules())


def test_preserve_mode_restores_on_error():
    model = build_model("small", seed=0)
    model.features.norm0.eval()
    with pytest.raises(RuntimeError), preserve_mode(model):
        model.eval()
        raise RuntimeError("inside")
    assert model.training and model.features.conv0.training and not model.features.norm0.training


def test_eval_mode_sets_eval_and_restores_each_module_also_on_error():
    model = build_model("small", seed=0)
    model.features.norm0.eval()  # a frozen BatchNorm inside a training model
    with eval_mode(model) as same:
        assert same is model and not any(m.training for m in model.modules())
    assert model.training and model.features.conv0.training and not model.features.norm0.training
    with pytest.raises(RuntimeError, match="inside"), eval_mode(model):
        raise RuntimeError("inside")
    assert model.training and model.features.conv0.training and not model.features.norm0.training


class _SpyModule(nn.Module):
    """One parameter on ``meta`` (its home device); ``.to`` records the device instead of moving."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.empty(2, device="meta"))
        self.calls: list[torch.device] = []

    def to(self, device, *args, **kwargs):  # type: ignore[override]
        self.calls.append(torch.device(device))
        return self


@pytest.mark.parametrize("name,device,calls", ON_DEVICE_CASES, ids=[c[0] for c in ON_DEVICE_CASES])
def test_on_device_moves_and_restores(name, device, calls):
    spy = _SpyModule()
    with on_device(spy, device) as same:
        assert same is spy and spy.calls == calls[:1]  # moved on entry only
    assert spy.calls == calls


def test_on_device_restores_after_an_error():
    spy = _SpyModule()
    with pytest.raises(RuntimeError, match="inside"), on_device(spy, "cpu"):
        raise RuntimeError("inside")
    assert spy.calls == [torch.device("cpu"), torch.device("meta")]


def test_on_device_home_from_buffers_and_no_tensors():
    spy = _SpyModule()
    spy.w = None  # type: ignore[assignment]  # no parameter left: the home is the buffer's device
    spy.register_buffer("b", torch.empty(1, device="meta"))
    with on_device(spy, "cpu"):
        pass
    assert spy.calls == [torch.device("cpu"), torch.device("meta")]
    with on_device(nn.ReLU(), "meta") as relu:  # nothing to move: no error, nothing recorded
        assert isinstance(relu, nn.ReLU)


def test_on_device_same_device_leaves_tensors_untouched():
    model = build_model("small", seed=0)
    ptrs = [p.data_ptr() for p in model.parameters()]
    with on_device(model, "cpu"):
        assert [p.data_ptr() for p in model.parameters()] == ptrs
    assert [p.data_ptr() for p in model.parameters()] == ptrs


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_device_cuda_round_trip():
    model = build_model("small", seed=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with on_device(model, "cuda"):
        assert all(p.is_cuda for p in model.parameters()) and all(b.is_cuda for b in model.buffers())
    assert not any(p.is_cuda for p in model.parameters())
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    model.cuda()
    with pytest.raises(RuntimeError, match="inside"), on_device(model, "cpu"):
        assert not any(p.is_cuda for p in model.parameters())
        raise RuntimeError("inside")
    assert all(p.is_cuda for p in model.parameters())


# --------------------------------------------------------------------------- inputs


def test_to_model_input_hand_values():
    x = torch.tensor([[[0.0, 0.5], [1.0, 0.25]]])
    out = to_model_input(x)
    assert out.shape == (1, 3, 2, 2)
    for c in range(3):
        assert out[0, c, 0, 1].item() == pytest.approx((0.5 - IMAGENET_MEAN[c]) / IMAGENET_STD[c], abs=1e-6)
    assert torch.equal(out, to_model_input(x.unsqueeze(1)))


@pytest.mark.parametrize("x, exc", INPUT_FAILURES)
def test_to_model_input_failures(x, exc):
    with pytest.raises(exc):
        to_model_input(x)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.bool, torch.float32])
def test_mask_input_is_image_0_255(dtype):
    m = torch.tensor([[[0, 1], [1, 0]]]).to(dtype)
    out = mask_to_model_input(m)
    for c in range(3):
        assert out[0, c, 0, 1].item() == pytest.approx((1.0 - IMAGENET_MEAN[c]) / IMAGENET_STD[c], abs=1e-6)
        assert out[0, c, 0, 0].item() == pytest.approx(-IMAGENET_MEAN[c] / IMAGENET_STD[c], abs=1e-6)
    assert torch.allclose(out, to_model_input(torch.full((1, 1, 2, 2), 255.0) * m.float().unsqueeze(1) / 255.0))


def test_mask_input_rejects_non_binary():
    with pytest.raises(ValueError, match="0 and 1"):
        mask_to_model_input(torch.tensor([[[0, 255]]], dtype=torch.uint8))


# --------------------------------------------------------------------------- sizes


@pytest.mark.parametrize("size, grid", GRID_CASES)
def test_feature_grid_small(size, grid):
    model = build_model("small", seed=0)
    model.train()
    stats = model.features.norm0.running_mean.clone()
    assert feature_grid(model, size) == grid
    assert model.training and torch.equal(model.features.norm0.running_mean, stats)


def test_feature_grid_failures():
    model = build_model("small", seed=0)
    with pytest.raises(ValueError, match="too small"):
        feature_grid(model, 8)
    with pytest.raises(ValueError, match="positive"):
        feature_grid(model, 0)


def test_count_parameters_by_hand():
    model = build_model("small", num_classes=2, seed=0)
    set_trainable(model, "classifier")
    assert count_parameters(model, trainable_only=True) == 32 * 2 + 2
    total = count_parameters(model)
    assert total > 32 * 2 + 2
    set_trainable(model, "all")
    assert count_parameters(model, trainable_only=True) == total == sum(
        math.prod(p.shape) for p in model.parameters())


# --------------------------------------------------------------------------- the positive control head


def _transition3_channels(model):
    """Channels of transition3's output, measured by a forward of one 32 px image (not hard-coded)."""
    x = to_model_input(torch.rand(1, 32, 32))
    with eval_mode(model), torch.no_grad():
        for name in ("conv0", "norm0", "relu0", "pool0", "denseblock1", "transition1", "denseblock2",
                     "transition2", "denseblock3", "transition3"):
            x = getattr(model.features, name)(x)
    return x.shape[1]


@pytest.mark.parametrize("arch", ["small", "densenet121"])
def test_gap_own_classifier_reads_only_own_channels(arch):
    model = build_model(arch, weights=None, seed=0, head="gap_own")
    p = passthrough_channels(model)
    c = model.features.norm5.num_features
    assert p == _transition3_channels(model)  # the channels denseblock4 concatenates unchanged
    assert 0 < p < c and model.classifier.in_features == c - p
    assert isinstance(model, OwnChannelsDenseNet) and model.head == "gap_own"
    # the counts (16 of 32, 512 of 1024) follow from the architectures
    assert (p, c) == {"small": (16, 32), "densenet121": (512, 1024)}[arch]
    gap = build_model(arch, weights=None, seed=0)
    assert passthrough_channels(gap) == p and gap.classifier.in_features == c


@pytest.mark.parametrize("head, unchanged", [("gap_own", True), ("gap", False)])
def test_passthrough_activations_do_not_reach_gap_own_logits(head, unchanged):
    """Adding noise to the pass-through channels of norm5's output leaves the gap_own logits as
    they are (and changes the gap head's: the test can fail)."""
    model = build_model("small", seed=1, head=head).eval()
    p = passthrough_channels(model)
    x = to_model_input(torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(0)))
    with torch.no_grad():
        before = model(x)
        noise = torch.zeros(1, model.features.norm5.num_features, 1, 1)
        noise[:, :p] = 5.0
        handle = model.features.norm5.register_forward_hook(lambda mod, inp, out: out + noise)
        try:
            after = model(x)
        finally:
            handle.remove()
    assert torch.equal(before, after) is unchanged


def test_gap_own_forward_by_hand():
    """logits = W [mean over the grid of relu(features(x))][P:] + b."""
    model = build_model("small", seed=2, head="gap_own").eval()
    x = to_model_input(torch.rand(2, 64, 64, generator=torch.Generator().manual_seed(1)))
    with torch.no_grad():
        pooled = torch.relu(model.features(x)).mean(dim=(2, 3))
        want = pooled[:, passthrough_channels(model):] @ model.classifier.weight.T + model.classifier.bias
        torch.testing.assert_close(model(x), want, rtol=1e-5, atol=1e-6)


def test_gap_own_takes_a_gap_files_own_columns(tmp_path):
    source = build_model("small", seed=3).state_dict()
    path = tmp_path / "trunk.pth"
    torch.save({"model_state": source}, path)
    model = build_model("small", weights=path, seed=4, head="gap_own")
    state = model.state_dict()
    assert _state_equal(state, source, "features.")
    p = passthrough_channels(model)
    assert torch.equal(state["classifier.weight"], source["classifier.weight"][:, p:])
    assert torch.equal(state["classifier.bias"], source["classifier.bias"])
    # an ImageNet-style file (1000 classes): a new head, the seeded one
    torch.save(build_model("small", num_classes=1000, seed=5).state_dict(), tmp_path / "in.pth")
    fresh = build_model("small", weights=tmp_path / "in.pth", seed=4, head="gap_own").state_dict()
    assert _state_equal(fresh, build_model("small", seed=4, head="gap_own").state_dict(), "classifier.")


def test_passthrough_channels_rejects_other_models():
    with pytest.raises(TypeError, match="expected a torchvision DenseNet"):
        passthrough_channels(nn.Linear(2, 2))
