"""Training loop of Table 2: fine-tuning or knowledge transfer (Eq. 5), with model selection
on the validation split and exact checkpoint/resume (Sec. 4.1, 5.1).

Paper-silent settings are :class:`TrainConfig` fields with documented defaults (decisions):
Adam, learning rate 1e-4, weight decay 1e-4, 30 epochs, batch 16, selection by validation
accuracy (ties -> lower validation cross-entropy).

Reproducibility: every random draw of epoch ``e`` (batch order and augmentation) comes from a
``torch.Generator`` seeded from ``(cfg.seed, e)``, so a run interrupted after any epoch and
resumed from ``last.pt`` ends with the same weights and history as an uninterrupted one (on the
same device). No global RNG is touched; :func:`seed_everything` is for callers who want it.
"""
from __future__ import annotations

import hashlib
import os
import pickle
import random
import time
import warnings
import zipfile
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Literal, Optional, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mammo_lib.utils.progress import tqdm
from mammo_lib.utils.files import save_torch, write_json
from mammo_lib.utils.precision import full
from mammo_lib.networks.activation import DISTANCE_FORMS, GROUP_LAYERS, GroupActivations, activation_map
from mammo_lib.data.augment import AUGMENTATIONS, AugmentParams, JointAugment
from mammo_lib.engines.selection import SELECTION_METRICS, EarlySelection
from mammo_lib.engines.amp import autocast_for, backward_step, check_amp, grad_scaler, maybe_channels_last, undo_channels_last
from mammo_lib.networks.densenet import (TRAINABLE_SETS, apply_train_mode, eval_mode, mask_to_model_input, on_device, preserve_mode,
                    set_trainable, to_model_input)
from mammo_lib.networks.transfer import KnowledgeTransferLoss, make_teacher, teacher_maps

METHODS = ("finetune", "transfer")
INPUTS = ("roi", "mask")
OPTIMIZERS = ("adam", "sgd")

#: Columns of :attr:`TrainResult.history` (plus ``train_d<j>`` for every j in ``cfg.omega``).
HISTORY_COLUMNS = ("epoch", "train_loss", "train_ce", "val_loss", "val_accuracy", "seconds")

#: Fields that may differ between a checkpoint and the resuming run (they do not change results
#: on a given device; resuming on another device continues the run but numbers may differ slightly).
_RESUME_IGNORED = ("device", "prefetch_threads")
#: Speed settings left out of :meth:`TrainConfig.to_dict` at these (default) values.
_SPEED_DEFAULTS = {"amp": "off", "channels_last": False, "prefetch_threads": 0}


def seed_everything(seed: int, *, deterministic: bool = True) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) global RNGs; with ``deterministic`` also ask
    torch for deterministic algorithms (``warn_only``) and disable cuDNN benchmarking.

    The library never calls this; notebooks and scripts call it once at the top.
    """
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The CPU generator of all random draws of one epoch (batch order, augmentation), seeded
    from ``(seed, epoch)`` only, so any epoch can be replayed or resumed on its own."""
    state = np.random.SeedSequence([int(seed) % 2**63, int(epoch)]).generate_state(2, dtype=np.uint32)
    g = torch.Generator(device="cpu")
    g.manual_seed(int(state[0]) << 32 | int(state[1]))
    return g


