"""Tests of mammo_lib.engines.training: tiny torchvision DenseNet ("small") at 32/64 px, 16 samples."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from mammo_lib.networks.densenet import build_model, set_trainable
from mammo_lib.engines.training import TensorData, TrainConfig, epoch_generator, predict, train_model
from mammo_lib.networks.transfer import make_teacher

# ---------------------------------------------------------------- tables of cases
CONFIG_FAIL_CASES = [
    (dict(method="distill"), ValueError, "method"),
    (dict(input="mask", method="transfer"), ValueError, "ROI input"),
    (dict(epochs=0), ValueError, "epochs >= 1"),
    (dict(batch_size=1), ValueError, "batch_size >= 2"),
    (dict(epochs="3"), TypeError, "epochs must be an int"),
    (dict(lr=0.0), ValueError, "lr must be > 0"),
    (dict(weight_decay=-1.0), ValueError, "weight_decay"),
    (dict(omega=(5,)), ValueError, "omega"),
    (dict(augment=("zoom",)), ValueError, "zoom"),
    (dict(patience=0), ValueError, "patience"),
    (dict(trainable="group3"), ValueError, "trainable"),
    (dict(distance_form="l1"), ValueError, "distance_form"),
    (dict(prefetch_threads=-1), ValueError, "prefetch_threads must be >= 0"),
    (dict(prefetch_threads=1.5), TypeError, "prefetch_threads must be an int"),
]

DATA_FAIL_CASES = [
    (dict(images=np.zeros((2, 8, 8)), masks=np.zeros((2, 8, 9)), labels=[0, 1]), "masks shape"),
    (dict(images=np.zeros((2, 8, 8)), masks=np.zeros((2, 8, 8)), labels=[0, 2]), "labels"),
    (dict(images=np.zeros((2, 8, 8)), masks=np.full((2, 8, 8), 3), labels=[0, 1]), "only 0 and 1"),
    (dict(images=np.zeros((3, 8, 8)), masks=np.zeros((3, 8, 8)), labels=[0, 1]), "images must be"),
    (dict(images=np.zeros((2, 8, 8)), masks=np.zeros((2, 8, 8)), labels=[0, 1], ids=["a"]), "ids"),
]

PREDICT_FAIL_CASES = [
    (dict(input="both"), ValueError, "input"),
    (dict(batch_size=0), ValueError, "batch_size"),
]

FAST = dict(epochs=1, batch_size=4, lr=1e-2)


# ---------------------------------------------------------------- tiny data
def _data(n: int = 16, size: int = 32, seed: int = 0, offset: int = 0) -> TensorData:
    """Benign: small bright square; malignant: larger one; masks mark the square."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    images = (0.2 * rng.random((n, size, size))).astype(np.float32)
    masks = np.zeros((n, size, size), np.uint8)
    c = size // 2
    for i, y in enumerate(labels):  # n is tiny: one slice assignment per sample
        r = size // 8 if y == 0 else size // 4
        masks[i, c - r:c + r, c - r:c + r] = 1
    images = np.clip(images + 0.7 * masks, 0, 1).astype(np.float32)
    return TensorData(images, masks, labels, [f"c{offset + i}" for i in range(n)])


def _split(size: int = 32) -> tuple[TensorData, TensorData]:
    tr, va = _data(12, size), _data(6, size, seed=1, offset=100)
    return tr, va


def _model(seed: int = 0):
    return build_model("small", seed=seed)


def _state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)


def _hist(df: pd.DataFrame) -> pd.DataFrame:
    return df.drop(columns=["seconds"])


