"""Tests of mammo_lib.engines.amp and the TrainConfig speed flags (amp, channels_last): exact no-ops
on the CPU (bit-identical weights and histories), clear errors, profile keys; a CUDA-only check."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from mammo_lib.repro.config import load_config
from mammo_lib.networks.densenet import build_model
from mammo_lib.repro.runtime import train_config
from mammo_lib.engines.amp import AMP_MODES, autocast_for, backward_step, grad_scaler, maybe_channels_last
from mammo_lib.protocol.stand_in import pretrain_generic
from mammo_lib.engines.training import TensorData, TrainConfig, train_model
from mammo_lib.engines.trunk_cache import build_cache, group4_maps_cached, predict_cached, train_head

# ---------------------------------------------------------------- tables of cases
CONFIG_FAIL_CASES = [
    (dict(amp="fp32"), ValueError, "TrainConfig.amp must be one of ('off', 'bf16', 'fp16'), got 'fp32'"),
    (dict(amp="BF16"), ValueError, "TrainConfig.amp must be one of ('off', 'bf16', 'fp16')"),
    (dict(amp=None), ValueError, "TrainConfig.amp must be one of"),
    (dict(amp=16), ValueError, "got 16"),
    (dict(channels_last="yes"), TypeError, "TrainConfig.channels_last must be a bool, got 'yes'"),
    (dict(channels_last=1), TypeError, "TrainConfig.channels_last must be a bool"),
]

HELPER_FAIL_CASES = [
    (lambda: autocast_for("cpu", "half"), ValueError, "amp must be one of ('off', 'bf16', 'fp16'), got 'half'"),
    (lambda: grad_scaler("cpu", "tf32"), ValueError, "amp must be one of"),
    (lambda: pretrain_generic("unused", amp="float16"), ValueError, "amp must be one of"),
]

#: (method, omega): cross-entropy only, and Eq. 5 with groups 3 and 4 (2x2 and 1x1 maps at 32 px).
TRAIN_CASES = [("finetune", (4,)), ("transfer", (3, 4))]

FLAGS = dict(amp="bf16", channels_last=True)
cuda_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _data(n: int = 12, size: int = 32, seed: int = 0) -> TensorData:
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    masks = np.zeros((n, size, size), np.uint8)
    for i, y in enumerate(labels):
        r = size // 8 if y == 0 else size // 4
        masks[i, size // 2 - r:size // 2 + r, size // 2 - r:size // 2 + r] = 1
    images = np.clip(0.2 * rng.random((n, size, size)) + 0.7 * masks, 0, 1).astype(np.float32)
    return TensorData(images, masks, labels, [f"c{i}" for i in range(n)])


def _same_state(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


# ---------------------------------------------------------------- validation
@pytest.mark.parametrize("kw, exc, msg", CONFIG_FAIL_CASES)
def test_config_rejects(kw, exc, msg):
    with pytest.raises(exc, match=msg.replace("(", r"\(").replace(")", r"\)")):
        TrainConfig(**kw)


@pytest.mark.parametrize("call, exc, msg", HELPER_FAIL_CASES)
def test_helpers_reject(call, exc, msg):
    with pytest.raises(exc, match=msg.replace("(", r"\(").replace(")", r"\)")):
        call()


def test_valid_modes_and_dict_round_trip():
    assert AMP_MODES == ("off", "bf16", "fp16")
    d = TrainConfig().to_dict()
    assert "amp" not in d and "channels_last" not in d  # defaults: keys made before the flags stay valid
    on = TrainConfig(**FLAGS)
    assert on.to_dict()["amp"] == "bf16" and on.to_dict()["channels_last"] is True
    assert TrainConfig.from_dict(on.to_dict()) == on
    assert TrainConfig.from_dict(d) == TrainConfig()


def test_profile_keys_flow_into_train_config(tmp_path):
    # device cpu: TrainConfig refuses cuda on a machine without a GPU (issue 21)
    full = train_config(load_config("full", overrides={"data_root": str(tmp_path), "device": "cpu"}, honour_env=False))
    assert (full.amp, full.channels_last) == ("bf16", True)
    demo = train_config(load_config("demo", honour_env=False))
    assert (demo.amp, demo.channels_last) == ("off", False)
    cfg = load_config("demo", overrides={"train": {"amp": "fp16"}}, honour_env=False)
    assert train_config(cfg).amp == "fp16"
    with pytest.raises(ValueError, match="unknown key 'train.amps'"):
        load_config("demo", overrides={"train": {"amps": "bf16"}}, honour_env=False)


# ---------------------------------------------------------------- CPU: exact no-ops
def test_autocast_for_is_a_no_op_on_cpu():
    a = torch.randn(4, 8)
    with autocast_for("cpu", "bf16"):
        y = a @ a.T
        z = torch.nn.functional.conv2d(torch.randn(1, 3, 8, 8), torch.randn(2, 3, 3, 3))
    assert y.dtype == torch.float32 and z.dtype == torch.float32
    assert torch.equal(y, a @ a.T)
    with autocast_for("cuda", "off"):  # off: no autocast on any device
        assert not torch.is_autocast_enabled("cuda")


def test_channels_last_and_scaler_are_no_ops_on_cpu():
    x = torch.randn(2, 3, 8, 8)
    assert maybe_channels_last(x, True, "cpu") is x
    model = build_model("small", seed=0)
    before = {k: v.data_ptr() for k, v in model.state_dict().items()}
    assert maybe_channels_last(model, True, "cpu") is model
    assert {k: v.data_ptr() for k, v in model.state_dict().items()} == before
    assert all(p.is_contiguous() for p in model.parameters())
    assert grad_scaler("cpu", "fp16") is None and grad_scaler("cuda", "bf16") is None
    # without a scaler, backward_step is loss.backward() + optimizer.step(): w <- w - lr * 2w
    w = torch.nn.Parameter(torch.tensor([3.0]))
    opt = torch.optim.SGD([w], lr=0.25)
    backward_step((w ** 2).sum(), opt, None)
    assert w.item() == 1.5


@pytest.mark.parametrize("method, omega", TRAIN_CASES)
def test_train_model_bit_identical_with_flags_on_cpu(method, omega):
    train, val = _data(12, seed=0), _data(6, seed=1)
    results = []
    for flags in ({}, FLAGS):
        cfg = TrainConfig(method=method, omega=omega, epochs=2, batch_size=4, lr=1e-2, beta=8.0,
                          trainable="all", **flags)
        results.append(train_model(build_model("small", seed=0), train, val, cfg, progress=False))
    a, b = results
    _same_state(a.model, b.model)
    cols = [c for c in a.history.columns if c != "seconds"]
    assert a.history[cols].equals(b.history[cols])
    assert (a.best_epoch, a.best_val_loss) == (b.best_epoch, b.best_val_loss)


def test_cached_head_bit_identical_with_flags_on_cpu():
    data = _data(16, size=64)
    caches = []
    for flags in ({}, FLAGS):
        caches.append(build_cache(build_model("small", seed=0), data.images, data.masks, labels=data.labels,
                                  progress=False, **flags))
    for name in ("features", "teacher_maps", "oracle_maps"):
        assert torch.equal(getattr(caches[0], name), getattr(caches[1], name))
    tr, va = caches[0].subset(range(10)), caches[0].subset(range(10, 16))
    out = []
    for flags in ({}, FLAGS):
        cfg = TrainConfig(method="transfer", beta=8.0, epochs=2, batch_size=4, lr=1e-2, augment=("hflip", "vflip"),
                          **flags)
        res = train_head(build_model("small", seed=0), tr, va, cfg)
        out.append((res, predict_cached(res.model, va, **flags), group4_maps_cached(res.model, va, **flags)))
    (a, pa, ma), (b, pb, mb) = out
    _same_state(a.model, b.model)
    assert a.history.drop(columns="seconds").equals(b.history.drop(columns="seconds"))
    assert np.array_equal(pa, pb) and np.array_equal(ma, mb)


def test_pretrain_generic_bit_identical_with_flags_on_cpu(tmp_path):
    kw = dict(arch="small", n_train=16, n_test=8, size=32, epochs=1, batch_size=8, progress=False)
    a = pretrain_generic(tmp_path / "off", **kw)
    b = pretrain_generic(tmp_path / "on", **kw, **FLAGS)
    assert a["history"] == b["history"] and a["test_accuracy"] == b["test_accuracy"]
    sa = torch.load(a["checkpoint"], weights_only=True)["model_state"]
    sb = torch.load(b["checkpoint"], weights_only=True)["model_state"]
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    # the flags are part of the reuse key: the "on" folder is not read back for flags off
    import json

    assert json.loads((tmp_path / "on" / "generic_metrics.json").read_text())["key"]["amp"] == "bf16"
    assert "amp" not in json.loads((tmp_path / "off" / "generic_metrics.json").read_text())["key"]


# ---------------------------------------------------------------- the CUDA code path, on the CPU
@pytest.fixture
def cpu_as_cuda(monkeypatch):
    """Make the helpers treat the CPU as CUDA, with CPU autocast standing in for CUDA autocast and a
    CPU GradScaler for fp16: the reduced-precision paths run here (numbers close, not equal)."""
    import mammo_lib.engines.amp as P

    autocast, scaler = torch.autocast, torch.amp.GradScaler
    monkeypatch.setattr(P, "_is_cuda", lambda device: True)
    monkeypatch.setattr(P.torch, "autocast", lambda device_type, dtype: autocast(device_type="cpu", dtype=dtype))
    monkeypatch.setattr(P.torch.amp, "GradScaler", lambda device: scaler("cpu"))


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_reduced_precision_paths_run_with_float32_losses(cpu_as_cuda, amp):
    with autocast_for("cpu", amp):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype in (torch.bfloat16, torch.float16)
    train, val = _data(12, size=64), _data(6, size=64, seed=1)
    hist = {}
    for flags in (dict(amp="off", channels_last=False), dict(amp=amp, channels_last=True)):
        cfg = TrainConfig(method="transfer", omega=(3, 4), epochs=2, batch_size=4, lr=1e-2, beta=8.0, **flags)
        res = train_model(build_model("small", seed=0), train, val, cfg, progress=False)
        assert all(p.dtype == torch.float32 and p.is_contiguous() for p in res.model.parameters())
        hist[flags["amp"]] = res.history[["train_loss", "train_d3", "train_d4", "val_loss"]].to_numpy()
    assert not np.array_equal(hist["off"], hist[amp])  # autocast did act
    np.testing.assert_allclose(hist[amp], hist["off"], rtol=0.05, atol=0.02)
    model = build_model("small", seed=0)
    cache = build_cache(model, train.images, train.masks, labels=train.labels, amp=amp, channels_last=True,
                        progress=False)
    assert cache.features.dtype == torch.float32 and cache.features.is_contiguous()
    assert cache.teacher_maps.dtype == torch.float32
    assert all(p.is_contiguous() for p in model.parameters())  # memory format restored
    cfg = TrainConfig(method="transfer", beta=8.0, epochs=2, batch_size=4, lr=1e-2, amp=amp, channels_last=True)
    head = train_head(build_model("small", seed=0), cache, cache, cfg)
    assert np.isfinite(head.history[["train_loss", "train_d4", "val_loss"]].to_numpy()).all()
    p = predict_cached(head.model, cache, amp=amp, channels_last=True)
    assert p.dtype == np.float64 and np.allclose(p.sum(1), 1.0)
    assert group4_maps_cached(head.model, cache, amp=amp, channels_last=True).dtype == np.float32


# ---------------------------------------------------------------- CUDA only
@cuda_only
def test_bf16_autocast_on_cuda():
    a = torch.randn(8, 8, device="cuda")
    with autocast_for("cuda", "bf16"):
        assert (a @ a).dtype == torch.bfloat16
    with autocast_for("cuda", "fp16"):
        assert (a @ a).dtype == torch.float16
    x = maybe_channels_last(torch.randn(2, 3, 8, 8, device="cuda"), True, "cuda")
    assert x.is_contiguous(memory_format=torch.channels_last)
    train, val = _data(8), _data(4, seed=1)
    cfg = TrainConfig(method="transfer", omega=(3, 4), epochs=1, batch_size=4, device="cuda", **FLAGS)
    res = train_model(build_model("small", seed=0), train, val, cfg, progress=False)
    assert np.isfinite(res.history["train_loss"]).all()
    assert all(p.dtype == torch.float32 for p in res.model.parameters())
