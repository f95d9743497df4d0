"""A cached frozen trunk: train group 4 + classifier (Sec. 3.3) from stored group-3 features.

Table 2 trains only group 4 and the classifier; groups 1-3 (and their BatchNorm statistics) are
frozen. Their output therefore never changes during training, and neither does the frozen
teacher's activation map of a mask (Eq. 3, the target of Eq. 4-5). :func:`build_cache` runs
them once per ROI and per flip (identity, horizontal, vertical, both), and :func:`train_head`
trains group 4 + classifier from the cache; every epoch costs a pass through group 4 only.

Exactness: with the trunk in eval mode (as :func:`mammo_lib.networks.densenet.apply_train_mode` keeps frozen
BatchNorms), ``head_forward(model, trunk(x))`` equals ``model(x)`` and the Eq. 5 loss equals the
uncached one to float precision (tests check 1e-5). What changes is the augmentation: continuous
rotation cannot be cached, so cached training uses the four flips only (``docs/DECISIONS.md``).

Knowledge-transfer targets (``target=``): ``"teacher"`` (the paper: the frozen initial network's
map of the case's own mask), and controls: ``"shuffled"`` (another case's teacher map, a fixed
derangement), ``"oracle"`` (the mask itself average-pooled to the g x g grid), and two nulls,
``"uniform"`` (a constant map: Eq. 4 compares it, normalised, to a map spread evenly over the grid)
and ``"rolled"`` (the case's own teacher map rolled by half the grid side in both axes,
:func:`rolled_maps`: the same blob, off the mass).

Heads (:func:`mammo_lib.networks.densenet.build_model`'s ``head``): ``"gap"``, ``"flatten"`` and ``"gap_own"``
(the classifier reads group 4's own channels only, not the pass-through ones; the positive control).

>>> from mammo_lib.networks.densenet import build_model
>>> import numpy as np
>>> model = build_model("small", seed=0)
>>> rois = np.random.default_rng(0).random((4, 64, 64), dtype=np.float32)
>>> masks = np.zeros((4, 64, 64), np.uint8); masks[:, 20:40, 20:40] = 1
>>> cache = build_cache(model, rois, masks, progress=False)
>>> tuple(cache.features.shape[:2])
(4, 4)
"""
from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Mapping, Optional, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mammo_lib.utils.files import save_torch
from mammo_lib.utils.progress import tqdm
from mammo_lib.utils.precision import full
from mammo_lib.data.records import DamagedCacheError
from mammo_lib.networks.activation import activation_distance, activation_map
from mammo_lib.engines.amp import autocast_for, backward_step, channels_last_while, grad_scaler, maybe_channels_last
from mammo_lib.networks.densenet import TRAINABLE_PREFIXES, eval_mode, mask_to_model_input, on_device, passthrough_channels, to_model_input
from mammo_lib.engines.selection import EarlySelection
from mammo_lib.engines.training import TORCH_LOAD_ERRORS, TrainConfig, class_weights, epoch_generator, make_optimizer

