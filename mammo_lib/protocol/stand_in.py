"""Stand-in pre-training when ImageNet weights are unavailable, and the gate every trunk passes.

Table 2 starts group 4 from a *pre-trained* network whose groups 1-3 stay frozen (Sec. 3.3, 5.1).
A random frozen trunk is no stand-in: the frozen teacher's group-4 map of a mask is then nearly
the same blob for every case, so knowledge transfer (Eq. 5) has no case-specific target. Offline,
ImageNet's role is played by a confounder-free synthetic task that teaches shape and texture
(:func:`shape_task`: disc / ellipse / spiculated star / polygon on 1/f texture, bright dots in half
of every class, so dots carry no label), trained on all layers (:func:`pretrain_generic`).

:func:`trunk_gate` checks a trunk before use (``docs/DECISIONS.md``, "the instrument"): at least
70 % on its own test split, a teacher whose group-4 energy on mass cells is at least twice the
mass cells' share of the grid, and Fig. 6's distances d^1..d^4 reported.

>>> task = shape_task(8, size=64, seed=0)
>>> task.images.shape, sorted(set(task.labels.tolist()))
((8, 64, 64), [0, 1, 2, 3])
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from skimage.draw import polygon as draw_polygon

from mammo_lib.utils.progress import tqdm
from mammo_lib.utils.precision import current as current_precision, full
from mammo_lib.networks.activation import activation_distance, activation_distances
from mammo_lib.networks.densenet import build_model, set_trainable, to_model_input
from mammo_lib.engines.amp import autocast_for, backward_step, check_amp, grad_scaler, maybe_channels_last
from mammo_lib.utils.files import save_torch, write_json
from mammo_lib.engines.selection import EarlySelection
from mammo_lib.engines.training import epoch_generator

#: Classes of the generic task.
SHAPES = ("disc", "ellipse", "star", "polygon")
#: What the rows of Table 2 say they started from when this stand-in replaces ImageNet.
GENERIC_INIT_NOTE = "generic synthetic pre-training (ImageNet unavailable)"
#: Gate thresholds (``docs/DECISIONS.md``).
GATE_MIN_ACCURACY = 0.70
GATE_MIN_ENERGY_RATIO = 2.0
#: A grid cell is a mass cell when at least this share of its window lies in the mask.
MASS_CELL_COVER = 0.25


@dataclass
class ShapeTask:
    """``images`` (N,S,S) float32 in [0, 1], ``masks`` (N,S,S) uint8, ``labels`` (N,) the shape
    in 0..3, ``dots`` (N,) bool (a bright-dot cluster was drawn, independently of the shape);
    :attr:`targets` = ``labels + 4 * dots`` is what pre-training predicts."""

    images: np.ndarray
    masks: np.ndarray
    labels: np.ndarray
    dots: np.ndarray

    @property
    def targets(self) -> np.ndarray:
        """Pre-training classes: shape x (dots present), 8 classes. Asking for both makes the trunk
        encode shape *and* small bright structures, as ImageNet features do; neither predicts
        the other."""
        return (self.labels + len(SHAPES) * self.dots).astype(np.int64)


def _texture(size: int, rng: np.random.Generator, beta: float = 3.0) -> np.ndarray:
    f = np.fft.fftfreq(size)
    fr = np.sqrt(f[:, None] ** 2 + f[None, :] ** 2)
    fr[0, 0] = 1.0
    spec = (rng.standard_normal((size, size)) + 1j * rng.standard_normal((size, size))) / fr ** (beta / 2)
    spec[0, 0] = 0
    t = np.real(np.fft.ifft2(spec))
    return (t - t.mean()) / (t.std() + 1e-12)


def _shape_mask(kind: int, size: int, rng: np.random.Generator) -> np.ndarray:
    c = rng.uniform(0.3, 0.7, 2) * size
    r = rng.uniform(0.10, 0.22) * size
    theta = np.linspace(0, 2 * np.pi, 720, endpoint=False)
    phi = rng.uniform(0, np.pi)
    if kind == 0:  # disc
        rad = np.full_like(theta, r)
    elif kind == 1:  # ellipse, aspect 1.6-2.4
        q = rng.uniform(1.6, 2.4)
        a, b = r * np.sqrt(q), r / np.sqrt(q)
        rad = a * b / np.sqrt((b * np.cos(theta - phi)) ** 2 + (a * np.sin(theta - phi)) ** 2)
    elif kind == 2:  # spiculated star
        k = int(rng.integers(7, 13))
        rad = r * (0.6 + 0.55 * np.clip(np.cos(k * (theta - phi)), 0, None) ** 6)
    else:  # polygon with 3-6 corners
        k = int(rng.integers(3, 7))
        corners = np.sort(rng.uniform(0, 2 * np.pi, k) if k > 3 else phi + np.array([0, 2.1, 4.2]))
        ys, xs = c[0] + r * 1.2 * np.sin(corners), c[1] + r * 1.2 * np.cos(corners)
        m = np.zeros((size, size), np.uint8)
        rr, cc = draw_polygon(ys, xs, (size, size))
        m[rr, cc] = 1
        return m
    ys, xs = c[0] + rad * np.sin(theta), c[1] + rad * np.cos(theta)
    m = np.zeros((size, size), np.uint8)
    rr, cc = draw_polygon(ys, xs, (size, size))
    m[rr, cc] = 1
    return m


def shape_task(n: int, size: int = 224, seed: int = 0, *, workers: int = 1) -> ShapeTask:
    """``n`` images of the generic task, classes balanced (``i % 4``), each from its own generator
    ``default_rng([seed, i])``: a shape of contrast 0.12-0.30 on 1/f texture, and in half of the
    images (drawn independently of the class) a cluster of bright dots away from the shape.
    ``workers`` processes draw blocks of images; each image depends on ``(seed, i)`` only, so the
    task is the same for any number of workers."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    if isinstance(size, bool) or not isinstance(size, int) or size < 32:
        raise ValueError(f"size must be an int >= 32, got {size!r}")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be an int >= 1, got {workers!r}")
    labels = np.arange(n) % len(SHAPES)
    blocks = [(s, min(n, s + _TASK_BLOCK)) for s in range(0, n, _TASK_BLOCK)]
    if workers == 1 or len(blocks) == 1:
        parts = [_task_block(seed, size, a, b) for a, b in blocks]
    else:
        from concurrent.futures import ProcessPoolExecutor

        from mammo_lib.data.preprocess import worker_init

        with ProcessPoolExecutor(max_workers=min(workers, len(blocks)), initializer=worker_init) as pool:
            parts = list(pool.map(_task_block, [seed] * len(blocks), [size] * len(blocks),
                                  [a for a, _ in blocks], [b for _, b in blocks]))
    images, masks, dots = (np.concatenate([p[j] for p in parts]) for j in range(3))
    return ShapeTask(images, masks, labels.astype(np.int64), dots)


