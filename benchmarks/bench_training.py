"""Benchmark: one training step of group 4 + classifier (Table 2) from the cached frozen trunk vs
through the whole network, for fine-tuning and knowledge transfer (Eq. 5), on DenseNet121 and the
small network at 224 px. Steps are interleaved (A, B, A, B, ...) and medians compared as ratios
measured in this one run: this machine is shared and noisy, so absolute seconds are for
orientation only.

    .venv/bin/python benchmarks/bench_training.py [--repeats 5] [--batch 16] [--device cpu]

Writes results/benchmarks/training.json and training.md. Keys per arch:
``cached_speedup`` (full-network step / cached step, for finetune and transfer) and
``kt_over_ft`` (knowledge transfer / fine-tune: one step cached and full, one whole cached epoch
of ``train_head`` with its validation pass).
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from mammo_lib.networks.densenet import apply_train_mode, build_model, set_trainable
from mammo_lib.utils.files import write_json
from mammo_lib.repro.report import environment_info, markdown_table
from mammo_lib.engines.training import TrainConfig, _step_loss
from mammo_lib.networks.transfer import KnowledgeTransferLoss, make_teacher
from mammo_lib.engines.trunk_cache import build_cache, head_loss, train_head


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def bench_arch(arch: str, *, batch: int, repeats: int, device: str) -> dict:
    rng = np.random.default_rng(0)
    x = rng.random((batch, 224, 224), dtype=np.float32)
    m = np.zeros((batch, 224, 224), np.uint8)
    m[:, 70:160, 60:170] = 1
    y = torch.from_numpy(np.arange(batch) % 2).to(device)
    model = build_model(arch, seed=0).to(device)
    teacher = make_teacher(model)
    cache = build_cache(model, x, m, labels=np.arange(batch) % 2, flips=("none",), teacher=teacher,
                        device=device, progress=False)
    feats, tmaps = cache.features[:, 0].to(device), cache.teacher_maps[:, 0].to(device)
    set_trainable(model, "group4+classifier")
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    xt, mt = torch.from_numpy(x), torch.from_numpy(m)
    cfgs = {"finetune": TrainConfig(method="finetune", device=device),
            "transfer": TrainConfig(method="transfer", beta=22.0, device=device)}
    kt = KnowledgeTransferLoss(22.0, (4,), "paper")

    def step(path: str, method: str) -> None:
        apply_train_mode(model)
        if path == "full":
            loss, _ = _step_loss(model, xt, mt, y.cpu(), cfgs[method], torch.device(device),
                                 kt if method == "transfer" else None, teacher, None)
        else:
            loss, _ = head_loss(model, feats, y, tmaps if method == "transfer" else None, cfgs[method])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    combos = [(p, me) for p in ("full", "cached") for me in ("finetune", "transfer")]
    for c in combos:  # warm-up
        step(*c)
    times = {c: [] for c in combos}
    for _ in range(repeats):
        for c in combos:
            times[c].append(_timed(lambda: step(*c)))
    med = {f"{p}_{me}": statistics.median(t) for (p, me), t in times.items()}
    # One cached epoch (train_head: batches, flips, Eq. 5, validation pass) on 4 batches + a validation set.
    n = 5 * batch
    xe = rng.random((n, 224, 224), dtype=np.float32)
    me = np.zeros((n, 224, 224), np.uint8)
    me[:, 70:160, 60:170] = 1
    ce = build_cache(build_model(arch, seed=0), xe, me, labels=np.arange(n) % 2, device=device, progress=False)
    tr, va = ce.subset(range(4 * batch)), ce.subset(range(4 * batch, n))
    epoch = {"finetune": [], "transfer": []}
    for _ in range(max(2, repeats // 2)):
        for method in epoch:
            cfg = TrainConfig(method=method, beta=22.0, epochs=1, batch_size=batch, device=device)
            epoch[method].append(_timed(lambda: train_head(build_model(arch, seed=0), tr, va, cfg)))
    ep = {k: statistics.median(v) for k, v in epoch.items()}
    return {"arch": arch, "batch": batch, "repeats": repeats, "median_step_s": med, "median_cached_epoch_s": ep,
            "cached_speedup": {me_: med[f"full_{me_}"] / med[f"cached_{me_}"] for me_ in ("finetune", "transfer")},
            "kt_over_ft": {"cached_step": med["cached_transfer"] / med["cached_finetune"],
                           "full_step": med["full_transfer"] / med["full_finetune"],
                           "cached_epoch": ep["transfer"] / ep["finetune"]}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default="results/benchmarks")
    a = ap.parse_args()
    res = [bench_arch(arch, batch=a.batch, repeats=a.repeats, device=a.device) for arch in ("small", "densenet121")]
    out = Path(a.out)
    write_json(out / "training.json", {"benchmark": "Table 2 training step, cached trunk vs full network",
                                       "results": res, "environment": environment_info(a.device),
                                       "torch_threads": torch.get_num_threads()})
    rows = [{"arch": r["arch"], "batch": r["batch"],
             "cached speed-up (fine-tune)": round(r["cached_speedup"]["finetune"], 2),
             "cached speed-up (KT)": round(r["cached_speedup"]["transfer"], 2),
             "KT / FT step (cached)": round(r["kt_over_ft"]["cached_step"], 3),
             "KT / FT epoch (cached)": round(r["kt_over_ft"]["cached_epoch"], 3),
             "KT / FT step (full)": round(r["kt_over_ft"]["full_step"], 3),
             **{f"median {k} (s)": round(v, 4) for k, v in r["median_step_s"].items()}} for r in res]
    table = pd.DataFrame(rows)
    (out / "training.md").write_text(markdown_table(table, ".4g"))
    print(table.to_string(index=False))


if __name__ == "__main__":
    main()
