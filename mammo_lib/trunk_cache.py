"""A cached frozen trunk: train group 4 + classifier (Sec. 3.3) from stored group-3 features.

Table 2 trains only group 4 and the classifier; groups 1-3 (and their BatchNorm statistics) are
frozen. Their output therefore never changes during training, and neither does the frozen
teacher's activation map of a mask (Eq. 3, the target of Eq. 4-5). :func:`build_cache` runs
them once per ROI and per flip (identity, horizontal, vertical, both), and :func:`train_head`
trains group 4 + classifier from the cache; every epoch costs a pass through group 4 only.

Exactness: with the trunk in eval mode (as :func:`mammo_lib.model.apply_train_mode` keeps frozen
BatchNorms), ``head_forward(model, trunk(x))`` equals ``model(x)`` and the Eq. 5 loss equals the
uncached one to float precision (tests check 1e-5). What changes is the augmentation: continuous
rotation cannot be cached, so cached training uses the four flips only (``docs/DECISIONS.md``).

Knowledge-transfer targets (``target=``): ``"teacher"`` (the paper: the frozen initial network's
map of the case's own mask), and two controls: ``"shuffled"`` (another case's teacher map, a fixed
derangement) and ``"oracle"`` (the mask itself average-pooled to the g x g grid).

>>> from mammo_lib.model import build_model
>>> import numpy as np
>>> model = build_model("small", seed=0)
>>> rois = np.random.default_rng(0).random((4, 64, 64), dtype=np.float32)
>>> masks = np.zeros((4, 64, 64), np.uint8); masks[:, 20:40, 20:40] = 1
>>> cache = build_cache(model, rois, masks, progress=False)
>>> cache.features.shape[:2]
(4, 4)
"""
from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .io import save_torch
from .progress import tqdm
from .records import DamagedCacheError
from .activation import activation_distance, activation_map
from .precision import autocast_for, backward_step, channels_last_while, grad_scaler, maybe_channels_last
from .model import eval_mode, mask_to_model_input, on_device, preserve_mode, set_trainable, to_model_input
from .training import TORCH_LOAD_ERRORS, TrainConfig, _better, _class_weights, _make_optimizer, epoch_generator

#: Flip codes of the cache: index 0 identity, 1 horizontal, 2 vertical, 3 both.
FLIPS = ("none", "hflip", "vflip", "hvflip")
#: Knowledge-transfer targets: the paper's teacher map and two controls.
TARGETS = ("teacher", "shuffled", "oracle")
Target = Literal["teacher", "shuffled", "oracle"]

#: Children of ``model.features`` that form the frozen trunk (groups 1-3 and the stem).
TRUNK_LAYERS = ("conv0", "norm0", "relu0", "pool0", "denseblock1", "transition1", "denseblock2",
                "transition2", "denseblock3", "transition3")


def _flip(x: Tensor, code: int) -> Tensor:
    """Flip the last two axes of ``x`` as :data:`FLIPS` ``[code]`` says."""
    dims = {0: (), 1: (-1,), 2: (-2,), 3: (-2, -1)}[code]
    return x.flip(dims) if dims else x


def trunk_forward(model: nn.Module, x: Tensor) -> Tensor:
    """Groups 1-3 of a torchvision DenseNet (stem to ``transition3``): the input of group 4."""
    for name in TRUNK_LAYERS:
        x = getattr(model.features, name)(x)
    return x


def group4_activation(model: nn.Module, t: Tensor) -> Tensor:
    """Group 4's activation from the trunk output: ``relu(norm5(denseblock4(t)))`` (Sec. 3.3)."""
    return F.relu(model.features.norm5(model.features.denseblock4(t)))


def head_logits(model: nn.Module, a: Tensor) -> Tensor:
    """Logits from group 4's activation: global average pooling + the linear classifier
    (``head="gap"``, torchvision's), or the flattened map (``head="flatten"``)."""
    if getattr(model, "head", "gap") == "flatten":
        return model.classifier(torch.flatten(a, 1))
    return model.classifier(torch.flatten(F.adaptive_avg_pool2d(a, 1), 1))