#: Flip codes of the cache: index 0 identity, 1 horizontal, 2 vertical, 3 both.
FLIPS = ("none", "hflip", "vflip", "hvflip")
#: Knowledge-transfer targets: the paper's teacher map, two controls and two nulls (module docstring).
TARGETS = ("teacher", "shuffled", "oracle", "uniform", "rolled")
Target = Literal["teacher", "shuffled", "oracle", "uniform", "rolled"]

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
    (``head="gap"``, torchvision's), the flattened map (``head="flatten"``), or global average
    pooling of group 4's own channels only (``head="gap_own"``, the positive control)."""
    head = getattr(model, "head", "gap")
    return _classify(model.classifier, head, a, passthrough_channels(model) if head == "gap_own" else 0)


def _classify(classifier: nn.Module, head: str, a: Tensor, skip: int = 0) -> Tensor:
    """The classifier on activation ``a``; ``skip``: pass-through channels left out (``"gap_own"``)."""
    if head == "flatten":
        return classifier(torch.flatten(a, 1))
    if head == "gap_own":
        return classifier(torch.flatten(F.adaptive_avg_pool2d(a, 1), 1)[:, skip:])
    return classifier(torch.flatten(F.adaptive_avg_pool2d(a, 1), 1))


@dataclass
class TrunkCache:
    """Stored trunk outputs of N ROIs under F flips.

    Attributes:
        features: ``(N, F, C, g, g)`` in the run's precision (float32 or float64), the input of group 4 (``transition3``'s output).
        teacher_maps: ``(N, F, g, g)``, the same precision, F^4 (Eq. 3) of the teacher's forward of each mask.
        oracle_maps: ``(N, F, g, g)``, the same precision, the mask average-pooled to the grid.
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
        amp, channels_last: as :class:`~mammo_lib.engines.training.TrainConfig`'s (CUDA only; the cache
            is stored in full precision either way).
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
                f_b.append(full(t).contiguous().cpu())
                t_b.append(activation_map(full(a_mask)).cpu())
                g = a_mask.shape[-1]
                o_b.append(F.adaptive_avg_pool2d(_flip(mk, c).to(torch.get_default_dtype())[:, None], g)[:, 0].cpu())
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
    #: The selection on a second validation set (:func:`train_heads`'s ``select_also``): the
    #: network's head state at that epoch, the epoch and its accuracy and loss there.
    also: Optional["AlsoSelected"] = None


@dataclass
class AlsoSelected:
    """A second epoch selection of the same training run, on another validation set (for example
    the neutral rendering of the inner validation cases: the oracle analysis of Table 2)."""

    state: dict[str, Tensor]
    best_epoch: int
    val_accuracy: float
    val_loss: float


def _flip_codes(augment: Sequence[str], n: int, gen: torch.Generator, n_flips: int) -> Tensor:
    """Per-sample flip code: horizontal and vertical flips, each with probability 0.5 when in
    ``augment`` (rotation is not cacheable and is ignored)."""
    if n_flips < 4:
        return torch.zeros(n, dtype=torch.long)
    u = torch.rand(n, 2, generator=gen)
    h = (u[:, 0] < 0.5).long() if "hflip" in augment else torch.zeros(n, dtype=torch.long)
    v = (u[:, 1] < 0.5).long() if "vflip" in augment else torch.zeros(n, dtype=torch.long)
    return h + 2 * v


def rolled_maps(maps: Tensor, flips: Sequence[str]) -> Tensor:
    """The ``"rolled"`` null target: every case's map rolled by ``s = g // 2`` cells down and right
    (``torch.roll``, circular) in the case's own (unflipped) frame, so the blob keeps its shape
    but sits off the mass.

    ``maps`` is ``(N, F, g, g)`` with axis 1 under ``flips`` (:data:`FLIPS` names), each map in
    its flipped frame (as :attr:`TrunkCache.teacher_maps`). A shift by ``+s`` in the case's frame
    is a shift by ``-s`` along a flipped axis, so ``flip(rolled[:, f]) = roll(flip(maps[:, f]), s)``
    for every flip: the target moves with the ROI as the teacher's does (for even g, ``-s = s``
    modulo g and every flip gets the same roll).

    >>> m = torch.arange(9.).view(1, 1, 3, 3)
    >>> rolled_maps(m, ("none",))[0, 0]
    tensor([[8., 6., 7.],
            [2., 0., 1.],
            [5., 3., 4.]])
    """
    if maps.ndim != 4 or maps.shape[1] != len(flips) or maps.shape[-1] != maps.shape[-2]:
        raise ValueError(f"expected maps (N, {len(flips)}, g, g) for flips {tuple(flips)}, got {tuple(maps.shape)}")
    s = maps.shape[-1] // 2
    out = []
    for j, name in enumerate(flips):
        if name not in FLIPS:
            raise ValueError(f"unknown flip {name!r}; choose from {FLIPS}")
        code = FLIPS.index(name)
        shifts = (-s if code in (2, 3) else s, -s if code in (1, 3) else s)
        out.append(torch.roll(maps[:, j], shifts=shifts, dims=(-2, -1)))
    return torch.stack(out, 1)


def _target_maps(teacher: Tensor, oracle: Tensor, idx: Tensor, codes: Tensor, target: str,
                 perm: Optional[Tensor], rolled: Optional[Tensor] = None) -> Tensor:
    """The Eq. 4 targets of a batch: the teacher's maps of the cases' own masks, another case's
    (``perm``, the shuffled control), the pooled masks (the oracle control), a constant map of
    ones (the uniform null) or the rolled teacher maps (``rolled``, :func:`rolled_maps`)."""
    if target == "oracle":
        return oracle[idx, codes]
    if target == "uniform":
        return torch.ones((len(idx), *teacher.shape[-2:]), dtype=teacher.dtype, device=teacher.device)
    if target == "rolled":
        if rolled is None:
            raise ValueError("the rolled target needs the rolled maps (rolled_maps)")
        return rolled[idx, codes]
    return teacher[idx if target == "teacher" else perm[idx], codes]


@torch.no_grad()
def over_cache(model: nn.Module, cache: TrunkCache, read: Any, *, flip: int, batch_size: int,
                device: str | torch.device, amp: str = "off", channels_last: bool = False) -> Tensor:
    """``read(group-4 activation)`` over the cached features of one flip, batched, eval mode;
    group 4 under ``amp`` autocast, ``read`` on its full-precision cast."""
    device = torch.device(device)
    out = []
    with on_device(model, device), eval_mode(model):  # the caller's model goes back where it was
        for s in range(0, len(cache), batch_size):
            t = maybe_channels_last(cache.features[s:s + batch_size, flip].to(device), channels_last, device)
            with autocast_for(device, amp):
                a = group4_activation(model, t)
            out.append(read(full(a)).cpu())
    return torch.cat(out)


def predict_cached(model: nn.Module, cache: TrunkCache, *, flip: int = 0, batch_size: int = 256,
                   device: str | torch.device = "cpu", amp: str = "off", channels_last: bool = False) -> np.ndarray:
    """Softmax probabilities ``(N, 2)`` from cached trunk features (eval mode, modes restored);
    ``amp``/``channels_last`` as :class:`~mammo_lib.engines.training.TrainConfig`'s (group 4 only; the
    classifier runs on the full-precision activation)."""
    if not len(cache):
        return np.empty((0, 2))
    return over_cache(model, cache, lambda a: torch.softmax(head_logits(model, a).double(), 1), flip=flip,
                       batch_size=batch_size, device=device, amp=amp, channels_last=channels_last).numpy()


#: ``channels`` of :func:`group4_maps_cached`: all of group 4's output, its own or its pass-through part.
CHANNEL_SETS = ("all", "own", "passthrough")


def group4_maps_cached(model: nn.Module, cache: TrunkCache, *, flip: int = 0, batch_size: int = 256,
                       device: str | torch.device = "cpu", amp: str = "off",
                       channels_last: bool = False, channels: str = "all") -> np.ndarray:
    """F^4 (Eq. 3, full precision) of every cached ROI, ``(N, g, g)``; ``channels="own"`` or
    ``"passthrough"``: Eq. 3 over group 4's own channels or over the pass-through ones only
    (:func:`~mammo_lib.networks.densenet.passthrough_channels`), the mean over that part's channels."""
    if channels not in CHANNEL_SETS:
        raise ValueError(f"channels must be one of {CHANNEL_SETS}, got {channels!r}")
    if channels == "all":
        read = activation_map
    else:
        p = passthrough_channels(model)
        read = (lambda a: activation_map(a[:, p:])) if channels == "own" else (lambda a: activation_map(a[:, :p]))
    return over_cache(model, cache, read, flip=flip, batch_size=batch_size, device=device,
                       amp=amp, channels_last=channels_last).numpy()


