"""Benchmark: one Lesion/Background explanation (1 + 2 g^2 forward passes, Eq. 6) vs batch size, and
the vectorised GLCM variance map vs a per-window scikit-image reference. Ratios are measured in
one run (this machine is shared and noisy); absolute seconds are for orientation only.

    .venv/bin/python benchmarks/bench_explain.py [--arch densenet121] [--size 224] [--device cpu]

Writes results/benchmarks/explain.json.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from mammo_lib.explain.eq6 import explain_roi
from mammo_lib.explain.glcm import glcm_variance_map, quantize
from mammo_lib.networks.densenet import build_model
from mammo_lib.utils.files import write_json
from mammo_lib.repro.report import environment_info


def _best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def _glcm_reference(img: np.ndarray, levels: int = 8, window: int = 5) -> np.ndarray:
    """Per-window graycomatrix (paper mean): the slow, obviously-correct reference."""
    from skimage.feature import graycomatrix

    q = np.pad(quantize(img, levels), window // 2, mode="reflect")
    out = np.zeros(img.shape, np.float64)
    m = np.arange(levels)[:, None]
    for r in range(img.shape[0]):
        for c in range(img.shape[1]):
            p = graycomatrix(q[r:r + window, c:c + window], [1], [0], levels=levels, normed=True)[:, :, 0, 0]
            mu = (m * p).sum() / levels ** 2
            out[r, c] = (((m - mu) ** 2) * p).sum()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", default="densenet121")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default="results/benchmarks/explain.json")
    a = ap.parse_args()
    torch.manual_seed(0)
    model = build_model(a.arch, seed=0).to(a.device)
    roi = np.random.default_rng(0).random((a.size, a.size), dtype=np.float32)
    explain_roi(model, roi, batch_size=33, device=a.device)  # warm-up
    by_batch = {}
    for bs in (1, 11, 33, 99):
        by_batch[bs] = _best_of(lambda: explain_roi(model, roi, batch_size=bs, device=a.device), a.repeats)
    small = roi[:48, :48]
    t_vec = _best_of(lambda: glcm_variance_map(small), 5)
    t_ref = _best_of(lambda: _glcm_reference(small), 1)
    result = {
        "arch": a.arch, "roi_size": a.size, "device": a.device,
        "explanation_seconds_by_batch_size": by_batch,
        "explanation_speedup_batch33_vs_batch1": by_batch[1] / by_batch[33],
        "glcm_48px_seconds": {"vectorised": t_vec, "per_window_skimage": t_ref},
        "glcm_speedup_vectorised_vs_per_window": t_ref / t_vec,
        "glcm_224px_vectorised_seconds": _best_of(lambda: glcm_variance_map(roi), 5),
        "environment": environment_info(a.device),
    }
    write_json(Path(a.out), result)
    print(result)


if __name__ == "__main__":
    main()