@dataclass
class TrunkCache:
    """Stored trunk outputs of N ROIs under F flips.

    Attributes:
        features: ``(N, F, C, g, g)`` float32, the input of group 4 (``transition3``'s output).
        teacher_maps: ``(N, F, g, g)`` float32, F^4 (Eq. 3) of the teacher's forward of each mask.
        oracle_maps: ``(N, F, g, g)`` float32, the mask average-pooled to the grid.
        labels: ``(N,)`` int64; ``ids``: case ids.
        flips: the flip names of axis 1.
    """

    features: Tensor
    teacher_maps: Tensor
    oracle_maps: Tensor
    labels: np.ndarray
    ids: list[str]
    flips: tuple[str, ...] = FLIPS

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, idx: Sequence[int] | np.ndarray) -> "TrunkCache":
        """The cases at integer positions ``idx``."""
        i = torch.as_tensor(np.asarray(idx, dtype=np.int64))
        return TrunkCache(self.features[i], self.teacher_maps[i], self.oracle_maps[i],
                          self.labels[np.asarray(idx, dtype=np.int64)],
                          [self.ids[k] for k in np.asarray(idx, dtype=np.int64)], self.flips)

    def save(self, path: str | Path) -> Path:
        """Write the cache atomically (``torch.save``)."""
        path = Path(path)
        save_torch({"features": self.features, "teacher_maps": self.teacher_maps,
                           "oracle_maps": self.oracle_maps, "labels": torch.from_numpy(np.array(self.labels, dtype=np.int64)),
                           "ids": list(self.ids), "flips": list(self.flips)}, path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "TrunkCache":
        """Read a cache written by :meth:`save`; a damaged file (truncated, torn, keys missing)
        raises :class:`DamagedCacheError` naming ``path``."""
        path = Path(path)
        try:
            d = torch.load(path, map_location="cpu", weights_only=True)
            return cls(d["features"], d["teacher_maps"], d["oracle_maps"], d["labels"].numpy(),
                       list(d["ids"]), tuple(d["flips"]))
        except FileNotFoundError:
            raise
        except TORCH_LOAD_ERRORS + (TypeError, AttributeError) as err:
            raise DamagedCacheError(f"damaged trunk cache {path} ({type(err).__name__}: {err})") from err

    @classmethod
    def load_or_none(cls, path: str | Path) -> Optional["TrunkCache"]:
        """The cache at ``path``, or None when there is none or it is damaged (a warning names it;
        the caller rebuilds and overwrites it).

        >>> TrunkCache.load_or_none("no/such/cache.pt") is None
        True
        """
        path = Path(path)
        if not path.exists():
            return None
        try:
            return cls.load(path)
        except DamagedCacheError as err:
            warnings.warn(f"{err}; rebuilding it", stacklevel=2)
            return None


@torch.no_grad()
def build_cache(model: nn.Module, images: np.ndarray, masks: np.ndarray, *,
                labels: Optional[np.ndarray] = None, ids: Optional[Sequence[str]] = None,
                teacher: Optional[nn.Module] = None, flips: Sequence[str] = FLIPS, batch_size: int = 32,
                device: str | torch.device = "cpu", amp: str = "off", channels_last: bool = False,
                progress: bool = True) -> TrunkCache:
    """Run the frozen trunk of ``model`` (eval mode, modes restored) over every ROI under every
    flip, and the ``teacher`` (default: ``model`` itself, i.e. the frozen initial network) over the
    masks to get the Eq. 3 target maps of group 4.

    Args:
        images: ``(N,S,S)`` ROIs in [0, 1]; masks: ``(N,S,S)`` in {0, 1}.
        flips: which of :data:`FLIPS` to store (``("none",)`` for evaluation-only data).
        amp, channels_last: as :class:`~mammo_lib.training.TrainConfig`'s (CUDA only; the cache
            is stored in float32 either way).
    """
    images, masks = np.asarray(images, dtype=np.float32), np.asarray(masks)
    if images.ndim != 3 or masks.shape != images.shape:
        raise ValueError(f"images and masks must be (N,S,S) of one shape, got {images.shape} and {masks.shape}")
    bad = [f for f in flips if f not in FLIPS]
    if bad or not flips:
        raise ValueError(f"flips must be a non-empty subset of {FLIPS}, got {tuple(flips)}")
    codes = [FLIPS.index(f) for f in flips]
    n = len(images)
    labels = np.zeros(n, np.int64) if labels is None else np.asarray(labels, dtype=np.int64)
    ids = [str(i) for i in range(n)] if ids is None else [str(i) for i in ids]
    if len(labels) != n or len(ids) != n:
        raise ValueError(f"labels ({len(labels)}) and ids ({len(ids)}) must have one entry per image ({n})")
    device = torch.device(device)
    teacher = model if teacher is None else teacher
    feats, tmaps, omaps = [], [], []
    with (on_device(model, device), on_device(teacher, device),  # the teacher may be the model: moved once
          channels_last_while(model, channels_last, device), channels_last_while(teacher, channels_last, device),
          eval_mode(model), eval_mode(teacher), autocast_for(device, amp)):
        for s in tqdm(range(0, n, batch_size), disable=not progress, desc="trunk cache"):
            x = torch.from_numpy(images[s:s + batch_size]).to(device)
            mk = torch.from_numpy(masks[s:s + batch_size].astype(np.uint8)).to(device)
            f_b, t_b, o_b = [], [], []
            for c in codes:
                t = trunk_forward(model, maybe_channels_last(to_model_input(_flip(x, c)), channels_last, device))
                mt = maybe_channels_last(mask_to_model_input(_flip(mk, c)), channels_last, device)
                a_mask = group4_activation(teacher, trunk_forward(teacher, mt))
                f_b.append(t.float().contiguous().cpu())
                t_b.append(activation_map(a_mask.float()).cpu())
                g = a_mask.shape[-1]
                o_b.append(F.adaptive_avg_pool2d(_flip(mk, c).float()[:, None], g)[:, 0].cpu())
            feats.append(torch.stack(f_b, 1))
            tmaps.append(torch.stack(t_b, 1))
            omaps.append(torch.stack(o_b, 1))
    return TrunkCache(torch.cat(feats), torch.cat(tmaps), torch.cat(omaps), labels, ids, tuple(flips))


def derangement(n: int, seed: int) -> np.ndarray:
    """A random permutation of ``range(n)`` with no fixed point (the shuffled-teacher control)."""
    if n < 2:
        raise ValueError(f"a shuffled teacher needs at least 2 cases, got {n}")
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n)
    return np.roll(perm, 1)[np.argsort(perm)]


