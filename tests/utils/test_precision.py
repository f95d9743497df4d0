"""Tests of the run's float precision (mammo_lib.utils.precision): the casts by hand, the context
restoring torch's default, and float64 reaching every layer of a training (a forgotten
``.float()`` would bring float32 rounding, and with it the CPU's kernels, back into the smoke run)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from mammo_lib.utils.precision import PRECISIONS, current, dtype_of, full, in_precision, set_precision, widen
from mammo_lib.utils.options import PRECISION_NAMES

# default dtype, input dtype, full(x) dtype, widen(x) dtype
CAST_CASES = [
    (torch.float32, torch.bfloat16, torch.float32, torch.bfloat16),
    (torch.float32, torch.float16, torch.float32, torch.float16),
    (torch.float32, torch.float32, torch.float32, torch.float32),
    (torch.float32, torch.float64, torch.float64, torch.float64),  # never narrowed
    (torch.float64, torch.bfloat16, torch.float64, torch.bfloat16),
    (torch.float64, torch.float32, torch.float64, torch.float64),
    (torch.float64, torch.float64, torch.float64, torch.float64),
    (torch.float64, torch.int64, torch.int64, torch.int64),        # not a float: as it is
]


@pytest.mark.parametrize("default,given,want_full,want_widen", CAST_CASES)
def test_casts(default, given, want_full, want_widen):
    with in_precision({torch.float32: "float32", torch.float64: "float64"}[default]):
        x = torch.ones(3, dtype=given)
        assert full(x).dtype == want_full and widen(x).dtype == want_widen
        assert full(x).tolist() == [1, 1, 1]


def test_float32_default_is_the_identity_on_float32():
    x = torch.randn(5)
    assert full(x) is x and widen(x) is x


def test_context_restores_the_default_also_after_an_error():
    assert torch.get_default_dtype() == torch.float32 and current() == "float32"
    with pytest.raises(RuntimeError, match="inside"):
        with in_precision("float64") as d:
            assert d == torch.float64 and current() == "float64"
            raise RuntimeError("inside")
    assert torch.get_default_dtype() == torch.float32
    assert set_precision("float64") == torch.float32 and current() == "float64"  # conftest restores it


@pytest.mark.parametrize("bad", ["float16", "double", "", None])
def test_unknown_precision_names_the_choices(bad):
    with pytest.raises(ValueError, match="precision must be one of float32, float64"):
        dtype_of(bad)


def test_names_are_declared_once():
    assert tuple(PRECISIONS) == PRECISION_NAMES and PRECISIONS["float64"] is torch.float64


def test_float64_reaches_every_layer_of_a_head_training():
    from mammo_lib.engines.training import TrainConfig
    from mammo_lib.engines.trunk_cache import build_cache, predict_cached, train_heads
    from mammo_lib.networks.densenet import build_model

    from support.tiny import data

    x, m, y = data(12)
    seen: set[torch.dtype] = set()

    def record(_module, _inputs, output):
        if isinstance(output, torch.Tensor) and output.is_floating_point():
            seen.add(output.dtype)

    with in_precision("float64"):
        trunk = build_model("small", seed=1)
        cache = build_cache(trunk, x, m, labels=y, progress=False)
        assert cache.features.dtype == torch.float64 and cache.teacher_maps.dtype == torch.float64
        nets = [build_model("small", seed=s) for s in (0, 1)]
        hooks = [mod.register_forward_hook(record) for net in nets for mod in net.modules()]
        cfgs = [TrainConfig(epochs=1, batch_size=4, method=mt, beta=b) for mt, b in (("finetune", 0), ("transfer", 8))]
        res = train_heads(nets, cache.subset(range(8)), cache.subset(range(8, 12)), cfgs)
        p = predict_cached(nets[1], cache.subset(range(8, 12)))
    for h in hooks:
        h.remove()
    assert seen == {torch.float64}, seen                    # every layer's output, in training and prediction
    assert all(v.dtype == torch.float64 for net in nets for v in net.state_dict().values() if v.is_floating_point())
    assert np.isfinite([r.best_val_loss for r in res]).all() and p.dtype == np.float64
    assert np.allclose(p.sum(axis=1), 1.0, atol=1e-12)
