"""Benchmark: the input side of the uncached trainings (the DDSM pre-training, Table 1, the generic
stand-in), which kept the GPU waiting in the H200 run (``results/benchmarks/GPU.md``).

- ``prefetch``: one epoch of :func:`~mammo_lib.engines.training.train_model` (all layers, flips and
  rotation, batches of 16 at 224 px) with ``prefetch_threads`` 0 (each batch assembled when the
  step needs it) vs N (batches assembled ahead in threads); the weights are bit-identical (tested),
  so only the time differs;
- ``task``: drawing the generic task's images (:func:`~mammo_lib.protocol.stand_in.shape_task`) with 1 vs
  N worker processes (identical images).

Medians of interleaved repeats, as ratios of this one run (the machine is shared and noisy). The
step runs on ``--torch-threads`` (default 1) so that the prefetch thread has a core of its own, as
it has beside a GPU step; with every core busy in the step (a CPU-only run) prefetching only
competes for them, which is why CPU profiles leave ``prefetch_threads`` at 0.

    .venv/bin/python benchmarks/bench_input.py [--repeats 3] [--threads 1] [--torch-threads 1] [--arch small]

Writes results/benchmarks/input.json and input.md.
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from mammo_lib.utils.files import write_json, write_text
from mammo_lib.networks.densenet import build_model
from mammo_lib.repro.report import environment_info, markdown_table
from mammo_lib.protocol.stand_in import shape_task
from mammo_lib.engines.training import TensorData, TrainConfig, train_model


def _interleaved(ways: dict, repeats: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {k: [] for k in ways}
    for name, fn in ways.items():  # warm-up
        fn()
    for _ in range(repeats):
        for name, fn in ways.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return times


def bench_prefetch(arch: str, threads: int, n: int, repeats: int) -> dict:
    task = shape_task(n + 16, 224, seed=0)
    masks = (task.masks > 0).astype(np.uint8)
    labels = task.labels % 2
    tr = TensorData(task.images[:n], masks[:n], labels[:n])
    va = TensorData(task.images[n:], masks[n:], labels[n:])
    cfg = TrainConfig(epochs=1, batch_size=16, lr=1e-4, trainable="all", seed=0,
                      augment=("hflip", "vflip", "rotate"))
    ways = {f"prefetch_threads={t}": (lambda t=t: train_model(build_model(arch, seed=0), tr, va,
                                                              cfg.replace(prefetch_threads=t), progress=False))
            for t in (0, threads)}
    times = _interleaved(ways, repeats)
    med = {k: statistics.median(v) for k, v in times.items()}
    a, b = med["prefetch_threads=0"], med[f"prefetch_threads={threads}"]
    return {"what": "one epoch of train_model", "arch": arch, "images": n, "batch": 16, "augment": list(cfg.augment),
            "seconds_median": med, "seconds_all": times, "speedup": a / b}


def bench_task(workers: int, n: int, repeats: int) -> dict:
    ways = {f"workers={w}": (lambda w=w: shape_task(n, 224, seed=1, workers=w)) for w in (1, workers)}
    times = _interleaved(ways, repeats)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"what": "generic task images (shape_task)", "images": n, "seconds_median": med, "seconds_all": times,
            "speedup": med["workers=1"] / med[f"workers={workers}"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="prefetch threads")
    ap.add_argument("--workers", type=int, default=2, help="task worker processes")
    ap.add_argument("--arch", default="small")
    ap.add_argument("--images", type=int, default=192, help="training images of the timed epoch")
    ap.add_argument("--task-images", type=int, default=384)
    ap.add_argument("--torch-threads", type=int, default=1,
                    help="torch threads of the step (1: the step on one core, the prefetch threads on the others, "
                         "the CPU stand-in for a step that runs on a GPU)")
    ap.add_argument("--out", default="results/benchmarks")
    args = ap.parse_args()
    torch.set_num_threads(args.torch_threads)
    pre = bench_prefetch(args.arch, args.threads, args.images, args.repeats)
    task = bench_task(args.workers, args.task_images, args.repeats)
    out = Path(args.out)
    write_json(out / "input.json", {"benchmark": "input side of uncached training", "torch_threads": torch.get_num_threads(),
                                    "environment": environment_info(), "prefetch": pre, "task": task})
    rows = [{"measure": f"{pre['what']} ({pre['arch']}, {pre['images']} images, flips + rotation)",
             "baseline": "prefetch_threads=0", "variant": f"prefetch_threads={args.threads}",
             "baseline s (median)": round(pre["seconds_median"]["prefetch_threads=0"], 3),
             "variant s (median)": round(pre["seconds_median"][f"prefetch_threads={args.threads}"], 3),
             "speed-up": round(pre["speedup"], 2)},
            {"measure": f"{task['what']}, {task['images']} images at 224 px", "baseline": "workers=1",
             "variant": f"workers={args.workers}", "baseline s (median)": round(task["seconds_median"]["workers=1"], 3),
             "variant s (median)": round(task["seconds_median"][f"workers={args.workers}"], 3),
             "speed-up": round(task["speedup"], 2)}]
    table = pd.DataFrame(rows)
    write_text(out / "input.md", f"Input side of the uncached trainings, CPU, {torch.get_num_threads()} torch threads "
                                 f"(`benchmarks/bench_input.py`)\n\n" + markdown_table(table) + "\n")
    print(markdown_table(table))


if __name__ == "__main__":
    main()