@dataclass
class HeadResult:
    """Outcome of :func:`train_head`: the model holds the selected epoch's weights."""

    model: nn.Module
    history: pd.DataFrame
    best_epoch: int
    best_val_accuracy: float
    best_val_loss: float
    wall_s: float


def _flip_codes(augment: Sequence[str], n: int, gen: torch.Generator, n_flips: int) -> Tensor:
    """Per-sample flip code: horizontal and vertical flips, each with probability 0.5 when in
    ``augment`` (rotation is not cacheable and is ignored)."""
    if n_flips < 4:
        return torch.zeros(n, dtype=torch.long)
    u = torch.rand(n, 2, generator=gen)
    h = (u[:, 0] < 0.5).long() if "hflip" in augment else torch.zeros(n, dtype=torch.long)
    v = (u[:, 1] < 0.5).long() if "vflip" in augment else torch.zeros(n, dtype=torch.long)
    return h + 2 * v


def _target_maps(cache: TrunkCache, idx: Tensor, codes: Tensor, target: str,
                 perm: Optional[np.ndarray]) -> Tensor:
    if target == "oracle":
        return cache.oracle_maps[idx, codes]
    src = idx if target == "teacher" else torch.as_tensor(perm)[idx]
    return cache.teacher_maps[src, codes]


