"""Benchmark: Table 2's beta grid (six heads: beta 0, 2, 8, 32, 128 in Eq. 4's form and 1000 in the
attention-transfer form) trained one by one (:func:`~mammo_lib.engines.trunk_cache.train_head` six times)
vs together (:func:`~mammo_lib.engines.trunk_cache.train_heads`, one grouped step), at 224 px (7x7
group-4 map) for the small network and DenseNet121.

Two measures, both as ratios of this one run (the machine is shared and noisy):

- ``seconds``: medians of interleaved repeats (one by one, together, one by one, ...);
- ``aten_ops``: operators dispatched per training epoch (forward, backward, optimiser,
  validation), counted with a ``TorchDispatchMode``. On a GPU each is at least one kernel launch,
  and at Table 2's sizes (batches of 16 7x7 maps) a step is bound by launches, not arithmetic, so
  this ratio is what a GPU gains; the CPU seconds show what a CPU gains, where the arithmetic
  dominates for DenseNet121. Counted per epoch in steady state: ops(2 epochs) - ops(1 epoch).

    .venv/bin/python benchmarks/bench_heads.py [--repeats 3] [--epochs 2] [--device cpu]

Writes results/benchmarks/heads.json and heads.md.
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from mammo_lib.protocol.instrument import beta_grid
from mammo_lib.utils.files import write_json, write_text
from mammo_lib.networks.densenet import build_model
from mammo_lib.repro.report import environment_info, markdown_table
from mammo_lib.engines.training import TrainConfig
from mammo_lib.engines.trunk_cache import TrunkCache, train_head, train_heads


class _CountOps(TorchDispatchMode):
    """Counts the aten operators dispatched while active."""

    def __init__(self) -> None:
        super().__init__()
        self.n = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: D105
        self.n += 1
        return func(*args, **(kwargs or {}))


def _cache(arch: str, n: int, seed: int) -> TrunkCache:
    """Random non-negative trunk outputs of the right shape (what groups 1-3 give at 224 px) and
    teacher maps: the timing does not depend on their values."""
    net = build_model(arch, seed=0)
    c = net.features.denseblock4.denselayer1.norm1.num_features
    g = torch.Generator().manual_seed(seed)
    feats = torch.rand(n, 1, c, 7, 7, generator=g)
    maps = torch.rand(n, 1, 7, 7, generator=g)
    return TrunkCache(feats, maps, maps.clone(), np.arange(n) % 2, [str(i) for i in range(n)], ("none",))


def bench_arch(arch: str, *, n_train: int, n_val: int, epochs: int, repeats: int, device: str) -> dict:
    cache = _cache(arch, n_train + n_val, 0)
    tr, va = cache.subset(range(n_train)), cache.subset(range(n_train, n_train + n_val))
    grid = beta_grid()
    cfgs = [TrainConfig(epochs=epochs, batch_size=16, lr=1e-4, method="finetune" if p.is_finetune else "transfer",
                        beta=p.beta, distance_form=p.form, augment=(), device=device, seed=1) for p in grid]

    def one_by_one() -> None:
        for cfg in cfgs:
            train_head(build_model(arch, seed=1), tr, va, cfg)

    def together() -> None:
        train_heads([build_model(arch, seed=1) for _ in cfgs], tr, va, cfgs)

    ways = {"one_by_one": one_by_one, "together": together}

    def count(name: str, n_epochs: int) -> int:
        """Operators dispatched by the training calls alone (networks built outside the count)."""
        run_cfgs = [c.replace(epochs=n_epochs, patience=None) for c in cfgs]
        nets = [build_model(arch, seed=1) for _ in cfgs]
        with _CountOps() as counter:
            if name == "one_by_one":
                for net, cfg in zip(nets, run_cfgs):
                    train_head(net, tr, va, cfg)
            else:
                train_heads(nets, tr, va, run_cfgs)
        return counter.n

    ops = {}
    for name, fn in ways.items():
        fn()  # warm-up
        # per epoch in steady state (set-up and the final copy-back cancel out): ops(E) - ops(E - 1)
        ops[name] = count(name, 2) - count(name, 1)
    times: dict[str, list[float]] = {k: [] for k in ways}
    for _ in range(repeats):
        for name, fn in ways.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"arch": arch, "heads": len(cfgs), "n_train": n_train, "n_val": n_val, "epochs": epochs, "batch": 16,
            "seconds_median": med, "seconds_all": times, "speedup_seconds": med["one_by_one"] / med["together"],
            "aten_ops_per_epoch": ops, "op_ratio": ops["one_by_one"] / ops["together"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--n-train", type=int, default=176, help="training cases (Table 2: 274 lesions, 4/5 x 4/5)")
    ap.add_argument("--n-val", type=int, default=44)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--archs", default="small,densenet121", help="comma-separated architectures")
    ap.add_argument("--out", default="results/benchmarks")
    args = ap.parse_args()
    rows = [bench_arch(a, n_train=args.n_train, n_val=args.n_val, epochs=args.epochs, repeats=args.repeats,
                       device=args.device) for a in args.archs.split(",")]
    out = Path(args.out)
    write_json(out / "heads.json", {"benchmark": "beta grid: six heads one by one vs together", "device": args.device,
                                    "threads": torch.get_num_threads(), "environment": environment_info(),
                                    "results": rows})
    table = pd.DataFrame([{"arch": r["arch"], "heads": r["heads"], "train / val cases": f"{r['n_train']} / {r['n_val']}",
                           "epochs": r["epochs"], "one by one (s, median)": round(r["seconds_median"]["one_by_one"], 3),
                           "together (s, median)": round(r["seconds_median"]["together"], 3),
                           "speed-up (seconds)": round(r["speedup_seconds"], 2),
                           "aten ops per epoch, one by one": r["aten_ops_per_epoch"]["one_by_one"],
                           "aten ops per epoch, together": r["aten_ops_per_epoch"]["together"],
                           "op ratio": round(r["op_ratio"], 2)} for r in rows])
    write_text(out / "heads.md", f"Beta grid (six heads) one by one vs together, device {args.device}, "
                                 f"{torch.get_num_threads()} threads (`benchmarks/bench_heads.py`)\n\n"
               + markdown_table(table) + "\n")
    print(markdown_table(table))


if __name__ == "__main__":
    main()
