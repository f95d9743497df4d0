"""DDSM pre-training (Sec. 4.1, "DDSM" rows of Table 2) on several processes under ``torchrun``
with DistributedDataParallel.

Equivalence with one process (docs/DECISIONS.md, "Distributed pre-training"): the profile's
``batch_size`` is the *global* batch; every process draws the same global batches and the same
augmentation from :func:`mammo_lib.engines.training.epoch_generator` ``(seed, epoch)`` and trains on rows
``rank::world_size`` of each (not torch's ``DistributedSampler``: its own permutation and
padding with repeated samples would change the batches). Each process's loss is scaled by
``world_size * n_local / n_global`` so that DDP's gradient average equals the gradient of the
global-batch mean. Hence the loss trajectory equals the single-process run with the same
``batch_size`` up to float summation order, for BatchNorm-free networks and, on CUDA, with
BatchNorm converted to ``SyncBatchNorm``. torch's ``SyncBatchNorm`` refuses CPU tensors, so on
CPU/gloo DenseNet's BatchNorms normalise per process (DDP broadcasts rank 0's running statistics
at each forward): close to, not exactly, the single-process run.

Only rank 0 writes checkpoints, metrics and progress bars; the checkpoint is the file
:func:`mammo_lib.repro.table2.ddsm_trunk` writes, in the same ``run_dir``, so the next stage finds it.

The profile's DDSM pre-training under torchrun is :mod:`mammo_lib.repro.ddp_pretrain`::

    torchrun --nproc_per_node 4 -m mammo_lib.repro.ddp_pretrain pretrain --profile demo --device cuda
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Iterator, Optional

import torch
import torch.distributed as dist
from torch import Tensor, nn


#: torchrun's variables that :func:`init_from_env` reads (plus MASTER_ADDR / MASTER_PORT, read by torch).
ENV_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@dataclass(frozen=True)
class DistEnv:
    """This process's place: ``rank`` of ``world_size``, ``local_rank`` on its node, ``backend``
    (``None`` when not launched by torchrun: a single process, nothing initialised)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: Optional[str] = None

    @property
    def active(self) -> bool:
        return self.backend is not None


def _env_int(name: str) -> int:
    raw = os.environ.get(name)
    try:
        value = int(raw)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"environment variable {name} must be an int, got {raw!r}") from None
    if value < 0:
        raise ValueError(f"environment variable {name} must be >= 0, got {value}")
    return value


def init_from_env(device: str = "cpu", *, timeout_s: float = 4 * 3600) -> DistEnv:
    """Join the process group torchrun describes (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``):
    ``nccl`` when ``device`` is CUDA (and the process's GPU becomes ``cuda:LOCAL_RANK``), else
    ``gloo``. Without those variables: a no-op returning ``DistEnv()`` (one process).

    ``timeout_s`` bounds collectives and barriers (long: rank 0 preprocesses while the others wait).

    >>> init_from_env()  # not under torchrun
    DistEnv(rank=0, world_size=1, local_rank=0, backend=None)
    """
    present = [v for v in ENV_VARS if v in os.environ]
    if not present:
        return DistEnv()
    missing = [v for v in ENV_VARS if v not in os.environ]
    if missing:
        raise ValueError(f"incomplete torchrun environment: {present} set but {missing} missing")
    rank, world, local = (_env_int(v) for v in ENV_VARS)
    if world < 1 or rank >= world:
        raise ValueError(f"RANK={rank} must be < WORLD_SIZE={world}")
    cuda = torch.device(device).type == "cuda"
    if cuda:
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} requested but CUDA is not available")
        torch.cuda.set_device(local)  # "cuda" now means this process's GPU
    backend = "nccl" if cuda else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend, rank=rank, world_size=world, timeout=timedelta(seconds=timeout_s))
    return DistEnv(rank, world, local, backend)


def is_main() -> bool:
    """True in the process that writes files: rank 0, or the only process."""
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def barrier() -> None:
    """Wait for every process (no-op in a single process)."""
    if dist.is_available() and dist.is_initialized():
        if dist.get_backend() == "nccl":
            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier()


@contextmanager
def process_group(device: str = "cpu", **kw: Any) -> Iterator[DistEnv]:
    """:func:`init_from_env`, and on exit (also on error) destroy the process group it created.

    >>> with process_group("cpu") as env:
    ...     env.world_size
    1
    """
    created = not (dist.is_available() and dist.is_initialized())
    env = init_from_env(device, **kw)
    try:
        yield env
    finally:
        if env.active and created and dist.is_initialized():
            dist.destroy_process_group()


class DDPHooks:
    """The ``parallel`` argument of :func:`mammo_lib.engines.training.train_model`: wrap the model in DDP
    (SyncBatchNorm on CUDA), shard each global batch, average logged losses over processes and
    share rank 0's validation numbers (so every process selects and stops alike).

    >>> with process_group("cuda") as env:  # doctest: +SKIP
    ...     train_model(model, train, val, cfg, checkpoint_dir=out, parallel=DDPHooks())
    """

    def __init__(self, *, sync_batchnorm: bool = True) -> None:
        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError("DDPHooks needs an initialised process group (init_from_env under torchrun)")
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        self.sync_batchnorm = sync_batchnorm
        self.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def wrap(self, model: nn.Module) -> nn.Module:
        """``DistributedDataParallel`` over ``model`` (on its device); on CUDA its BatchNorms become
        ``SyncBatchNorm`` in place (same parameters and buffers, same state-dict keys)."""
        self.device = next(model.parameters()).device
        cuda = self.device.type == "cuda"
        if cuda and self.sync_batchnorm:
            converted = nn.SyncBatchNorm.convert_sync_batchnorm(model)
            if converted is not model:
                raise TypeError("a model that is itself a BatchNorm layer cannot be converted in place")
        return nn.parallel.DistributedDataParallel(model, device_ids=[self.device.index] if cuda else None)

    def shard(self, x: Tensor, m: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor, float]:
        """This rank's rows of a global batch, and the loss scale ``world * n_local / n_global``."""
        n = len(y)
        if n < self.world_size:
            raise ValueError(f"a global batch of {n} cannot feed {self.world_size} processes")
        sl = slice(self.rank, None, self.world_size)
        n_local = len(range(self.rank, n, self.world_size))
        return x[sl], m[sl], y[sl], self.world_size * n_local / n

    def _all_reduce(self, t: Tensor) -> Tensor:
        t = t.to(self.device)
        dist.all_reduce(t)
        return t.cpu()

    def mean(self, parts: dict[str, float], n_local: int) -> dict[str, float]:
        """Global-batch means of per-process means over ``n_local`` samples."""
        keys = sorted(parts)
        t = torch.tensor([n_local] + [parts[k] * n_local for k in keys], dtype=torch.float64)
        t = self._all_reduce(t)
        return {k: float(t[i + 1] / t[0]) for i, k in enumerate(keys)}

    def agree(self, *values: float) -> tuple[float, ...]:
        """``values`` as rank 0 has them."""
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.broadcast(t, src=0)
        return tuple(float(v) for v in t.cpu())