@torch.no_grad()
def _over_cache(model: nn.Module, cache: TrunkCache, read: Any, *, flip: int, batch_size: int,
                device: str | torch.device, amp: str = "off", channels_last: bool = False) -> Tensor:
    """``read(group-4 activation)`` over the cached features of one flip, batched, eval mode;
    group 4 under ``amp`` autocast, ``read`` on its float32 cast."""
    device = torch.device(device)
    out = []
    with on_device(model, device), eval_mode(model):  # the caller's model goes back where it was
        for s in range(0, len(cache), batch_size):
            t = maybe_channels_last(cache.features[s:s + batch_size, flip].to(device), channels_last, device)
            with autocast_for(device, amp):
                a = group4_activation(model, t)
            out.append(read(a.float()).cpu())
    return torch.cat(out)


def predict_cached(model: nn.Module, cache: TrunkCache, *, flip: int = 0, batch_size: int = 256,
                   device: str | torch.device = "cpu", amp: str = "off", channels_last: bool = False) -> np.ndarray:
    """Softmax probabilities ``(N, 2)`` from cached trunk features (eval mode, modes restored);
    ``amp``/``channels_last`` as :class:`~mammo_lib.training.TrainConfig`'s (group 4 only; the
    classifier runs on the float32 activation)."""
    if not len(cache):
        return np.empty((0, 2))
    return _over_cache(model, cache, lambda a: torch.softmax(head_logits(model, a).double(), 1), flip=flip,
                       batch_size=batch_size, device=device, amp=amp, channels_last=channels_last).numpy()


def group4_maps_cached(model: nn.Module, cache: TrunkCache, *, flip: int = 0, batch_size: int = 256,
                       device: str | torch.device = "cpu", amp: str = "off",
                       channels_last: bool = False) -> np.ndarray:
    """F^4 (Eq. 3, float32) of every cached ROI, ``(N, g, g)``."""
    return _over_cache(model, cache, activation_map, flip=flip, batch_size=batch_size, device=device,
                       amp=amp, channels_last=channels_last).numpy()


def head_loss(model: nn.Module, t: Tensor, y: Tensor, target_maps: Optional[Tensor], cfg: TrainConfig,
              weight: Optional[Tensor] = None) -> tuple[Tensor, dict[str, float]]:
    """Eq. 5 on cached features: ``CE + (beta/2) d^4`` (``target_maps`` None or beta 0: CE only).
    Group 4 and the classifier under ``cfg.amp`` autocast; CE and Eq. 4 in float32."""
    with autocast_for(t.device, cfg.amp):
        a = group4_activation(model, maybe_channels_last(t, cfg.channels_last, t.device))
        logits = head_logits(model, a)
    a, logits = a.float(), logits.float()
    ce = F.cross_entropy(logits, y, weight=weight)
    parts = {"ce": float(ce.detach())}
    if target_maps is None:
        parts["total"] = parts["ce"]
        return ce, parts
    d = activation_distance(target_maps, activation_map(a), form=cfg.distance_form).mean()
    total = ce + (cfg.beta / 2.0) * d
    parts.update(d4=float(d.detach()), total=float(total.detach()))
    return total, parts