def head_loss(model: nn.Module, t: Tensor, y: Tensor, target_maps: Optional[Tensor], cfg: TrainConfig,
              weight: Optional[Tensor] = None) -> tuple[Tensor, dict[str, float]]:
    """Eq. 5 on cached features: ``CE + (beta/2) d^4`` (``target_maps`` None or beta 0: CE only).
    Group 4 and the classifier under ``cfg.amp`` autocast; CE and Eq. 4 in full precision."""
    with autocast_for(t.device, cfg.amp):
        a = group4_activation(model, maybe_channels_last(t, cfg.channels_last, t.device))
        logits = head_logits(model, a)
    total, ce, d = _eq5(full(logits), full(a), y, target_maps, cfg, weight)
    parts = {"ce": float(ce.detach())}
    if d is not None:
        parts["d4"] = float(d.detach())
    parts["total"] = float(total.detach())
    return total, parts


def _eq5(logits: Tensor, a: Tensor, y: Tensor, target_maps: Optional[Tensor], cfg: TrainConfig,
         weight: Optional[Tensor]) -> tuple[Tensor, Tensor, Optional[Tensor]]:
    """Eq. 5 from full-precision logits and group-4 activation: ``(CE + (beta/2) d^4, CE, d^4)``, with
    ``d^4`` (Eq. 4, mean over the batch) None when ``target_maps`` is None (CE only)."""
    ce = F.cross_entropy(logits, y, weight=weight)
    if target_maps is None:
        return ce, ce, None
    d = activation_distance(target_maps, activation_map(a), form=cfg.distance_form).mean()
    return ce + (cfg.beta / 2.0) * d, ce, d


