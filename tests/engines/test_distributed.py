"""Tests of mammo_lib.engines.distributed: torchrun environment handling and DDP training that follows the
single-process loss trajectory (docs/DECISIONS.md, "Distributed pre-training").

Cases:

| case                               | input                                         | expected                                   |
|------------------------------------|-----------------------------------------------|--------------------------------------------|
| no torchrun variables              | RANK/WORLD_SIZE/LOCAL_RANK unset              | DistEnv(0, 1, 0, None), no process group    |
| process_group without torchrun     | same                                          | yields world_size 1, nothing to tear down  |
| incomplete environment             | RANK=0 only                                   | ValueError "incomplete torchrun environment" |
| RANK not an int                    | RANK="x"                                      | ValueError "RANK must be an int"           |
| RANK >= WORLD_SIZE                 | RANK=2, WORLD_SIZE=2                          | ValueError "must be < WORLD_SIZE=2"        |
| hooks without a process group      | DDPHooks()                                    | RuntimeError "needs an initialised process group" |
| 2 gloo processes, BN-free DenseNet | 21 samples, global batch 8 (4+4, 4+4, 3+2), augmentation on | per-step losses, history and selected weights = one process within 1e-5 |
| 2 gloo processes, DenseNet with BN | same data                                     | both ranks end with identical weights; only rank 0's files |
| torchrun entry point, smoke profile | `torch.distributed.run --nproc_per_node 2 -m mammo_lib.repro.ddp_pretrain pretrain` | exit 0; `ddsm_trunk` in one process finds the checkpoint (skipped) |
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from mammo_lib.engines.distributed import DDPHooks, DistEnv, init_from_env, process_group
from mammo_lib.networks.densenet import build_model
from mammo_lib.engines.training import TensorData, TrainConfig, train_model

ENV_CASES = [
    ({"RANK": "0"}, "incomplete torchrun environment"),
    ({"RANK": "x", "WORLD_SIZE": "2", "LOCAL_RANK": "0"}, "RANK must be an int"),
    ({"RANK": "2", "WORLD_SIZE": "2", "LOCAL_RANK": "0"}, "must be < WORLD_SIZE=2"),
]

N_TRAIN, SIZE = 21, 32
CFG = TrainConfig(epochs=2, batch_size=8, lr=1e-2, trainable="all", seed=3, augment=("hflip", "vflip", "rotate"))


@pytest.fixture
def no_torchrun(monkeypatch: pytest.MonkeyPatch) -> None:
    for v in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(v, raising=False)


def test_init_from_env_is_noop_without_torchrun(no_torchrun: None) -> None:
    assert init_from_env() == DistEnv(0, 1, 0, None)
    assert not dist.is_initialized()
    with process_group("cpu") as env:
        assert env.world_size == 1 and not env.active
    assert not dist.is_initialized()


@pytest.mark.parametrize("env,message", ENV_CASES)
def test_init_from_env_bad_environment(no_torchrun: None, monkeypatch: pytest.MonkeyPatch, env: dict,
                                       message: str) -> None:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ValueError, match=message):
        init_from_env()
    assert not dist.is_initialized()


def test_hooks_need_process_group() -> None:
    with pytest.raises(RuntimeError, match="needs an initialised process group"):
        DDPHooks()


# ----------------------------------------------------------------------------- two processes
def _data() -> tuple[TensorData, TensorData]:
    rng = np.random.default_rng(0)
    n = N_TRAIN + 6
    images = rng.random((n, SIZE, SIZE), dtype=np.float32)
    masks = np.zeros((n, SIZE, SIZE), np.uint8)
    for i in range(n):
        r = 4 + i % 6
        masks[i, 16 - r:16 + r, 16 - r:16 + r] = 1
    labels = np.arange(n) % 2
    images[labels == 1] *= 0.5  # something learnable
    return (TensorData(images[:N_TRAIN], masks[:N_TRAIN], labels[:N_TRAIN]),
            TensorData(images[N_TRAIN:], masks[N_TRAIN:], labels[N_TRAIN:]))


def _model(batchnorm: bool) -> nn.Module:
    """The small DenseNet, seed 0; without BatchNorm (Identity) for the exact comparison."""
    model = build_model("small", seed=0)
    if not batchnorm:
        for module in list(model.modules()):
            for name, child in list(module.named_children()):
                if isinstance(child, nn.BatchNorm2d):
                    setattr(module, name, nn.Identity())
    return model


def _train(batchnorm: bool, ckpt: str | None, parallel: DDPHooks | None) -> dict:
    train, val = _data()
    steps: list[float] = []
    res = train_model(_model(batchnorm), train, val, CFG, checkpoint_dir=ckpt, progress=False, parallel=parallel,
                      on_step=lambda e, s, parts: steps.append(parts["total"]))
    return {"steps": steps, "history": res.history, "best_epoch": res.best_epoch,
            "state": {k: v.detach().clone() for k, v in res.model.state_dict().items()}}


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    with process_group("cpu") as env:
        assert env.backend == "gloo" and env.rank == rank
        result = {bn: _train(bn, f"{out}/ckpt_bn{int(bn)}", DDPHooks()) for bn in (False, True)}
    torch.save(result, f"{out}/rank{rank}.pt")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_follow_single_process_trajectory(tmp_path, no_torchrun: None) -> None:
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    ref = _train(False, None, None)

    # BN-free: the same per-step losses (3 steps x 2 epochs, last batch split 3 + 2), history and weights
    assert len(ref["steps"]) == 6
    for r in ranks:
        got = r[False]
        np.testing.assert_allclose(got["steps"], ref["steps"], rtol=0, atol=1e-5)
        np.testing.assert_allclose(got["history"]["train_loss"], ref["history"]["train_loss"], atol=1e-5)
        np.testing.assert_allclose(got["history"]["val_loss"], ref["history"]["val_loss"], atol=1e-5)
        assert got["best_epoch"] == ref["best_epoch"]
        for k, v in ref["state"].items():
            torch.testing.assert_close(got["state"][k], v, rtol=0, atol=1e-5)
    saved = torch.load(tmp_path / "ckpt_bn0" / "best.pt", weights_only=True)["model_state"]
    for k, v in ref["state"].items():
        torch.testing.assert_close(saved[k], v, rtol=0, atol=1e-5)

    # with BatchNorm on CPU (no SyncBatchNorm): parameters stay identical on both ranks, the logged
    # losses are global means (equal on both ranks), files written once
    a, b = ranks[0][True], ranks[1][True]
    assert a["steps"] == b["steps"] and len(a["steps"]) == 6
    for k, v in a["state"].items():
        if not k.endswith(("running_mean", "running_var", "num_batches_tracked")):
            torch.testing.assert_close(b["state"][k], v, rtol=0, atol=0)
    assert sorted(p.name for p in (tmp_path / "ckpt_bn1").iterdir()) == ["best.pt", "done.json", "last.pt"]


def test_torchrun_entry_point_writes_the_pipeline_checkpoint(tmp_path, no_torchrun: None) -> None:
    from mammo_lib.repro.config import load_config
    from mammo_lib.repro.table2 import ddsm_trunk

    root = Path(__file__).resolve().parents[2]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           str(_free_port()), "-m", "mammo_lib.repro.ddp_pretrain", "pretrain", "--profile", "smoke", "--no-progress",
           "--work-dir", str(tmp_path), "--trunk-seed", "0"]
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert proc.stdout.count("checkpoint: ") == 1  # rank 0 alone reports, one trunk seed asked for
    assert "trunk seed 0 checkpoint: " in proc.stdout
    written = Path(proc.stdout.split("checkpoint: ")[1].split()[0])
    from mammo_lib.utils.precision import in_precision

    with in_precision("float64"):  # the smoke profile's, as the torchrun processes computed it
        trunk = ddsm_trunk(load_config("smoke", {"work_dir": str(tmp_path)}), progress=False)
    assert trunk["result"].skipped and Path(trunk["weights"]) == written