def train_head(model: nn.Module, train: TrunkCache, val: TrunkCache, cfg: TrainConfig, *,
               target: Target = "teacher", shuffle_seed: int = 0, progress: bool = False) -> HeadResult:
    """Train group 4 + classifier of ``model`` (in place) from cached trunk features, select the
    epoch on ``val`` (accuracy, ties -> lower loss, as :func:`mammo_lib.training.train_model`).

    ``cfg.method == "transfer"`` adds Eq. 4-5 against ``target`` maps; ``"finetune"`` is plain
    cross-entropy. Batches and flips come from :func:`~mammo_lib.training.epoch_generator`
    ``(cfg.seed, epoch)``, so a run is reproducible. ``cfg.omega`` must be ``(4,)``; rotation in
    ``cfg.augment`` is ignored (the cache holds flips only).
    """
    if tuple(cfg.omega) != (4,):
        raise ValueError(f"cached training supports omega=(4,) only (groups 1-3 are frozen), got {cfg.omega}")
    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
    if cfg.trainable != "group4+classifier":
        raise ValueError(f"cached training trains group4+classifier only, got trainable={cfg.trainable!r}")
    if cfg.input != "roi":
        raise ValueError("cached training takes ROI input; a mask-only model is a cache of masks as images")
    if len(train) < 2 or len(val) < 1:
        raise ValueError(f"need >= 2 training and >= 1 validation cases, got {len(train)} and {len(val)}")
    t0 = time.perf_counter()
    device = torch.device(cfg.device)
    # back where and as the caller had it, also after an error
    with on_device(model, device), channels_last_while(model, cfg.channels_last, device):
        set_trainable(model, "group4+classifier")
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = _make_optimizer(params, cfg)
        scaler = grad_scaler(device, cfg.amp)
        weight = _class_weights(train.labels, device) if cfg.class_weighting else None
        use_kt = cfg.method == "transfer" and cfg.beta > 0
        perm = derangement(len(train), shuffle_seed) if (use_kt and target == "shuffled") else None
        y_all = torch.from_numpy(train.labels)
        history, best_key, best_state, best_epoch, since = [], None, None, -1, 0
        head_modules = (model.features.denseblock4, model.features.norm5, model.classifier)
        with preserve_mode(model):
            model.eval()
            for epoch in tqdm(range(cfg.epochs), disable=not progress, desc=f"head ({cfg.method})"):
                e0 = time.perf_counter()
                gen = epoch_generator(cfg.seed, epoch)
                order = torch.randperm(len(train), generator=gen)
                codes_all = _flip_codes(cfg.augment, len(train), gen, train.features.shape[1])
                chunks = list(order.split(cfg.batch_size))
                if len(chunks) > 1 and len(chunks[-1]) == 1:
                    last = chunks.pop()
                    chunks[-1] = torch.cat([chunks[-1], last])
                for m in head_modules:
                    m.train()
                sums: dict[str, float] = {}
                for idx in chunks:
                    codes = codes_all[idx]
                    t = train.features[idx, codes].to(device)
                    tm = _target_maps(train, idx, codes, target, perm).to(device) if use_kt else None
                    loss, parts = head_loss(model, t, y_all[idx].to(device), tm, cfg, weight)
                    optimizer.zero_grad(set_to_none=True)
                    backward_step(loss, optimizer, scaler)
                    for k, v in parts.items():
                        sums[k] = sums.get(k, 0.0) + v * len(idx)
                for m in head_modules:
                    m.eval()
                p = predict_cached(model, val, device=device, amp=cfg.amp, channels_last=cfg.channels_last)
                yv = val.labels
                val_loss = float(-np.log(np.clip(p[np.arange(len(yv)), yv], 1e-12, None)).mean())
                val_acc = float((p.argmax(1) == yv).mean())
                row = {"epoch": epoch, "train_loss": sums["total"] / len(train), "train_ce": sums["ce"] / len(train),
                       "train_d4": sums["d4"] / len(train) if "d4" in sums else float("nan"),
                       "val_loss": val_loss, "val_accuracy": val_acc, "seconds": time.perf_counter() - e0}
                history.append(row)
                if _better(val_acc, val_loss, best_key, cfg.selection_metric):
                    best_key, best_epoch, since = (val_acc, val_loss), epoch, 0
                    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                else:
                    since += 1
                if cfg.patience is not None and since >= cfg.patience:
                    break
        model.load_state_dict(best_state)
    hist = pd.DataFrame(history)
    best = hist.loc[hist["epoch"] == best_epoch].iloc[0]
    return HeadResult(model, hist, best_epoch, float(best["val_accuracy"]), float(best["val_loss"]),
                      time.perf_counter() - t0)


__all__ = ["FLIPS", "TARGETS", "DamagedCacheError", "TrunkCache", "HeadResult", "build_cache", "train_head", "predict_cached",
           "group4_maps_cached", "trunk_forward", "group4_activation", "head_logits", "head_loss",
           "derangement"]