# --------------------------------------------------------------------------------------------
# Configuration and data
# --------------------------------------------------------------------------------------------
def check_device(device: object, what: str = "device") -> str:
    """``device`` (``cpu``, ``cuda``, ``cuda:N``) when this machine has it, else ``ValueError``
    naming ``what`` and saying what is there (checked before any work, so a run does not fail
    deep in torch after its data are prepared).

    >>> check_device("cpu")
    'cpu'
    """
    from mammo_lib.utils.options import parse_device

    try:
        text = parse_device(device)
    except ValueError as err:
        raise ValueError(f"{what}: {err}") from None
    if text.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"{what} {text}: no CUDA GPU is available to torch on this machine "
                             f"(torch.cuda.is_available() is False; torch {torch.__version__}); use cpu")
        index = int(text.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise ValueError(f"{what} {text}: this machine has {torch.cuda.device_count()} CUDA GPU(s), "
                             f"cuda:0 .. cuda:{torch.cuda.device_count() - 1}")
    return text


@dataclass
class TrainConfig:
    """Everything that determines a training run (stored in checkpoints; a resume needs equality).

    Attributes:
        method: ``"finetune"`` (cross-entropy) or ``"transfer"`` (Eq. 5, mask maps from a frozen teacher).
        input: ``"roi"`` or ``"mask"`` (a model trained on binary masks alone, Fig. 4b; finetune only).
        epochs, batch_size: paper silent; decision 30 and 16. A last batch of one sample is merged
            into the previous batch (BatchNorm in train mode needs two).
        optimizer, lr, weight_decay, momentum: paper silent; decision Adam, 1e-4, 1e-4 (L2 via the
            optimizer's ``weight_decay``); ``momentum`` is used by ``"sgd"`` only.
        beta, omega, distance_form: Eq. 5 weight, groups Omega and the Eq. 4 form (``"paper"`` or
            ``"at"``); ignored by ``"finetune"``.
        trainable: :func:`mammo_lib.networks.densenet.set_trainable` set (Sec. 3.3: ``"group4+classifier"``).
        augment, augment_p, max_degrees: training-only joint augmentation (Sec. 3.2).
        selection_metric: ``"accuracy"`` (ties -> lower validation loss) or ``"loss"``, on the
            validation split only (Sec. 5.1).
        seed: seeds batch order and augmentation (see :func:`epoch_generator`).
        device: where to train (not part of the resume check).
        patience: stop after this many epochs without a better selection score (None: never).
        class_weighting: weight the cross-entropy by inverse class frequency of the training data.
        amp: mixed precision on CUDA, ``"off"``, ``"bf16"`` or ``"fp16"`` (loss scaling); forward
            passes autocast, Eq. 4 distances and losses in full precision (:mod:`mammo_lib.engines.amp`).
        channels_last: channels-last memory format for model and inputs on CUDA.
            Both are no-ops on the CPU (same numbers as off).
        prefetch_threads: threads that assemble and augment the next training batches while the
            current step runs (uncached training, :func:`train_model`); 0 assembles each batch
            when it is needed. The numbers are the same either way: every random draw of the epoch
            is made first, in the same order.
    """

    method: Literal["finetune", "transfer"] = "finetune"
    input: Literal["roi", "mask"] = "roi"
    epochs: int = 30
    batch_size: int = 16
    optimizer: Literal["adam", "sgd"] = "adam"
    lr: float = 1e-4
    weight_decay: float = 1e-4
    momentum: float = 0.9
    beta: float = 1.0
    omega: tuple[int, ...] = (4,)
    distance_form: Literal["paper", "at"] = "paper"
    trainable: str = "group4+classifier"
    augment: tuple[str, ...] = ("hflip", "vflip", "rotate")
    augment_p: float = 0.5
    max_degrees: float = 30.0
    selection_metric: Literal["accuracy", "loss"] = "accuracy"
    seed: int = 0
    device: str = "cpu"
    patience: Optional[int] = None
    class_weighting: bool = False
    amp: str = "off"
    channels_last: bool = False
    prefetch_threads: int = 0

    def __post_init__(self) -> None:
        self.omega = tuple(int(j) for j in self.omega)
        self.augment = tuple(str(a) for a in self.augment)
        choices = {"method": METHODS, "input": INPUTS, "optimizer": OPTIMIZERS,
                   "distance_form": DISTANCE_FORMS, "trainable": TRAINABLE_SETS,
                   "selection_metric": SELECTION_METRICS}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"TrainConfig.{name} must be one of {allowed}, got {getattr(self, name)!r}")
        for name in ("epochs", "batch_size", "seed", "prefetch_threads"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int):
                raise TypeError(f"TrainConfig.{name} must be an int, got {v!r}")
        if self.prefetch_threads < 0:
            raise ValueError(f"TrainConfig.prefetch_threads must be >= 0, got {self.prefetch_threads}")
        if self.epochs < 1 or self.batch_size < 2:
            raise ValueError(f"TrainConfig needs epochs >= 1 and batch_size >= 2 (BatchNorm), "
                             f"got epochs={self.epochs}, batch_size={self.batch_size}")
        for name in ("lr", "weight_decay", "momentum", "beta", "augment_p", "max_degrees"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v) or v < 0:
                raise ValueError(f"TrainConfig.{name} must be a finite number >= 0, got {v!r}")
        if self.lr == 0:
            raise ValueError("TrainConfig.lr must be > 0")
        bad = [j for j in self.omega if j not in GROUP_LAYERS]
        if not self.omega or bad:
            raise ValueError(f"TrainConfig.omega must be groups from {tuple(GROUP_LAYERS)}, got {self.omega}")
        bad = [a for a in self.augment if a not in AUGMENTATIONS]
        if bad:
            raise ValueError(f"TrainConfig.augment: unknown {bad}; valid: {AUGMENTATIONS}")
        if self.patience is not None and (isinstance(self.patience, bool) or not isinstance(self.patience, int)
                                          or self.patience < 1):
            raise ValueError(f"TrainConfig.patience must be None or an int >= 1, got {self.patience!r}")
        check_amp(self.amp, "TrainConfig.amp")
        if not isinstance(self.channels_last, bool):
            raise TypeError(f"TrainConfig.channels_last must be a bool, got {self.channels_last!r}")
        self.device = check_device(self.device, "TrainConfig.device")
        if self.method == "transfer" and self.input == "mask":
            raise ValueError("method='transfer' needs ROI input: a mask-only model (input='mask') is fine-tuned")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (tuples as lists). ``amp`` and ``channels_last`` appear only when
        set, so checkpoints and cache keys made before these fields existed stay valid."""
        d = asdict(self)
        d["omega"] = list(self.omega)
        d["augment"] = list(self.augment)
        for name, default in _SPEED_DEFAULTS.items():
            if d[name] == default:
                del d[name]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        """Inverse of :meth:`to_dict`; unknown keys raise ``ValueError``."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown TrainConfig fields {unknown}; known: {sorted(known)}")
        return cls(**d)

    def replace(self, **changes: Any) -> "TrainConfig":
        """A copy with ``changes`` applied (validated)."""
        return replace(self, **changes)