def _stack_bn(bns: Sequence[nn.Module]) -> nn.BatchNorm2d:
    """One BatchNorm over the channels of several (per channel, so the same arithmetic)."""
    b0 = bns[0]
    out = nn.BatchNorm2d(sum(b.num_features for b in bns), eps=b0.eps, momentum=b0.momentum, affine=b0.affine,
                         track_running_stats=b0.track_running_stats)
    with torch.no_grad():
        for name in ("weight", "bias", "running_mean", "running_var"):
            if getattr(out, name) is not None:
                getattr(out, name).copy_(torch.cat([getattr(b, name).detach().cpu() for b in bns]))
        if out.num_batches_tracked is not None:
            out.num_batches_tracked.copy_(bns[0].num_batches_tracked.cpu())
    return out


def _stack_conv(convs: Sequence[nn.Conv2d]) -> nn.Conv2d:
    """One grouped convolution (``groups=G``) holding G convolutions side by side."""
    c0 = convs[0]
    if c0.groups != 1:
        raise ValueError("only ungrouped convolutions can be stacked")
    out = nn.Conv2d(c0.in_channels * len(convs), c0.out_channels * len(convs), c0.kernel_size, stride=c0.stride,
                    padding=c0.padding, dilation=c0.dilation, groups=len(convs), bias=c0.bias is not None)
    with torch.no_grad():
        out.weight.copy_(torch.cat([c.weight.detach().cpu() for c in convs]))
        if out.bias is not None:
            out.bias.copy_(torch.cat([c.bias.detach().cpu() for c in convs]))
    return out


class _StackedDenseLayer(nn.Module):
    """torchvision's ``_DenseLayer`` (BN-ReLU-conv1x1-BN-ReLU-conv3x3) for G networks at once."""

    def __init__(self, layers: Sequence[nn.Module]) -> None:
        super().__init__()
        if any(float(getattr(lay, "drop_rate", 0.0)) > 0 for lay in layers):
            raise ValueError("dense layers with dropout cannot be trained together (their random draws differ)")
        self.norm1 = _stack_bn([lay.norm1 for lay in layers])
        self.conv1 = _stack_conv([lay.conv1 for lay in layers])
        self.norm2 = _stack_bn([lay.norm2 for lay in layers])
        self.conv2 = _stack_conv([lay.conv2 for lay in layers])

    def forward(self, x: Tensor) -> Tensor:
        return self.conv2(F.relu(self.norm2(self.conv1(F.relu(self.norm1(x))))))


