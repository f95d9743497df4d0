"""A tiny Table-2-like run for tests/repro/test_fingerprint.py, run in a subprocess so that the CPU
kernel settings (ATEN_CPU_CAPABILITY, ONEDNN_MAX_CPU_ISA, MKL_CBWR) can differ per run:
fine-tuning and knowledge transfer (Eq. 5, beta 8) of the small DenseNet on cached 64-px ROIs,
then a table of test probabilities, decisions and accuracies under ``OUT/tables``.

    python tests/scripts/fingerprint_probe.py OUT [--mutate-loss] [--float64]

``--mutate-loss`` doubles Eq. 4's term in the loss (beta instead of beta / 2): a deliberate code
change that the committed-results check must catch. ``--float64`` computes everything in float64
(the smoke profile's ``precision``; :mod:`mammo_lib.utils.precision`).
"""
from __future__ import annotations

import sys
from pathlib import Path

import mammo_lib  # noqa: F401  (pins the kernels before torch runs anything)
import numpy as np
import pandas as pd
import torch

from mammo_lib.engines import trunk_cache
from mammo_lib.networks.densenet import build_model
from mammo_lib.repro.report import write_table
from mammo_lib.engines.training import TrainConfig
from mammo_lib.utils.precision import in_precision


def main(out: Path, mutate: bool) -> None:
    torch.set_num_threads(1)
    if mutate:
        dist = trunk_cache.activation_distance
        trunk_cache.activation_distance = lambda *a, **k: 2.0 * dist(*a, **k)
    rng = np.random.default_rng(7)
    n, s = 24, 64
    rois = 0.7 * rng.random((n, s, s), dtype=np.float32)
    masks = np.zeros((n, s, s), np.uint8)
    for i in range(n):
        r, c = rng.integers(12, 36, size=2)
        masks[i, r:r + 16, c:c + 16] = 1
        rois[i][masks[i] == 1] += 0.3 * (i % 2)
    y = np.arange(n) % 2
    cache = trunk_cache.build_cache(build_model("small", seed=3), rois, masks, labels=y, progress=False)
    tr, va, te = cache.subset(range(16)), cache.subset(range(16, 20)), cache.subset(range(20, 24))
    cfgs = [TrainConfig(epochs=4, batch_size=4, lr=1e-2, method=m, beta=b) for m, b in (("finetune", 0), ("transfer", 8))]
    nets = [build_model("small", seed=3) for _ in cfgs]
    trunk_cache.train_heads(nets, tr, va, cfgs)
    rows = []
    for cfg, net in zip(cfgs, nets):
        p = trunk_cache.predict_cached(net, te)
        for i, pi in enumerate(p):
            rows.append({"method": cfg.method, "case": i, "prob_malignant": float(pi[1]),
                         "pred": int(pi.argmax()), "correct": bool(pi.argmax() == y[20 + i])})
    df = pd.DataFrame(rows)
    write_table(df, "probe", out)
    acc = df.groupby("method", sort=False)["correct"].mean().reset_index(name="accuracy")
    write_table(acc, "probe_accuracy", out)


if __name__ == "__main__":
    with in_precision("float64" if "--float64" in sys.argv[2:] else "float32"):
        main(Path(sys.argv[1]), "--mutate-loss" in sys.argv[2:])
