"""The profile's DDSM trunks pre-trained by several processes under ``torchrun`` (Sec. 4.1, "DDSM"
rows of Table 2), with the hooks of :mod:`mammo_lib.engines.distributed`; the checkpoint is the file
:func:`mammo_lib.repro.table2.ddsm_trunk` writes, so the next stage finds it. Launch::

    torchrun --nproc_per_node 4 -m mammo_lib.repro.ddp_pretrain pretrain --profile demo --device cuda
"""
from __future__ import annotations

import argparse
import os
from typing import Any, Optional, Sequence

from mammo_lib.engines.distributed import DDPHooks, barrier, process_group
from mammo_lib.repro.config import load_config
from mammo_lib.repro.runtime import pin_numerics
from mammo_lib.repro.datasets import roi_sets
from mammo_lib.repro.table2 import ddsm_trunk, imagenet_trunk
from mammo_lib.repro.table2 import trunk_seeds as profile_seeds


def pretrain_ddp(cfg: Any, *, trunk_seeds: Optional[Sequence[int]] = None, progress: bool = True) -> dict[str, Any]:
    """The profile's DDSM trunks (:func:`mammo_lib.repro.table2.ddsm_trunk`, one per trunk seed of
    ``cv.trunk_seeds``, or those in ``trunk_seeds``) trained by all torchrun processes, one after
    the other; in a single process the same as ``ddsm_trunk(cfg, trunk_seed=t)``. Rank 0 first
    prepares the data and each seed's ``imagenet`` trunk (cached on disk), then the others load
    them. Returns the first seed's trunk, with every seed's under ``"all"``.

    >>> from mammo_lib.repro.config import load_config
    >>> pretrain_ddp(load_config("smoke"), progress=False)["weights"]  # doctest: +SKIP
    '.../pretrain-<digest>/ddsm_pretrained.pt'
    """
    seeds = list(profile_seeds(cfg) if trunk_seeds is None else trunk_seeds)
    with process_group(cfg["device"]) as env:
        main = env.rank == 0
        if main:
            roi_sets(cfg, progress=progress)
            for t in seeds:
                imagenet_trunk(cfg, trunk_seed=t, progress=progress)
        barrier()
        roi_sets(cfg, progress=False)
        hooks = DDPHooks() if env.world_size > 1 else None
        outs = []
        for t in seeds:
            outs.append(ddsm_trunk(cfg, trunk_seed=t, progress=progress and main, parallel=hooks))
            barrier()
    return {**outs[0], "all": outs}


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m mammo_lib.repro.ddp_pretrain pretrain --profile P`` (launched by torchrun)."""
    ap = argparse.ArgumentParser(prog="python -m mammo_lib.repro.ddp_pretrain",
                                 description="DDSM pre-training on several processes (run by torchrun)")
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pretrain", help="train the profile's DDSM trunk with DistributedDataParallel")
    p.add_argument("--profile", default="", help="profile name (default: $MAMMO_PROFILE or demo)")
    p.add_argument("--data-root", default=None)
    p.add_argument("--device", default=None, help="cpu (gloo) or cuda (nccl); default: the profile's")
    p.add_argument("--work-dir", default=None, help="default: the profile's work_dir")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--trunk-seed", type=int, action="append", default=None,
                   help="a trunk seed of cv.trunk_seeds to pre-train (repeatable; default: every one)")
    a = ap.parse_args(argv)
    cfg = load_config(a.profile, {"data_root": a.data_root, "device": a.device, "work_dir": a.work_dir})
    pin_numerics(cfg)  # each torchrun process computes at the profile's threads and precision
    out = pretrain_ddp(cfg, trunk_seeds=a.trunk_seed, progress=not a.no_progress)
    if os.environ.get("RANK", "0") == "0":
        for o in out["all"]:
            print(f"trunk seed {o['seed']} checkpoint: {o['weights']}  test accuracy: {o['test_accuracy']:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