class StackedHead(nn.Module):
    """Group 4 + classifier (Sec. 3.3) of G networks as one module, to train them together.

    Every BatchNorm of group 4 becomes one BatchNorm over the G networks' channels and every
    convolution one grouped convolution (``groups=G``): per network it is the arithmetic of its own
    group 4 (for G = 1 the very same operations), but a training step is one pass of a few hundred
    small kernels instead of G of them, which is what keeps a GPU busy on batches of 16 7x7 maps.
    The classifiers stay G linear layers. :meth:`state_of` gives network g's weights back under its
    own state-dict names (``features.denseblock4.*``, ``features.norm5.*``, ``classifier.*``).

    >>> from mammo_lib.networks.densenet import build_model
    >>> nets = [build_model("small", seed=s) for s in (0, 1, 2)]
    >>> stacked = StackedHead(nets)
    >>> a = stacked(torch.zeros(4, nets[0].features.denseblock4.denselayer1.norm1.num_features, 7, 7))
    >>> tuple(a.shape[:2]), len(stacked.logits(a))
    ((4, 3), 3)
    """

    def __init__(self, models: Sequence[nn.Module]) -> None:
        super().__init__()
        models = list(models)
        if not models:
            raise ValueError("StackedHead needs at least one network")
        heads = {getattr(m, "head", "gap") for m in models}
        if len(heads) != 1:
            raise ValueError(f"networks trained together need one head type, got {sorted(heads)}")
        self.head = heads.pop()
        self.skip = passthrough_channels(models[0]) if self.head == "gap_own" else 0
        head = TRAINABLE_PREFIXES["group4+classifier"]
        shapes = [{k: tuple(v.shape) for k, v in m.state_dict().items() if k.startswith(head)} for m in models]
        if any(sh != shapes[0] for sh in shapes[1:]):
            raise ValueError("networks trained together need the same architecture (group 4 and classifier differ)")
        self.n = len(models)
        blocks = [m.features.denseblock4 for m in models]
        self.layers = nn.ModuleDict({name: _StackedDenseLayer([getattr(b, name) for b in blocks])
                                     for name, _ in blocks[0].named_children()})
        self.norm5 = _stack_bn([m.features.norm5 for m in models])
        self.classifiers = nn.ModuleList()
        for m in models:
            c = nn.Linear(m.classifier.in_features, m.classifier.out_features)
            c.load_state_dict({k: v.detach().cpu() for k, v in m.classifier.state_dict().items()})
            self.classifiers.append(c)

    def forward(self, t: Tensor) -> Tensor:
        """Group 4's activation ``(B, G, C, g, g)`` from trunk outputs ``t``: ``(B, C0, g, g)``, one
        input for every network, or ``(B, G, C0, g, g)``, one each."""
        x = t[:, None].expand(-1, self.n, -1, -1, -1) if t.ndim == 4 else t
        if x.ndim != 5 or x.shape[1] != self.n:
            raise ValueError(f"expected trunk outputs (B,C,g,g) or (B,{self.n},C,g,g), got {tuple(t.shape)}")
        feats = [x]
        for layer in self.layers.values():
            feats.append(layer(torch.cat(feats, 2).flatten(1, 2)).unflatten(1, (self.n, -1)))
        return F.relu(self.norm5(torch.cat(feats, 2).flatten(1, 2))).unflatten(1, (self.n, -1))

    def logits(self, a: Tensor) -> list[Tensor]:
        """Each network's logits ``(B, classes)`` from the stacked activation ``a``."""
        return [_classify(c, self.head, a[:, g], self.skip) for g, c in enumerate(self.classifiers)]

    def state_of(self, g: int, state: Optional[Mapping[str, Tensor]] = None) -> dict[str, Tensor]:
        """Network ``g``'s group 4 + classifier state under its own names (copies), from this
        module or from ``state``, a state dict of it."""
        if not 0 <= g < self.n:
            raise IndexError(f"network {g} of {self.n}")
        out = {}
        for k, v in (self.state_dict() if state is None else state).items():
            if k.startswith("classifiers."):
                i, rest = k[len("classifiers."):].split(".", 1)
                if int(i) == g:
                    out[f"classifier.{rest}"] = v.detach().clone()
                continue
            name = ("features.denseblock4." + k[len("layers."):]) if k.startswith("layers.") else "features." + k
            out[name] = v.detach().clone() if v.ndim == 0 else v.detach().chunk(self.n, 0)[g].clone()
        return out


def _check_head_cfg(cfg: TrainConfig, target: str) -> None:
    if tuple(cfg.omega) != (4,):
        raise ValueError(f"cached training supports omega=(4,) only (groups 1-3 are frozen), got {cfg.omega}")
    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
    if cfg.trainable != "group4+classifier":
        raise ValueError(f"cached training trains group4+classifier only, got trainable={cfg.trainable!r}")
    if cfg.input != "roi":
        raise ValueError("cached training takes ROI input; a mask-only model is a cache of masks as images")