#: Images per block of :func:`shape_task` (a unit of work for one process).
_TASK_BLOCK = 64


def _task_block(seed: int, size: int, start: int, stop: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Images ``start..stop-1`` of :func:`shape_task`: images, masks and dot flags."""
    n = stop - start
    images = np.empty((n, size, size), np.float32)
    masks = np.empty((n, size, size), np.uint8)
    dots = np.zeros(n, bool)
    yy, xx = np.mgrid[:size, :size]
    for j, i in enumerate(range(start, stop)):
        rng = np.random.default_rng([seed, i])
        m = _shape_mask(int(i % len(SHAPES)), size, rng)
        img = 0.35 + 0.07 * _texture(size, rng)
        img += rng.uniform(0.12, 0.30) * m
        if rng.random() < 0.5:
            dots[j] = True
            far = np.argwhere(m == 0)
            cy, cx = far[rng.integers(len(far))]
            for _ in range(int(rng.integers(5, 12))):
                y, x = cy + rng.normal(0, size * 0.04), cx + rng.normal(0, size * 0.04)
                img += rng.uniform(0.25, 0.45) * (np.hypot(yy - y, xx - x) <= rng.uniform(1.0, 2.5))
        img += 0.01 * rng.standard_normal((size, size))
        images[j] = np.clip(img, 0, 1)
        masks[j] = m
    return images, masks, dots


def _flip_batch(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    u = torch.rand(len(x), 2, generator=gen)
    x = torch.where((u[:, 0] < 0.5)[:, None, None], x.flip(-1), x)
    return torch.where((u[:, 1] < 0.5)[:, None, None], x.flip(-2), x)


def pretrain_generic(out_dir: str | Path, *, arch: str = "small", n_train: int = 800, n_test: int = 200,
                     size: int = 224, epochs: int = 10, batch_size: int = 32, lr: float = 1e-3,
                     seed: int = 0, device: str = "cpu", amp: str = "off", channels_last: bool = False,
                     workers: int = 1, progress: bool = True) -> dict[str, Any]:
    """Train ``arch`` on all layers on :func:`shape_task` (8 classes: shape x dots, flips; Adam
    with a one-cycle learning-rate schedule peaking at ``lr``), keep the epoch with
    the best accuracy on a held-out 20 % of the training images, report the test accuracy.

    Writes ``out_dir/generic_pretrained.pt`` (``build_model(arch, weights=path)`` loads its
    features and starts a new 2-class head) and ``out_dir/generic_metrics.json``; both are reused
    when they exist for the same settings. Returns the metrics dict (``checkpoint`` included).
    ``amp`` and ``channels_last`` are :class:`~mammo_lib.engines.training.TrainConfig`'s speed settings
    (CUDA only; the cross-entropy is computed in full precision). A float64 run
    (:mod:`mammo_lib.utils.precision`) trains in float64 and keys its files by it. ``workers``: processes drawing the task
    images (:func:`shape_task`; the same images for any number).
    """
    out = Path(out_dir)
    ckpt, meta = out / "generic_pretrained.pt", out / "generic_metrics.json"
    key = {"arch": arch, "n_train": n_train, "n_test": n_test, "size": size, "epochs": epochs,
           "batch_size": batch_size, "lr": lr, "seed": seed, "version": 3}
    check_amp(amp)
    if amp != "off" or channels_last:  # only when set: keys made before these settings stay valid
        key.update(amp=amp, channels_last=bool(channels_last))
    if current_precision() != "float32":
        key.update(precision=current_precision())
    if ckpt.exists() and meta.exists():
        saved = json.loads(meta.read_text())
        if saved.get("key") == key:
            return saved["metrics"]
    t0 = time.perf_counter()
    train = shape_task(n_train, size, seed=seed, workers=workers)
    test = shape_task(n_test, size, seed=seed + 10_000, workers=workers)
    n_val = max(len(SHAPES), n_train // 5)
    xv, yv = train.images[-n_val:], train.targets[-n_val:]
    xt, yt = train.images[:-n_val], train.targets[:-n_val]
    model = build_model(arch, num_classes=2 * len(SHAPES), seed=seed)
    set_trainable(model, "all")
    dev = torch.device(device)
    model.to(dev)
    maybe_channels_last(model, channels_last, dev)
    scaler = grad_scaler(dev, amp)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * max(1, len(xt) // batch_size + 1))

    def prep(x: torch.Tensor) -> torch.Tensor:
        return maybe_channels_last(to_model_input(x.to(dev)), channels_last, dev)

    def accuracy(x: np.ndarray, y: np.ndarray) -> float:
        model.eval()
        with torch.no_grad(), autocast_for(dev, amp):
            pred = torch.cat([full(model(prep(torch.from_numpy(x[s:s + 64])))).argmax(1).cpu()
                              for s in range(0, len(x), 64)])
        return float((pred.numpy() == y).mean())

    # the package's one selection policy (best validation accuracy); no validation loss is measured
    # here, so it enters as +inf and a tie keeps the earlier epoch
    selection, best_state, history = EarlySelection("accuracy"), None, []
    for epoch in tqdm(range(epochs), disable=not progress, desc="generic pre-training"):
        gen = epoch_generator(seed, epoch)
        model.train()
        order = torch.randperm(len(xt), generator=gen)
        losses = []
        for idx in order.split(batch_size):
            if len(idx) < 2:
                continue
            x = _flip_batch(torch.from_numpy(xt[idx.numpy()]), gen)
            with autocast_for(dev, amp):
                logits = model(prep(x))
            loss = F.cross_entropy(full(logits), torch.from_numpy(yt[idx.numpy()]).to(dev))
            opt.zero_grad(set_to_none=True)
            backward_step(loss, opt, scaler)
            sched.step()
            losses.append(float(loss.detach()))
        acc = accuracy(xv, yv)
        history.append({"epoch": epoch, "train_loss": float(np.mean(losses)), "val_accuracy": acc})
        if selection.update(epoch, acc, math.inf):
            best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    model.load_state_dict(best_state)
    metrics = {"init": GENERIC_INIT_NOTE, "arch": arch, "test_accuracy": accuracy(test.images, test.targets),
               "best_val_accuracy": selection.best_key[0], "classes": list(SHAPES), "n_train": len(xt), "n_val": n_val,
               "n_test": n_test, "seconds": round(time.perf_counter() - t0, 1), "checkpoint": str(ckpt),
               "history": history}
    save_torch({"model_state": {k: v.cpu() for k, v in model.state_dict().items()}, "arch": arch,
                       "init_used": GENERIC_INIT_NOTE, "classes": [f"{s}{'+dots' if d else ''}" for d in (0, 1) for s in SHAPES]}, ckpt)
    write_json(meta, {"key": key, "metrics": metrics})
    return metrics


def mass_cells(masks: np.ndarray, grid: int, min_cover: float = MASS_CELL_COVER) -> np.ndarray:
    """``(N, g, g)`` bool: cells of the g x g grid with at least ``min_cover`` of their window in the mask."""
    m = np.asarray(masks, dtype=np.float32)
    n, s, _ = m.shape
    if s % grid:
        cover = F.adaptive_avg_pool2d(torch.from_numpy(m)[:, None], grid)[:, 0].numpy()
    else:
        w = s // grid
        cover = m.reshape(n, grid, w, grid, w).mean(axis=(2, 4))
    return cover >= min_cover


def energy_share(maps: np.ndarray, masks: np.ndarray) -> pd.DataFrame:
    """Per case: share of the map's energy (sum of F^4) on mass cells and the mass cells' share of
    the grid. Beyond the paper: a map that follows the mass has ``share / area`` well above 1."""
    maps = np.asarray(maps, dtype=np.float64)
    cells = mass_cells(masks, maps.shape[-1])
    tot = maps.sum(axis=(1, 2))
    share = np.where(tot > 0, (maps * cells).sum(axis=(1, 2)) / np.where(tot > 0, tot, 1), np.nan)
    return pd.DataFrame({"energy_share": share, "mass_area": cells.mean(axis=(1, 2))})


def teacher_mask_maps(model: torch.nn.Module, masks: np.ndarray, *, batch_size: int = 64) -> np.ndarray:
    """F^4 (Eq. 3) of the network's forward of each mask as an image (the Eq. 5 target)."""
    from mammo_lib.networks.densenet import mask_to_model_input
    from mammo_lib.networks.transfer import teacher_maps

    m = np.asarray(masks)
    return np.concatenate([teacher_maps(model, mask_to_model_input(torch.from_numpy(m[s:s + batch_size])), (4,))[4]
                           .numpy() for s in range(0, len(m), batch_size)])


def trunk_gate(model: torch.nn.Module, name: str, test_accuracy: float, rois: np.ndarray, masks: np.ndarray,
               *, batch_size: int = 32, progress: bool = False) -> dict[str, Any]:
    """The gate of a pre-trained trunk (``docs/DECISIONS.md``): own test accuracy >= 70 %, teacher
    energy on mass cells >= 2x the mass cells' share (on ``masks``), and Fig. 6's median d^1..d^4
    (Eq. 4) between ``masks`` and ``rois``. Returns one row (dict) with ``passes``."""
    maps = teacher_mask_maps(model, masks, batch_size=batch_size)
    es = energy_share(maps, masks)
    ratio = float(es["energy_share"].mean() / max(es["mass_area"].mean(), 1e-12))
    d = activation_distances(model, rois, masks, groups=(1, 2, 3, 4), batch_size=batch_size, progress=progress)
    med = d.groupby("group")["d"].median()
    # how case-specific the target is: Eq. 4 distance between two different cases' teacher maps
    t = torch.from_numpy(maps).double()
    between = float(activation_distance(t, t.roll(1, dims=0)).mean()) if len(maps) > 1 else float("nan")
    row = {"trunk": name, "own test accuracy": round(float(test_accuracy), 3),
           "teacher energy on mass cells": round(float(es["energy_share"].mean()), 3),
           "mass cells' share of grid": round(float(es["mass_area"].mean()), 3),
           "energy ratio": round(ratio, 2), "teacher map distance between cases": round(between, 3),
           **{f"median d^{j}": round(float(med.get(j, np.nan)), 4) for j in (1, 2, 3, 4)}}
    row["passes"] = bool(test_accuracy >= GATE_MIN_ACCURACY and ratio >= GATE_MIN_ENERGY_RATIO)
    return row


__all__ = ["SHAPES", "GENERIC_INIT_NOTE", "ShapeTask", "shape_task", "pretrain_generic", "trunk_gate",
           "energy_share", "mass_cells", "teacher_mask_maps", "GATE_MIN_ACCURACY", "GATE_MIN_ENERGY_RATIO"]