@dataclass
class TensorData:
    """Arrays of one split: ``images`` (N,S,S) float32 [0,1], ``masks`` (N,S,S) uint8 {0,1},
    ``labels`` (N,) int64 {0,1}, ``ids`` the case ids."""

    images: np.ndarray
    masks: np.ndarray
    labels: np.ndarray
    ids: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.images = np.asarray(self.images, dtype=np.float32)
        self.masks = np.asarray(self.masks)
        self.labels = np.asarray(self.labels)
        n = len(self.labels)
        if self.images.ndim != 3 or self.images.shape[0] != n:
            raise ValueError(f"images must be (N={n}, S, S), got {self.images.shape}")
        if self.masks.shape != self.images.shape:
            raise ValueError(f"masks shape {self.masks.shape} != images shape {self.images.shape}")
        if self.labels.ndim != 1 or not np.isin(self.labels, (0, 1)).all():
            raise ValueError("labels must be a 1-D array of 0 (benign) / 1 (malignant)")
        self.labels = self.labels.astype(np.int64)
        if not np.isin(self.masks, (0, 1)).all():
            raise ValueError("masks must hold only 0 and 1")
        self.masks = self.masks.astype(np.uint8)
        self.ids = [str(i) for i in self.ids] if len(self.ids) else [str(i) for i in range(n)]
        if len(self.ids) != n:
            raise ValueError(f"ids has {len(self.ids)} entries for {n} samples")

    def __len__(self) -> int:
        return len(self.labels)

    @classmethod
    def from_roiset(cls, roiset: Any, idx: Optional[Sequence[int] | np.ndarray] = None) -> "TensorData":
        """The samples at integer positions ``idx`` (all when None) of a RoiSet-like object
        (``images``, ``masks``, ``labels`` and ``index['case_id']``)."""
        n = len(roiset.labels)
        pos = np.arange(n) if idx is None else np.asarray(idx, dtype=np.int64)
        if pos.ndim != 1 or (pos.size and (pos.min() < 0 or pos.max() >= n)):
            raise IndexError(f"idx must be 1-D positions in [0, {n})")
        ids = np.asarray(roiset.index["case_id"].astype(str))[pos].tolist()
        return cls(np.asarray(roiset.images)[pos], np.asarray(roiset.masks)[pos],
                   np.asarray(roiset.labels)[pos], ids)

    def fingerprint(self) -> str:
        """Short hash of ids, labels and image size (a checkpoint is only resumed on the same
        cases; pixel contents are not hashed)."""
        h = hashlib.sha256("\n".join(self.ids).encode())
        h.update(self.labels.tobytes())
        h.update(str(self.images.shape).encode())
        return h.hexdigest()[:16]