#: TrainConfig fields that may differ between networks trained together (:func:`train_heads`).
PER_NETWORK_FIELDS = ("method", "beta", "distance_form")


def train_head(model: nn.Module, train: TrunkCache, val: TrunkCache, cfg: TrainConfig, *,
               target: Target = "teacher", shuffle_seed: int = 0, progress: bool = False) -> HeadResult:
    """Train group 4 + classifier of ``model`` (in place) from cached trunk features, select the
    epoch on ``val`` (accuracy, ties -> lower loss, as :func:`mammo_lib.engines.training.train_model`).

    ``cfg.method == "transfer"`` adds Eq. 4-5 against ``target`` maps; ``"finetune"`` is plain
    cross-entropy. Batches and flips come from :func:`~mammo_lib.engines.training.epoch_generator`
    ``(cfg.seed, epoch)``, so a run is reproducible. ``cfg.omega`` must be ``(4,)``; rotation in
    ``cfg.augment`` is ignored (the cache holds flips only). One network of :func:`train_heads`.
    """
    return train_heads([model], train, val, [cfg], targets=[target], shuffle_seed=shuffle_seed,
                       progress=progress)[0]


def train_heads(models: Sequence[nn.Module], train: TrunkCache, val: TrunkCache, cfgs: Sequence[TrainConfig], *,
                targets: Optional[Sequence[Target]] = None, shuffle_seed: int = 0,
                progress: bool = False, select_also: Optional[TrunkCache] = None) -> list[HeadResult]:
    """Train group 4 + classifier of several networks together (in place), e.g. the beta grid of
    one fold: the same batches and flips for all, one :class:`StackedHead` step for all.

    Network g minimises its own Eq. 5 loss ``CE + (beta_g/2) d^4`` (``cfgs[g]``, target
    ``targets[g]``, default ``"teacher"``); the summed loss has independent gradients and Adam/SGD
    update every weight on its own, so each network trains as :func:`train_head` would train it
    alone, up to the rounding of a grouped convolution. The configurations may differ only in
    :data:`PER_NETWORK_FIELDS`. Each network keeps its own selected epoch and, with
    ``cfg.patience``, stops on its own. Trained in the run's precision or ``cfg.amp`` autocast (one loss scale
    for all with fp16); the head ignores ``channels_last`` (7x7 maps). ``wall_s`` of every result
    is the time of the whole group.

    ``select_also``: a second validation set (the same cases as ``val`` under another rendering,
    or others) on which every network also selects an epoch by the same rule, among the epochs it
    trained (its patience still counts on ``val``): the training is the same, only the selected
    state differs; it comes back in :attr:`HeadResult.also` and the model keeps ``val``'s choice.

    >>> from mammo_lib.networks.densenet import build_model
    >>> from mammo_lib.engines.training import TrainConfig
    >>> rois = np.random.default_rng(0).random((8, 64, 64), dtype=np.float32)
    >>> masks = np.zeros((8, 64, 64), np.uint8); masks[:, 20:40, 20:40] = 1
    >>> c = build_cache(build_model("small", seed=0), rois, masks, labels=np.arange(8) % 2, progress=False)
    >>> cfgs = [TrainConfig(epochs=2, batch_size=4, method=m, beta=b) for m, b in (("finetune", 0), ("transfer", 8))]
    >>> res = train_heads([build_model("small", seed=0) for _ in cfgs], c.subset(range(6)), c.subset([6, 7]), cfgs)
    >>> [len(r.history) for r in res]
    [2, 2]
    """
    models, cfgs = list(models), list(cfgs)
    targets = ["teacher"] * len(models) if targets is None else list(targets)
    if not models or len(cfgs) != len(models) or len(targets) != len(models):
        raise ValueError(f"need one config and one target per network, got {len(models)} networks, "
                         f"{len(cfgs)} configs and {len(targets)} targets")
    for cfg, target in zip(cfgs, targets):
        _check_head_cfg(cfg, target)
    common = [{k: v for k, v in c.to_dict().items() if k not in PER_NETWORK_FIELDS} for c in cfgs]
    diff = sorted({k for c in common[1:] for k in c if c[k] != common[0][k]})
    if diff:
        raise ValueError(f"networks trained together may differ only in {PER_NETWORK_FIELDS}; they differ in {diff}")
    if len(train) < 2 or len(val) < 1:
        raise ValueError(f"need >= 2 training and >= 1 validation cases, got {len(train)} and {len(val)}")
    if select_also is not None and len(select_also) < 1:
        raise ValueError("select_also needs >= 1 validation case")
    t0 = time.perf_counter()
    cfg, n_nets = cfgs[0], len(models)
    device = torch.device(cfg.device)
    head = StackedHead(models).to(device)
    optimizer = make_optimizer(list(head.parameters()), cfg)
    scaler = grad_scaler(device, cfg.amp)
    weight = class_weights(train.labels, device) if cfg.class_weighting else None
    use_kt = [c.method == "transfer" and c.beta > 0 for c in cfgs]
    perm = derangement(len(train), shuffle_seed) if any(u and t == "shuffled" for u, t in zip(use_kt, targets)) else None
    # the training cache lives on the device: one copy, then every batch is an index there
    feats, val_feats = train.features.to(device), val.features[:, 0].to(device)
    also_feats = None if select_also is None else select_also.features[:, 0].to(device)
    # the second selection (select_also): the same rule, no patience of its own
    also_sel = [EarlySelection(cfg.selection_metric) for _ in range(n_nets)]
    also_state: list[Optional[dict[str, Tensor]]] = [None] * n_nets
    also_hist: list[dict[int, tuple[float, float]]] = [{} for _ in models]
    teacher, oracle = train.teacher_maps.to(device), train.oracle_maps.to(device)
    perm_d = None if perm is None else torch.as_tensor(perm).to(device)
    rolled = (rolled_maps(train.teacher_maps, train.flips).to(device)
              if any(u and t == "rolled" for u, t in zip(use_kt, targets)) else None)
    y_all = torch.from_numpy(train.labels).to(device)
    maps = {t: None for u, t in zip(use_kt, targets) if u}
    histories: list[list[dict[str, float]]] = [[] for _ in models]
    selection = [EarlySelection(cfg.selection_metric, cfg.patience) for _ in range(n_nets)]
    best_state: list[Optional[dict[str, Tensor]]] = [None] * n_nets
    active = [True] * n_nets
    for epoch in tqdm(range(cfg.epochs), disable=not progress, desc=f"heads ({n_nets} trained together)"):
        if not any(active):
            break
        e0 = time.perf_counter()
        gen = epoch_generator(cfg.seed, epoch)
        order = torch.randperm(len(train), generator=gen)
        codes_all = _flip_codes(cfg.augment, len(train), gen, train.features.shape[1])
        chunks = list(order.split(cfg.batch_size))
        if len(chunks) > 1 and len(chunks[-1]) == 1:
            last = chunks.pop()
            chunks[-1] = torch.cat([chunks[-1], last])
        head.train()
        sums: dict[str, Tensor] = {}  # per-network float64 sums on the device: no host sync per step
        for idx in chunks:
            idx_d, codes_d = idx.to(device), codes_all[idx].to(device)
            t = feats[idx_d, codes_d]
            for tg in maps:
                maps[tg] = _target_maps(teacher, oracle, idx_d, codes_d, tg, perm_d, rolled)
            y = y_all[idx_d]
            with autocast_for(device, cfg.amp):
                a = head(t)
                logits = head.logits(a)
            a = full(a)
            losses, ces, ds = [], [], []
            for g in range(n_nets):
                loss, ce, d = _eq5(full(logits[g]), a[:, g], y, maps[targets[g]] if use_kt[g] else None,
                                   cfgs[g], weight)
                losses.append(loss)
                ces.append(ce)
                ds.append(torch.zeros_like(ce) if d is None else d)
            total = losses[0]
            for loss in losses[1:]:
                total = total + loss
            for k, v in (("ce", ces), ("d4", ds), ("total", losses)):
                v = torch.stack(v).detach().double() * len(idx)
                sums[k] = v if k not in sums else sums[k] + v
            optimizer.zero_grad(set_to_none=True)
            backward_step(total, optimizer, scaler)
        head.eval()
        probs = _stacked_predict(head, val_feats, cfg.amp)
        also_probs = None if also_feats is None else _stacked_predict(head, also_feats, cfg.amp)
        seconds = time.perf_counter() - e0
        yv = val.labels
        epoch_sums = {k: v.tolist() for k, v in sums.items()}  # one host transfer per epoch
        snapshot = None  # the stacked state, copied once per epoch for all networks that improved
        for g in range(n_nets):
            if not active[g]:
                continue
            p = probs[g]
            val_loss = float(-np.log(np.clip(p[np.arange(len(yv)), yv], 1e-12, None)).mean())
            val_acc = float((p.argmax(1) == yv).mean())
            histories[g].append({"epoch": epoch, "train_loss": epoch_sums["total"][g] / len(train),
                                 "train_ce": epoch_sums["ce"][g] / len(train),
                                 "train_d4": epoch_sums["d4"][g] / len(train) if use_kt[g] else float("nan"),
                                 "val_loss": val_loss, "val_accuracy": val_acc, "seconds": seconds})
            if selection[g].update(epoch, val_acc, val_loss):
                if snapshot is None:
                    snapshot = {k: v.detach().clone() for k, v in head.state_dict().items()}
                best_state[g] = snapshot
            if also_probs is not None:
                ya, pa = select_also.labels, also_probs[g]
                a_loss = float(-np.log(np.clip(pa[np.arange(len(ya)), ya], 1e-12, None)).mean())
                a_acc = float((pa.argmax(1) == ya).mean())
                also_hist[g][epoch] = (a_acc, a_loss)
                if also_sel[g].update(epoch, a_acc, a_loss):
                    if snapshot is None:
                        snapshot = {k: v.detach().clone() for k, v in head.state_dict().items()}
                    also_state[g] = snapshot
            if selection[g].should_stop:
                active[g] = False
    wall = time.perf_counter() - t0
    out = []
    for g, model in enumerate(models):
        missing = model.load_state_dict(head.state_of(g, best_state[g]), strict=False)
        if missing.unexpected_keys:
            raise RuntimeError(f"stacked head state does not fit the network: {missing.unexpected_keys[:5]}")
        hist = pd.DataFrame(histories[g])
        best_epoch = selection[g].best_epoch
        best = hist.loc[hist["epoch"] == best_epoch].iloc[0]
        also = None
        if select_also is not None:
            also_epoch = also_sel[g].best_epoch
            a_acc, a_loss = also_hist[g][also_epoch]
            also = AlsoSelected(head.state_of(g, also_state[g]), also_epoch, a_acc, a_loss)
            hist["also_val_accuracy"] = hist["epoch"].map(lambda e: also_hist[g][e][0])
            hist["also_val_loss"] = hist["epoch"].map(lambda e: also_hist[g][e][1])
        out.append(HeadResult(model, hist, best_epoch, float(best["val_accuracy"]), float(best["val_loss"]), wall,
                              also))
    return out


@torch.no_grad()
def _stacked_predict(head: StackedHead, feats: Tensor, amp: str, batch_size: int = 256) -> list[np.ndarray]:
    """Every network's softmax ``(N, 2)`` (float64), as :func:`predict_cached`: group 4 under
    ``amp`` autocast, the classifier on its full-precision cast."""
    out: list[list[Tensor]] = [[] for _ in range(head.n)]
    for s in range(0, len(feats), batch_size):
        with autocast_for(feats.device, amp):
            a = head(feats[s:s + batch_size])
        for g, lg in enumerate(head.logits(full(a))):
            out[g].append(torch.softmax(lg.double(), 1).cpu())
    return [torch.cat(o).numpy() for o in out]


__all__ = ["FLIPS", "TARGETS", "DamagedCacheError", "TrunkCache", "HeadResult", "AlsoSelected", "build_cache", "train_head",
           "train_heads", "StackedHead", "PER_NETWORK_FIELDS", "predict_cached",
           "group4_maps_cached", "trunk_forward", "group4_activation", "head_logits", "head_loss",
           "derangement", "rolled_maps", "CHANNEL_SETS"]