# ---------------------------------------------------------------- config and data
@pytest.mark.parametrize("kwargs, exc, match", CONFIG_FAIL_CASES)
def test_train_config_rejects(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        TrainConfig(**kwargs)


def test_train_config_round_trip():
    cfg = TrainConfig(method="transfer", omega=[3, 4], augment=["hflip"], beta=2.0)
    assert cfg.omega == (3, 4) and cfg.augment == ("hflip",)
    d = cfg.to_dict()
    assert json.loads(json.dumps(d)) == d
    assert TrainConfig.from_dict(d) == cfg
    with pytest.raises(ValueError, match="unknown TrainConfig fields"):
        TrainConfig.from_dict({**d, "lr_schedule": "cosine"})


@pytest.mark.parametrize("kwargs, match", DATA_FAIL_CASES)
def test_tensor_data_rejects(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TensorData(**kwargs)


def test_tensor_data_from_roiset():
    class _Roi:  # RoiSet-like stand-in
        index = pd.DataFrame({"case_id": ["a", "b", "c"]})
        images = np.stack([np.full((4, 4), v, np.float32) for v in (0.1, 0.2, 0.3)])
        masks = np.ones((3, 4, 4), np.uint8)
        labels = np.array([0, 1, 1])

    td = TensorData.from_roiset(_Roi(), [2, 0])
    assert td.ids == ["c", "a"] and td.labels.tolist() == [1, 0]
    assert td.images[:, 0, 0].tolist() == pytest.approx([0.3, 0.1])
    with pytest.raises(IndexError):
        TensorData.from_roiset(_Roi(), [3])


def test_epoch_generator_depends_on_seed_and_epoch_only():
    draw = lambda s, e: torch.randperm(50, generator=epoch_generator(s, e)).tolist()  # noqa: E731
    assert draw(0, 1) == draw(0, 1)
    assert draw(0, 1) != draw(0, 2) and draw(0, 1) != draw(1, 1)


# ---------------------------------------------------------------- training behaviour
def test_frozen_parameters_do_not_change_and_trainable_ones_do():
    tr, va = _split()
    model = _model()
    before = _state(model)
    train_model(model, tr, va, TrainConfig(**FAST), progress=False)
    trainable = set(set_trainable(_model(), "group4+classifier"))
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    for k in before:
        frozen = not k.startswith(("features.denseblock4.", "features.norm5.", "classifier."))
        if frozen:  # weights and BatchNorm running statistics alike
            assert k not in changed, k
    assert {k for k in trainable if k.endswith("weight")} <= changed
    assert "features.norm5.running_mean" in changed  # a trainable BatchNorm does update


def test_same_seed_same_weights_other_seed_other_weights():
    tr, va = _split()
    runs = []
    for seed in (0, 0, 1):
        m = _model()
        train_model(m, tr, va, TrainConfig(**FAST, seed=seed), progress=False)
        runs.append(_state(m))
    _assert_same_state(runs[0], runs[1])
    assert not torch.equal(runs[0]["classifier.weight"], runs[2]["classifier.weight"])


def test_finetune_ignores_beta():
    tr, va = _split()
    states = []
    for beta in (0.0, 100.0):
        m = _model()
        r = train_model(m, tr, va, TrainConfig(**FAST, beta=beta), progress=False)
        states.append(_state(m))
        assert r.history["train_d4"].isna().all()
    _assert_same_state(*states)


def test_transfer_teacher_is_frozen_initial_network():
    tr, va = _split(64)  # group 4 is 2x2 at 64 px (1x1 at 32 px makes Eq. 4 trivially 0)
    cfg = TrainConfig(method="transfer", beta=5.0, **FAST)
    m_default = _model()
    r = train_model(m_default, tr, va, cfg, progress=False)
    assert (r.history["train_d4"] > 0).all()
    assert (r.history["train_loss"] > r.history["train_ce"]).all()  # Eq. 5 adds beta/2 * d4
    teacher = make_teacher(_model())
    t_before = _state(teacher)
    m_explicit = _model()
    train_model(m_explicit, tr, va, cfg, teacher=teacher, progress=False)
    _assert_same_state(_state(m_default), _state(m_explicit))
    _assert_same_state(t_before, _state(teacher))
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    # transfer differs from fine-tuning
    m_ft = _model()
    train_model(m_ft, tr, va, cfg.replace(method="finetune"), progress=False)
    assert not torch.equal(m_ft.classifier.weight, m_default.classifier.weight)


def test_selection_on_validation_and_reported_loss():
    tr, va = _split()
    model = _model().eval()
    r = train_model(model, tr, va, TrainConfig(epochs=3, batch_size=4, lr=5e-2), progress=False)
    assert not any(m.training for m in model.modules())  # the caller's mode is restored
    h = r.history
    assert list(h.columns) == ["epoch", "train_loss", "train_ce", "train_d4", "val_loss", "val_accuracy", "seconds"]
    order = h.sort_values(["val_accuracy", "val_loss", "epoch"], ascending=[False, True, True])
    assert r.best_epoch == int(order["epoch"].iloc[0])
    # the returned model is the selected one: its un-augmented eval-mode loss on val is the logged one
    p = predict(model, va.images)
    ce = -np.log(p[np.arange(len(va)), va.labels]).mean()
    assert ce == pytest.approx(h.loc[h["epoch"] == r.best_epoch, "val_loss"].iloc[0], rel=1e-5)
    assert r.best_val_accuracy == pytest.approx(float((p.argmax(1) == va.labels).mean()))


def test_mask_only_model_never_looks_at_images():
    tr, va = _split()
    cfg = TrainConfig(input="mask", **FAST)
    m1, m2 = _model(), _model()
    train_model(m1, tr, va, cfg, progress=False)
    noisy = TensorData(np.random.default_rng(5).random(tr.images.shape, dtype=np.float32), tr.masks, tr.labels, tr.ids)
    train_model(m2, noisy, va, cfg, progress=False)
    _assert_same_state(_state(m1), _state(m2))


def test_class_weighting_changes_training():
    tr = TensorData(*[a[[0, 1, 2, 4, 6, 8, 10]] for a in (_data(12).images, _data(12).masks, _data(12).labels)])
    _, va = _split()
    a, b = _model(), _model()
    train_model(a, tr, va, TrainConfig(**FAST), progress=False)
    train_model(b, tr, va, TrainConfig(**FAST, class_weighting=True), progress=False)
    assert not torch.equal(a.classifier.weight, b.classifier.weight)
    one_class = TensorData(tr.images[1:], tr.masks[1:], np.zeros(6, int))
    with pytest.raises(ValueError, match="both classes"):
        train_model(_model(), one_class, va, TrainConfig(**FAST, class_weighting=True), progress=False)


def test_patience_stops_after_no_improvement():
    tr, va = _split()
    r = train_model(_model(), tr, va, TrainConfig(epochs=6, batch_size=4, lr=5e-2, patience=1), progress=False)
    h = r.history
    # replay the rule on the logged numbers: stop at the first epoch that does not beat the best
    # (higher val accuracy, ties -> lower val loss)
    best, expected = None, 6
    for e, acc, loss in zip(h["epoch"], h["val_accuracy"], h["val_loss"]):
        if best is not None and not (acc > best[0] or (acc == best[0] and loss < best[1])):
            expected = e + 1
            break
        best = (acc, loss)
    assert r.epochs_run == expected
    assert r.stopped_early == (expected < 6)
    assert r.epochs_run < 6  # this tiny run does stop early (else the test proves nothing)


# ---------------------------------------------------------------- checkpoint / resume
class _Interrupt(KeyboardInterrupt):
    pass


def _stop_after(epoch_to_stop: int):
    def cb(epoch: int, row: dict) -> None:
        if epoch == epoch_to_stop:
            raise _Interrupt()
    return cb


@pytest.mark.parametrize("method, size", [("finetune", 32), ("transfer", 64)])
def test_interrupted_run_resumes_to_identical_result(tmp_path, method, size):
    tr, va = _split(size)
    cfg = TrainConfig(method=method, epochs=2, batch_size=4, lr=1e-2, seed=3)
    ref_model = _model()
    ref = train_model(ref_model, tr, va, cfg, progress=False)

    ck = tmp_path / "run"
    with pytest.raises(_Interrupt):
        train_model(_model(), tr, va, cfg, checkpoint_dir=ck, progress=False, on_epoch_end=_stop_after(0))
    assert (ck / "last.pt").exists() and not (ck / "done.json").exists()
    resumed_model = _model()  # a fresh process would rebuild the same initial network
    res = train_model(resumed_model, tr, va, cfg, checkpoint_dir=ck, progress=False)
    assert res.resumed_from == 1
    _assert_same_state(_state(ref_model), _state(resumed_model))
    pd.testing.assert_frame_equal(_hist(ref.history), _hist(res.history))
    assert res.best_epoch == ref.best_epoch
    done = json.loads((ck / "done.json").read_text())
    assert done["best_epoch"] == ref.best_epoch
    loaded = build_model("small", weights=ck / "best.pt")
    np.testing.assert_allclose(predict(loaded, va.images), predict(resumed_model, va.images), rtol=0, atol=0)
    # a rerun after completion trains nothing and returns the same model
    again_model = _model()
    again = train_model(again_model, tr, va, cfg, checkpoint_dir=ck, progress=False)
    assert again.resumed_from == 2
    _assert_same_state(_state(again_model), _state(resumed_model))


def test_resume_refuses_other_settings(tmp_path):
    tr, va = _split()
    cfg = TrainConfig(**FAST)
    train_model(_model(), tr, va, cfg, checkpoint_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match=r"another TrainConfig \(differs in \['lr'\]\)"):
        train_model(_model(), tr, va, cfg.replace(lr=1e-3), checkpoint_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match="other train/val data"):
        train_model(_model(), va, tr, cfg, checkpoint_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match="another initial network"):
        train_model(_model(seed=9), tr, va, cfg, checkpoint_dir=tmp_path, progress=False)


# ---------------------------------------------------------------- prediction
def test_predict_batched_equals_one_by_one_and_restores_mode():
    tr, _ = _split()
    model = _model()
    set_trainable(model, "group4+classifier")
    model.train()
    model.features.norm0.eval()
    modes = {n: m.training for n, m in model.named_modules()}
    p_all = predict(model, tr.images, batch_size=5)
    p_one = np.concatenate([predict(model, tr.images[i:i + 1]) for i in range(len(tr))])
    np.testing.assert_allclose(p_all, p_one, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(p_all.sum(1), 1.0)
    assert p_all.shape == (len(tr), 2)
    assert {n: m.training for n, m in model.named_modules()} == modes
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("kwargs, exc, match", PREDICT_FAIL_CASES)
def test_predict_rejects(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        predict(_model(), np.zeros((2, 32, 32), np.float32), **kwargs)
    with pytest.raises(ValueError, match=r"\(N,S,S\)"):
        predict(_model(), np.zeros((32, 32), np.float32))


@pytest.mark.parametrize("n, batch_size, expected_sizes", [
    (9, 8, [9]),            # two chunks, the last of one sample: merged (the case that once crashed)
    (17, 8, [8, 9]),
    (16, 8, [8, 8]),
    (1, 8, [1]),
])
def test_batches_never_leave_a_single_sample_batch(n, batch_size, expected_sizes):
    from mammo_lib.engines.training import _batches

    chunks = _batches(n, batch_size, torch.Generator().manual_seed(0))
    assert [len(c) for c in chunks] == expected_sizes
    assert sorted(torch.cat(chunks).tolist()) == list(range(n))


@pytest.mark.parametrize("threads", [1, 3])
def test_prefetched_batches_give_the_same_training(threads):
    """Batches assembled ahead in threads (rotation included) train to bit-identical weights."""
    tr, va = _data(18, size=32), _data(6, size=32, seed=1, offset=100)
    cfg = TrainConfig(epochs=2, batch_size=4, lr=1e-2, method="transfer", beta=4.0, seed=5,
                      augment=("hflip", "vflip", "rotate"))
    runs = [train_model(build_model("small", seed=2), tr, va, cfg.replace(prefetch_threads=t), progress=False)
            for t in (0, threads)]
    cols = ["train_loss", "train_ce", "train_d4", "val_loss", "val_accuracy"]
    np.testing.assert_array_equal(runs[0].history[cols].to_numpy(), runs[1].history[cols].to_numpy())
    for k, v in runs[0].model.state_dict().items():
        assert torch.equal(v, runs[1].model.state_dict()[k]), k
    assert "prefetch_threads" not in cfg.to_dict() and cfg.replace(prefetch_threads=2).to_dict()["prefetch_threads"] == 2


def test_prefetch_threads_end_with_a_failed_step():
    import threading

    def boom(epoch, step, parts):
        if step == 1:
            raise RuntimeError("step failed")

    with pytest.raises(RuntimeError, match="step failed"):
        train_model(build_model("small", seed=0), _data(16), _data(4, seed=1, offset=50),
                    TrainConfig(**FAST, prefetch_threads=2), on_step=boom, progress=False)
    assert not [t for t in threading.enumerate() if t.name.startswith("mammo-kt-batches")]


def test_resume_ignores_prefetch_threads(tmp_path):
    """A run interrupted with one prefetch setting resumes with another (same numbers)."""
    tr, va = _data(12), _data(4, seed=1, offset=50)
    cfg = TrainConfig(epochs=3, batch_size=4, lr=1e-2, seed=1)
    ref = train_model(build_model("small", seed=0), tr, va, cfg, progress=False)

    def stop(epoch, step, parts):
        if epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_model(build_model("small", seed=0), tr, va, cfg, checkpoint_dir=tmp_path, on_step=stop, progress=False)
    res = train_model(build_model("small", seed=0), tr, va, cfg.replace(prefetch_threads=2), checkpoint_dir=tmp_path,
                      progress=False)
    assert res.resumed_from == 1
    np.testing.assert_array_equal(res.history["train_loss"].to_numpy(), ref.history["train_loss"].to_numpy())
