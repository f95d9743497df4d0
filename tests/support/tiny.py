"""Tiny ROIs and masks for the trunk-cache and head tests: the small DenseNet has a 2x2 group-4 grid at 64 px."""
import numpy as np

S = 64  # small DenseNet: 2x2 group-4 grid at 64 px


def data(n=8, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.random((n, S, S), dtype=np.float32)
    m = np.zeros((n, S, S), np.uint8)
    for i in range(n):
        r0, c0 = rng.integers(0, S - 24, 2)
        m[i, r0:r0 + 20, c0:c0 + 16] = 1
    y = np.arange(n) % 2
    return x, m, y