@dataclass
class TrainResult:
    """Outcome of :func:`train_model`. ``model`` holds the selected (best-epoch) weights."""

    model: nn.Module
    history: pd.DataFrame
    best_epoch: int
    best_val_accuracy: float
    best_val_loss: float
    epochs_run: int
    stopped_early: bool
    resumed_from: Optional[int]
    wall_s: float
    cfg: TrainConfig


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------
#: What ``torch.load`` raises on a truncated or torn file (zip reader, unpickler, short read).
TORCH_LOAD_ERRORS: tuple[type[BaseException], ...] = (RuntimeError, EOFError, OSError, ValueError, KeyError,
                                                      pickle.UnpicklingError, zipfile.BadZipFile)


def _state_fingerprint(model: nn.Module) -> str:
    """Hash of every tensor of ``model.state_dict()`` (identifies the initial network)."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _cpu_state(model: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def _batches(n: int, batch_size: int, generator: torch.Generator) -> list[Tensor]:
    """A random permutation cut into batches; a trailing batch of one joins the previous one."""
    chunks = list(torch.randperm(n, generator=generator).split(batch_size))
    if len(chunks) > 1 and len(chunks[-1]) == 1:
        last = chunks.pop()
        chunks[-1] = torch.cat([chunks[-1], last])
    return chunks


def _model_input(x: np.ndarray, kind: str, device: torch.device, channels_last: bool = False) -> Tensor:
    t = torch.from_numpy(np.ascontiguousarray(x)).to(device)
    t = to_model_input(full(t)) if kind == "roi" else mask_to_model_input(t)
    return maybe_channels_last(t, channels_last, device)


def class_weights(labels: np.ndarray, device: torch.device) -> Tensor:
    counts = np.bincount(labels, minlength=2).astype(np.float64)
    if (counts == 0).any():
        raise ValueError("class_weighting needs both classes in the training data")
    return torch.tensor(len(labels) / (2.0 * counts), dtype=torch.get_default_dtype(), device=device)


def make_optimizer(params: list[nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


@torch.no_grad()
def _evaluate(model: nn.Module, data: TensorData, kind: str, batch_size: int,
              device: torch.device, amp: str = "off", channels_last: bool = False) -> tuple[float, float, np.ndarray]:
    """Mean cross-entropy, accuracy and (N,2) probabilities in eval mode (mode restored); forward
    under :func:`~mammo_lib.engines.amp.autocast_for`, losses in full precision."""
    with preserve_mode(model):
        model.eval()
        src = data.images if kind == "roi" else data.masks
        losses, probs = [], []
        for start in range(0, len(data), batch_size):
            sl = slice(start, start + batch_size)
            with autocast_for(device, amp):
                logits = model(_model_input(src[sl], kind, device, channels_last))
            logits = full(logits)
            y = torch.from_numpy(data.labels[sl]).to(device)
            losses.append(F.cross_entropy(logits, y, reduction="sum").item())
            probs.append(torch.softmax(logits.double(), dim=1).cpu().numpy())
    p = np.concatenate(probs) if probs else np.empty((0, 2))
    acc = float((p.argmax(1) == data.labels).mean()) if len(data) else float("nan")
    return float(sum(losses) / max(len(data), 1)), acc, p


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------
def train_model(model: nn.Module, train: TensorData, val: TensorData, cfg: TrainConfig, *,
                teacher: Optional[nn.Module] = None, checkpoint_dir: str | Path | None = None,
                progress: bool = True, meta: Optional[dict[str, Any]] = None,
                on_epoch_end: Optional[Callable[[int, dict[str, float]], None]] = None,
                on_step: Optional[Callable[[int, int, dict[str, float]], None]] = None,
                parallel: Optional[Any] = None) -> TrainResult:
    """Train ``model`` in place and load the epoch selected on ``val`` (Sec. 5.1).

    Steps per epoch: :func:`mammo_lib.networks.densenet.apply_train_mode` (frozen BatchNorms stay in eval),
    batches and joint image/mask augmentation from :func:`epoch_generator` ``(cfg.seed, epoch)``,
    loss = cross-entropy (``"finetune"``) or Eq. 5 (``"transfer"``: ROI maps of ``cfg.omega``
    through :class:`~mammo_lib.networks.activation.GroupActivations`, mask maps from ``teacher``, by default
    :func:`~mammo_lib.networks.transfer.make_teacher` of ``model`` as passed in, i.e. the frozen initial
    network), then validation cross-entropy and accuracy (no augmentation).

    ``set_trainable(model, cfg.trainable)`` is applied here. With ``checkpoint_dir``: ``last.pt``
    after every epoch (atomic), resumed at the next epoch when its config (except ``device``),
    data and initial network match (else ``ValueError``); at the end ``best.pt`` (the selected
    weights under ``"model_state"``, loadable by ``build_model(weights=path)``) and ``done.json``.
    ``on_epoch_end(epoch, row)`` is called after each epoch's checkpoint. ``meta`` (e.g.
    ``{"arch": ..., "roi_spec": {...}}``, see :func:`roi_spec_of`) is stored in ``best.pt`` so that
    whoever loads the model knows how its inputs were made. ``on_step(epoch, step, parts)`` gets
    each batch's loss terms (means over the global batch).

    ``parallel``: a :class:`mammo_lib.engines.distributed.DDPHooks` when run by several processes
    (torchrun): every process draws the same global batch of ``cfg.batch_size`` and trains on its
    share through DistributedDataParallel; only the main process writes files (docs/DECISIONS.md).
    """
    if not isinstance(cfg, TrainConfig):
        raise TypeError(f"cfg must be a TrainConfig, got {type(cfg).__name__}")
    for name, d in (("train", train), ("val", val)):
        if not isinstance(d, TensorData):
            raise TypeError(f"{name} must be a TensorData, got {type(d).__name__}")
    if len(train) < 2 or len(val) < 1:
        raise ValueError(f"need >= 2 training and >= 1 validation samples, got {len(train)} and {len(val)}")
    if train.images.shape[1:] != val.images.shape[1:]:
        raise ValueError(f"train and val image sizes differ: {train.images.shape[1:]} vs {val.images.shape[1:]}")
    t0 = time.perf_counter()
    device = torch.device(cfg.device)
    ckpt_dir = None if checkpoint_dir is None else Path(checkpoint_dir)

    init_fp = _state_fingerprint(model)
    if cfg.method == "transfer" and teacher is None:
        teacher = make_teacher(model)  # the frozen initial network (docs/DECISIONS.md)
    model.to(device)
    maybe_channels_last(model, cfg.channels_last, device)
    if teacher is not None:
        teacher.to(device)
        maybe_channels_last(teacher, cfg.channels_last, device)
    scaler = grad_scaler(device, cfg.amp)
    trainable = set_trainable(model, cfg.trainable)
    if not trainable:
        raise ValueError(f"no trainable parameters for trainable={cfg.trainable!r}")
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(params, cfg)
    weight = class_weights(train.labels, device) if cfg.class_weighting else None
    kt_loss = KnowledgeTransferLoss(cfg.beta, cfg.omega, cfg.distance_form) if cfg.method == "transfer" else None
    augment = JointAugment(cfg.augment, p=cfg.augment_p, max_degrees=cfg.max_degrees) if cfg.augment else None
    data_fp = f"{train.fingerprint()}-{val.fingerprint()}"
    net, writer = (model, True) if parallel is None else (parallel.wrap(model), parallel.is_main)

    history: list[dict[str, float]] = []
    best_state: Optional[dict[str, Tensor]] = None
    selection = EarlySelection(cfg.selection_metric, cfg.patience)
    start_epoch, resumed_from, stopped = 0, None, False
    last = None if ckpt_dir is None else ckpt_dir / "last.pt"
    ck = None
    if last is not None and last.exists():
        try:
            ck = torch.load(last, map_location="cpu", weights_only=True)
        except TORCH_LOAD_ERRORS as err:  # torn/truncated: retrain this run from scratch
            warnings.warn(f"damaged checkpoint {last} ({type(err).__name__}: {err}); training from scratch",
                          stacklevel=2)
    if ck is not None:
        _check_resume(ck, cfg, data_fp, init_fp, last)
        model.load_state_dict(ck["model_state"])
        optimizer.load_state_dict(ck["optimizer_state"])
        best_state, stopped = ck["best_state"], bool(ck["stopped"])
        selection.load_state_dict(ck)
        history = list(ck["history"])
        start_epoch = resumed_from = int(ck["epoch"]) + 1

    with preserve_mode(model):  # train/eval flags as the caller had them, after the loop
        bar = tqdm(range(start_epoch, cfg.epochs), disable=not (progress and writer), desc=f"train ({cfg.method})",
                   initial=start_epoch, total=cfg.epochs)
        for epoch in bar:
            if stopped:
                break
            e0 = time.perf_counter()
            gen = epoch_generator(cfg.seed, epoch)
            apply_train_mode(model)
            sums: dict[str, float] = {}
            batches = _batches(len(train), cfg.batch_size, gen)
            draws = _augment_draws(augment, batches, gen)  # all of the epoch's draws, in one-by-one order
            for step, (idx, (x, m, y)) in enumerate(zip(batches, _prefetched(train, batches, augment, draws,
                                                                             cfg.prefetch_threads))):
                scale = 1.0
                if parallel is not None:  # this process's share of the global batch
                    x, m, y, scale = parallel.shard(x, m, y)
                loss, parts = _step_loss(net, x, m, y, cfg, device, kt_loss, teacher, weight)
                optimizer.zero_grad(set_to_none=True)
                backward_step(loss if scale == 1.0 else loss * scale, optimizer, scaler)
                if parallel is not None:
                    parts = parallel.mean(parts, len(y))
                for k, v in parts.items():
                    sums[k] = sums.get(k, 0.0) + v * len(idx)
                if on_step is not None:
                    on_step(epoch, step, dict(parts))
            val_loss, val_acc, _ = _evaluate(model, val, cfg.input, cfg.batch_size, device, cfg.amp,
                                             cfg.channels_last)
            if parallel is not None:  # every process takes the main process's selection decisions
                val_loss, val_acc = parallel.agree(val_loss, val_acc)
            row = {"epoch": epoch, "train_loss": sums["total"] / len(train), "train_ce": sums["ce"] / len(train)}
            for j in cfg.omega:
                row[f"train_d{j}"] = sums[f"d{j}"] / len(train) if f"d{j}" in sums else float("nan")
            row.update(val_loss=val_loss, val_accuracy=val_acc, seconds=time.perf_counter() - e0)
            history.append(row)
            if selection.update(epoch, val_acc, val_loss):
                best_state = _cpu_state(model)
            stopped = selection.should_stop
            if last is not None and writer:
                save_torch({"model_state": _cpu_state(model), "optimizer_state": optimizer.state_dict(),
                                   "epoch": epoch, "best_state": best_state, **selection.state_dict(),
                                   "stopped": stopped, "history": history,
                                   "cfg": cfg.to_dict(), "data": data_fp, "init": init_fp}, last)
            bar.set_postfix(loss=f"{row['train_loss']:.3f}", val_acc=f"{val_acc:.3f}")
            if on_epoch_end is not None:
                on_epoch_end(epoch, dict(row))
        bar.close()

    best_epoch = selection.best_epoch
    if best_state is None:  # cannot happen: at least one epoch ran or was restored
        raise RuntimeError("no epoch was trained or restored")
    model.load_state_dict(best_state)
    for m in (model, teacher):
        if m is not None:
            undo_channels_last(m, cfg.channels_last, device)
    hist = pd.DataFrame(history, columns=list(HISTORY_COLUMNS[:3]) + [f"train_d{j}" for j in cfg.omega]
                        + list(HISTORY_COLUMNS[3:]))
    best = hist.loc[hist["epoch"] == best_epoch].iloc[0]
    result = TrainResult(model=model, history=hist, best_epoch=best_epoch,
                         best_val_accuracy=float(best["val_accuracy"]), best_val_loss=float(best["val_loss"]),
                         epochs_run=len(hist), stopped_early=stopped and len(hist) < cfg.epochs,
                         resumed_from=resumed_from, wall_s=time.perf_counter() - t0, cfg=cfg)
    if ckpt_dir is not None and writer:
        save_torch({"model_state": best_state, "best_epoch": best_epoch, "cfg": cfg.to_dict(),
                           **(meta or {})}, ckpt_dir / "best.pt")
        write_json(ckpt_dir / "done.json", {"best_epoch": best_epoch, "best_val_accuracy": result.best_val_accuracy,
                                            "best_val_loss": result.best_val_loss, "epochs_run": result.epochs_run,
                                            "stopped_early": result.stopped_early, "cfg": cfg.to_dict(),
                                            "trainable": trainable})
    return result


def _check_resume(ck: dict[str, Any], cfg: TrainConfig, data_fp: str, init_fp: str, path: Path) -> None:
    """Refuse to resume a checkpoint made with another config, data or initial network."""
    saved = {k: v for k, v in ck["cfg"].items() if k not in _RESUME_IGNORED}
    now = {k: v for k, v in cfg.to_dict().items() if k not in _RESUME_IGNORED}
    diff = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
    if diff:
        raise ValueError(f"{path}: checkpoint made with another TrainConfig (differs in {diff}); "
                         f"delete it or use another checkpoint_dir")
    if ck["data"] != data_fp:
        raise ValueError(f"{path}: checkpoint made on other train/val data; delete it or use another checkpoint_dir")
    if ck["init"] != init_fp:
        raise ValueError(f"{path}: checkpoint made from another initial network; delete it or use another "
                         f"checkpoint_dir")


def _augment_draws(augment: Optional[JointAugment], batches: Sequence[Tensor],
                   gen: torch.Generator) -> list[Optional[list[AugmentParams]]]:
    """Every sample's augmentation parameters of an epoch, drawn batch by batch and sample by
    sample from ``gen``: the draws :class:`JointAugment` would make applied one by one."""
    if augment is None:
        return [None] * len(batches)
    return [[augment.sample(gen) for _ in range(len(idx))] for idx in batches]


def _training_batch(data: TensorData, idx: np.ndarray, augment: Optional[JointAugment],
                    params: Optional[Sequence[AugmentParams]]) -> tuple[Tensor, Tensor, Tensor]:
    """Images (B,S,S), masks (B,S,S) uint8 and labels of ``idx``, jointly augmented per sample
    with ``params`` (one per sample)."""
    x = torch.from_numpy(data.images[idx])
    m = torch.from_numpy(data.masks[idx])
    if augment is not None and params is not None:
        pairs = [augment.apply(x[i:i + 1], m[i:i + 1], p) for i, p in enumerate(params)]
        x = torch.cat([p[0] for p in pairs]).clamp_(0.0, 1.0)
        m = torch.cat([p[1] for p in pairs])
    return x, m, torch.from_numpy(data.labels[idx])


def _prefetched(data: TensorData, batches: Sequence[Tensor], augment: Optional[JointAugment],
                draws: Sequence[Optional[Sequence[AugmentParams]]], threads: int) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
    """The epoch's training batches in order; with ``threads`` > 0 up to ``threads + 1`` of them are
    assembled ahead in a thread pool (augmentation is deterministic given its draws, so the
    batches are the same)."""
    if threads == 0:
        for idx, params in zip(batches, draws):
            yield _training_batch(data, idx.numpy(), augment, params)
        return
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor
    from itertools import islice

    pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="mammo-kt-batches")
    pending: deque = deque()
    jobs = iter(zip(batches, draws))

    def submit(job: tuple[Tensor, Any]) -> None:
        pending.append(pool.submit(_training_batch, data, job[0].numpy(), augment, job[1]))

    try:
        for job in islice(jobs, threads + 1):
            submit(job)
        while pending:
            out = pending.popleft().result()
            job = next(jobs, None)
            if job is not None:
                submit(job)
            yield out
    finally:  # also when the training step fails: no thread outlives the epoch
        for f in pending:
            f.cancel()
        pool.shutdown(wait=True, cancel_futures=True)


def _step_loss(model: nn.Module, x: Tensor, m: Tensor, y: Tensor, cfg: TrainConfig, device: torch.device,
               kt_loss: Optional[KnowledgeTransferLoss], teacher: Optional[nn.Module],
               weight: Optional[Tensor]) -> tuple[Tensor, dict[str, float]]:
    """Loss of one batch: cross-entropy, or Eq. 5 with the teacher's (gradient-free) mask maps.
    Forward passes under ``cfg.amp`` autocast; logits and maps are cast to full precision before the losses."""
    y = y.to(device)

    def prep(t: Tensor) -> Tensor:
        return maybe_channels_last(t, cfg.channels_last, device)

    if kt_loss is None:
        with autocast_for(device, cfg.amp):
            logits = model(prep(to_model_input(x.to(device)) if cfg.input == "roi"
                                else mask_to_model_input(m.to(device))))
        logits = full(logits)
        ce = F.cross_entropy(logits, y, weight=weight)
        return ce, {"ce": float(ce.detach()), "total": float(ce.detach())}
    if teacher is None:
        raise RuntimeError("method 'transfer' needs a teacher network")
    with autocast_for(device, cfg.amp):
        mask_maps = teacher_maps(teacher, prep(mask_to_model_input(m.to(device))), cfg.omega)
        with GroupActivations(model, cfg.omega) as acts:
            logits = model(prep(to_model_input(x.to(device))))
    logits = full(logits)
    roi_maps = {j: activation_map(full(acts[j])) for j in cfg.omega}  # Eq. 3-4 in full precision
    loss, parts = kt_loss(logits, y, roi_maps, mask_maps)
    if weight is not None:  # Eq. 5 with a class-weighted cross-entropy term
        ce_w = F.cross_entropy(logits, y, weight=weight)
        loss = loss - F.cross_entropy(logits, y) + ce_w
        parts = dict(parts, ce=float(ce_w.detach()), total=float(loss.detach()))
    return loss, parts


def roi_spec_of(data: Any) -> dict[str, Any]:
    """How the ROIs of a RoiSet-like ``data`` were made (size, context, intensity scaling, crop
    variant), from its ``params``; empty when unknown. Stored in checkpoints (``roi_spec``)."""
    params = getattr(data, "params", None) or {}
    return {k: params[k] for k in ("size", "min_context", "intensity", "variant") if k in params}


# --------------------------------------------------------------------------------------------
# Prediction
# --------------------------------------------------------------------------------------------
def predict(model: nn.Module, images: np.ndarray, *, input: Literal["roi", "mask"] = "roi",
            batch_size: int = 32, device: str | torch.device = "cpu") -> np.ndarray:
    """Softmax probabilities ``(N, 2)`` (column 1 = malignant) in eval mode, no gradients.

    ``images`` are ROIs (N,S,S) in [0, 1] (``input="roi"``) or binary masks (``input="mask"``).
    The model's modes and device are restored.
    """
    if input not in INPUTS:
        raise ValueError(f"input must be one of {INPUTS}, got {input!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    arr = np.asarray(images)
    if arr.ndim != 3:
        raise ValueError(f"images must be (N,S,S), got shape {arr.shape}")
    if input == "roi":
        arr = arr.astype(np.float32, copy=False)
    dev = torch.device(device)
    with on_device(model, dev), eval_mode(model), torch.no_grad():
        out = [torch.softmax(model(_model_input(arr[s:s + batch_size], input, dev)).double(), dim=1).cpu()
               for s in range(0, len(arr), batch_size)]
    return torch.cat(out).numpy() if out else np.empty((0, 2))


__all__ = ["TrainConfig", "TensorData", "TrainResult", "train_model", "predict", "seed_everything", "roi_spec_of",
           "epoch_generator", "HISTORY_COLUMNS"]
