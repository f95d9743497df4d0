"""The classifier of Sec. 3.3: torchvision's DenseNet121 with a new 2-way head (Sec. 3.3).

Every architecture here is torchvision's :class:`~torchvision.models.DenseNet` class; ``"small"``
is the same class with a tiny configuration, used by tests and the smoke profile so that the code
path is exactly the one the full model takes.

Initialisation (``build_model(weights=...)``): random, ImageNet (torchvision's
``DenseNet121_Weights.IMAGENET1K_V1``, read only from the local torch hub cache, never
downloaded), or a file (an ImageNet state dict or one of our checkpoints, e.g. the CBIS-DDSM
pre-training of Table 2's "DDSM" rows).
"""
from __future__ import annotations

import os
import pickle
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal, Union
from urllib.parse import urlparse

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torchvision.models import DenseNet, DenseNet121_Weights

from mammo_lib.utils.precision import widen

#: Architectures, as keyword arguments of :class:`torchvision.models.DenseNet`.
ARCHS: dict[str, dict[str, Any]] = {
    # torchvision.models.densenet121 (Huang et al.); the paper's network.
    "densenet121": dict(growth_rate=32, block_config=(6, 12, 24, 16), num_init_features=64, bn_size=4),
    # Same class and code path, a few thousand parameters: tests and smoke runs.
    "small": dict(growth_rate=8, block_config=(2, 2, 2, 2), num_init_features=16, bn_size=2),
}

#: ``layers`` values of :func:`set_trainable`.
TRAINABLE_SETS = ("group4+classifier", "classifier", "all")
TrainableSet = Literal["group4+classifier", "classifier", "all"]

#: Parameter-name prefixes left trainable by each set (Sec. 3.3: group 4 = denseblock4 + norm5).
TRAINABLE_PREFIXES: dict[str, tuple[str, ...]] = {
    "group4+classifier": ("features.denseblock4.", "features.norm5.", "classifier."),
    "classifier": ("classifier.",),
    "all": ("",),
}

#: ImageNet normalisation of torchvision's weights (applied to ROIs and masks alike, Sec. 4.1).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: Slack allowed on the [0, 1] range of grey inputs (float rounding of bicubic resizing).
_RANGE_TOLERANCE = 1e-3

#: Old-style torchvision DenseNet keys ("denselayer1.norm.1.weight" -> "denselayer1.norm1.weight"),
#: the pattern of ``torchvision.models.densenet._load_state_dict`` (plus ``num_batches_tracked``).
_OLD_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var"
    r"|num_batches_tracked))$"
)

Weights = Union[None, str, os.PathLike]

#: ``head`` values of :func:`build_model` (Sec. 3.3 can be read either way; ``docs/DECISIONS.md``),
#: and ``"gap_own"``, the positive control of Table 2's instrument (:class:`OwnChannelsDenseNet`).
HEADS = ("gap", "flatten", "gap_own")


class FlattenHeadDenseNet(DenseNet):
    """torchvision's DenseNet whose classifier reads the flattened group-4 map (``C * g * g``
    inputs) instead of its global average (the other reading of Sec. 3.3's "average-pooling and
    FC layer replaced by a FC layer"). ``head = "flatten"``; the input size is fixed by the head."""

    head = "flatten"

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102 - as DenseNet.forward, without the pooling
        out = torch.nn.functional.relu(self.features(x), inplace=True)
        return self.classifier(torch.flatten(out, 1))


class OwnChannelsDenseNet(DenseNet):
    """torchvision's DenseNet whose GAP classifier reads only group 4's own channels (``head =
    "gap_own"``), not the pass-through ones.

    DenseNet's last block concatenates its input (``transition3``'s output, frozen in Table 2's
    training) with the features of its own layers, so ``norm5`` has ``passthrough_channels(model)``
    channels that group 4 did not compute, first, and group 4's own after them. A GAP classifier
    over all of them (torchvision's, ``head="gap"``) can read a confounder from the frozen trunk
    whatever Eq. 5 does to group 4's own channels. This variant is the instrument's positive
    control: ``classifier`` is ``Linear(C - P, classes)`` on the pooled channels ``P..C-1``
    (``docs/DECISIONS.md``). Eq. 3-5 still use all of ``norm5``'s channels (group 4's output).
    """

    head = "gap_own"

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102 - as DenseNet.forward, own channels only
        out = torch.nn.functional.relu(self.features(x), inplace=True)
        out = torch.flatten(torch.nn.functional.adaptive_avg_pool2d(out, 1), 1)
        return self.classifier(out[:, passthrough_channels(self):])


def passthrough_channels(model: nn.Module) -> int:
    """Number of pass-through channels of group 4's output (``norm5``): the input channels of
    ``denseblock4`` (``transition3``'s output), which torchvision's dense block concatenates, unchanged,
    before its layers' new features. Group 4's own channels are the rest:
    ``norm5.num_features - passthrough_channels(model)``.

    >>> passthrough_channels(build_model("small", seed=0)), build_model("small", seed=0).features.norm5.num_features
    (16, 32)
    """
    _require_densenet(model)
    first = next(iter(model.features.denseblock4.children()), None)
    if first is None or not hasattr(first, "norm1"):
        raise TypeError(f"expected torchvision dense layers in features.denseblock4, got {type(first).__name__}")
    return int(first.norm1.num_features)


class WeightsUnavailableError(RuntimeError):
    """Pre-trained weights were asked for but are not available offline."""


# --------------------------------------------------------------------------- building


def build_model(arch: str = "densenet121", weights: Weights = None, num_classes: int = 2, *,
                seed: int | None = None, head: str = "gap", input_size: int = 224) -> DenseNet:
    """A torchvision DenseNet with one linear head ``num_features -> num_classes`` (Sec. 3.3).

    Args:
        arch: a key of :data:`ARCHS` (``"densenet121"`` is the paper's; head 1024 -> 2).
        weights: ``None`` or ``"none"`` (random init), ``"imagenet"`` (torchvision's
            ``DenseNet121_Weights.IMAGENET1K_V1`` from the local torch hub cache; densenet121 only)
            or the path of a ``torch.save`` file holding a torchvision ImageNet state dict, a plain
            state dict, or one of our checkpoints (a dict with a ``"model_state"`` key). When the
            file's classifier has another number of outputs than ``num_classes`` (1000 for
            ImageNet) only the features are loaded and the head is new.
        num_classes: outputs of the head (softmax is in the loss).
        seed: makes the random part of the initialisation (all of it, or the new head)
            reproducible without touching the global RNG.
        head: ``"gap"`` (default decision: torchvision's global average pooling, then one linear
            layer ``C -> num_classes``), ``"flatten"`` (the flattened ``C x g x g`` group-4 map
            into the linear layer; :class:`FlattenHeadDenseNet`, fixed ``input_size``) or
            ``"gap_own"`` (GAP, then a linear layer on group 4's own channels only,
            ``C - passthrough_channels -> num_classes``; :class:`OwnChannelsDenseNet`, the positive
            control). A ``"gap_own"`` network given a file with a ``C -> num_classes`` classifier
            takes that classifier's own-channel columns and its bias.
        input_size: ROI side the ``"flatten"`` head is built for (g = 7 at 224).

    >>> build_model("small", seed=0).classifier
    Linear(in_features=32, out_features=2, bias=True)

    Raises:
        ValueError: unknown ``arch``, bad ``num_classes``, ``"imagenet"`` for another arch, or a
            file whose tensors do not fit the model (the message names the keys).
        WeightsUnavailableError: ``"imagenet"`` and no file in the hub cache (never downloads).
        FileNotFoundError: ``weights`` is a path that does not exist.
    """
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; choose one of {sorted(ARCHS)}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise TypeError(f"seed must be an int or None, got {type(seed).__name__}")
    if head not in HEADS:
        raise ValueError(f"head must be one of {HEADS}, got {head!r}")

    def make() -> DenseNet:
        if head == "gap":
            return DenseNet(num_classes=num_classes, **ARCHS[arch])
        if head == "gap_own":
            m = OwnChannelsDenseNet(num_classes=num_classes, **ARCHS[arch])
            m.classifier = nn.Linear(m.classifier.in_features - passthrough_channels(m), num_classes)
            nn.init.constant_(m.classifier.bias, 0)
            return m
        m = FlattenHeadDenseNet(num_classes=num_classes, **ARCHS[arch])
        grid = feature_grid(m, input_size)
        m.classifier = nn.Linear(m.classifier.in_features * grid * grid, num_classes)
        nn.init.constant_(m.classifier.bias, 0)
        return m

    if seed is None:
        model = make()
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = make()

    if weights is None or (isinstance(weights, str) and weights.lower() == "none"):
        return model
    if isinstance(weights, str) and weights.lower() == "imagenet":
        if arch != "densenet121":
            raise ValueError(f"weights='imagenet' exists for arch 'densenet121' only, not {arch!r}")
        path = imagenet_weights_path()
        if not path.is_file():
            raise WeightsUnavailableError(
                f"ImageNet weights not found: expected the file {path.name!r} in {path.parent} "
                f"(torch.hub.get_dir()/checkpoints). Nothing is downloaded. Copy torchvision's "
                f"file there (or set TORCH_HOME), or pass its path instead: "
                f"build_model(weights='/path/to/{path.name}')."
            )
        state = _read_state_dict(path)
    elif isinstance(weights, (str, os.PathLike)):
        path = Path(weights)
        if not path.is_file():
            raise FileNotFoundError(
                f"weights file not found: {path} (weights must be None, 'none', 'imagenet' or the "
                f"path of a .pth/.pt file)"
            )
        state = _read_state_dict(path)
    else:
        raise TypeError(f"weights must be None, 'none', 'imagenet' or a path, got {type(weights).__name__}")
    _load_into(model, state, source=str(path))
    return model


def checkpoint_meta(path: str | os.PathLike) -> dict[str, Any]:
    """What a checkpoint says about how it was made: ``arch``, ``head`` and ``roi_spec`` (ROI size,
    context, intensity scaling, crop variant), those it records (an ImageNet file records none)."""
    try:
        obj = torch.load(Path(path), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as err:  # noqa: BLE001 - any unreadable file: say which
        raise ValueError(f"{path}: cannot be read as a torch checkpoint ({type(err).__name__})") from err
    if not isinstance(obj, Mapping):
        return {}
    return {k: obj[k] for k in ("arch", "head", "roi_spec") if k in obj}


def imagenet_weights_path() -> Path:
    """Where :func:`build_model` looks for the ImageNet weights: ``<torch hub dir>/checkpoints/<file>``."""
    name = os.path.basename(urlparse(DenseNet121_Weights.IMAGENET1K_V1.url).path)
    return Path(torch.hub.get_dir()) / "checkpoints" / name


def _read_state_dict(path: Path) -> dict[str, Tensor]:
    """The model state dict in ``path`` (plain, ``{"model_state": ...}`` or ``{"state_dict": ...}``)."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as err:
        raise ValueError(
            f"{path}: cannot be read as a weights-only torch file ({err.__class__.__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''}). Save plain tensors/dicts only."
        ) from err
    if isinstance(obj, Mapping):
        for key in ("model_state", "state_dict"):
            if key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, Tensor) for v in obj.values()):
        raise ValueError(f"{path}: holds no state dict (expected tensors by name, or a dict with 'model_state')")
    state: dict[str, Tensor] = {}
    for key, value in obj.items():
        if key.startswith("module."):  # saved from DataParallel
            key = key[len("module."):]
        match = _OLD_KEY.match(key)
        state[match.group(1) + match.group(2) if match else key] = value
    return state


def _load_into(model: DenseNet, state: dict[str, Tensor], source: str) -> None:
    """Load ``state`` strictly; a classifier with another output count is replaced by the new head."""
    own = model.state_dict()
    head = model.classifier.weight
    file_head = state.get("classifier.weight")
    if (getattr(model, "head", "gap") == "gap_own" and file_head is not None and file_head.ndim == 2
            and file_head.shape == (head.shape[0], model.features.norm5.num_features)):
        # a GAP classifier over all channels: the own-channel columns are this head's initial weights
        state = {**state, "classifier.weight": file_head[:, passthrough_channels(model):].clone()}
        file_head = state["classifier.weight"]
    if file_head is not None and file_head.ndim == 2 and file_head.shape != head.shape:
        state = {k: v for k, v in state.items() if not k.startswith("classifier.")}
        state.update({k: v for k, v in own.items() if k.startswith("classifier.")})
    # Files saved before BatchNorm counted batches (torchvision's ImageNet file) lack the counter.
    state = {**{k: v for k, v in own.items() if k.endswith(".num_batches_tracked")}, **state}
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                  for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or mismatched:
        parts = []
        if mismatched:
            parts.append(f"shape mismatch in {len(mismatched)} tensors: " + "; ".join(mismatched[:5]))
        if missing:
            parts.append(f"{len(missing)} keys missing from the file: {', '.join(missing[:5])}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys: {', '.join(unexpected[:5])}")
        raise ValueError(f"{source}: does not fit this model ({'; '.join(parts)}); "
                         f"was it saved from another arch?")
    model.load_state_dict(state, strict=True)


# --------------------------------------------------------------------------- training set-up


def set_trainable(model: DenseNet, layers: TrainableSet = "group4+classifier") -> list[str]:
    """Freeze the network except ``layers`` (Sec. 3.3: "group 4 + classifier" = denseblock4, norm5,
    classifier); returns the names of the trainable parameters.

    Frozen BatchNorm statistics are kept by :func:`apply_train_mode`, which the training loop
    calls instead of ``model.train()``.
    """
    if layers not in TRAINABLE_PREFIXES:
        raise ValueError(f"unknown layers {layers!r}; choose one of {TRAINABLE_SETS}")
    _require_densenet(model)
    prefixes = TRAINABLE_PREFIXES[layers]
    names = []
    for name, param in model.named_parameters():
        train = name.startswith(prefixes)
        param.requires_grad_(train)
        if train:
            names.append(name)
    return names


def apply_train_mode(model: nn.Module) -> None:
    """``model.train()``, then every BatchNorm whose affine parameters are all frozen back to eval,
    so frozen layers' running statistics never change (Sec. 3.3, "BatchNorm statistics too").

    A BatchNorm without affine parameters follows ``model.train()``.
    """
    model.train()
    for module in model.modules():
        if isinstance(module, _BatchNorm):
            params = list(module.parameters(recurse=False))
            if params and not any(p.requires_grad for p in params):
                module.eval()


@contextmanager
def preserve_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Context manager restoring the ``training`` flag of every submodule on exit (even on error)."""
    flags = [(m, m.training) for m in model.modules()]
    try:
        yield model
    finally:
        for module, flag in flags:
            module.training = flag


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """``model.eval()`` inside the block; every submodule's own train/eval flag restored on exit
    (even on error), e.g. frozen BatchNorms in eval inside a training model (Sec. 4.3).

    >>> m = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2)); _ = m[1].eval()
    >>> with eval_mode(m):
    ...     m.training, m[1].training
    (False, False)
    >>> m.training, m[0].training, m[1].training
    (True, True, False)
    """
    with preserve_mode(model):
        model.eval()
        yield model


def _home_device(model: nn.Module, default: torch.device) -> torch.device:
    """Device of the first parameter (or buffer) of ``model``; ``default`` for a model with none."""
    return next((t.device for t in (*model.parameters(), *model.buffers())), default)


@contextmanager
def on_device(model: nn.Module, device: str | torch.device) -> Iterator[nn.Module]:
    """Move ``model`` to ``device`` inside the block and back to the device it was on at entry on
    exit (even on error), so a caller's model is left where the caller put it. Nothing moves when
    it is already there; a model without parameters or buffers is not moved.

    >>> m = nn.Linear(2, 2)
    >>> with on_device(m, "cpu") as same:  # e.g. "cuda" in a caller that got a CPU model
    ...     same is m, m.weight.device.type
    (True, 'cpu')
    """
    device = torch.device(device)
    home = _home_device(model, device)
    moved = home != device
    if moved:
        model.to(device)
    try:
        yield model
    finally:
        if moved:
            model.to(home)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (only those with ``requires_grad`` when ``trainable_only``)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def feature_grid(model: DenseNet, input_size: int) -> int:
    """Side of the square group-4 map for a ``input_size`` square input (7 at 224, Sec. 4.2).

    Found by a no-grad forward of one zero image through ``model.features`` in eval mode (so no
    BatchNorm statistic moves); the model's modes are restored.
    """
    if isinstance(input_size, bool) or not isinstance(input_size, int) or input_size < 1:
        raise ValueError(f"input_size must be a positive int, got {input_size!r}")
    _require_densenet(model)
    ref = next(model.parameters())
    x = torch.zeros(1, 3, input_size, input_size, dtype=ref.dtype, device=ref.device)
    with eval_mode(model), torch.no_grad():
        try:
            out = model.features(x)
        except RuntimeError as err:
            raise ValueError(f"input_size {input_size} is too small for this network: {err}") from err
    return int(out.shape[-1])


def _require_densenet(model: nn.Module) -> None:
    if not (hasattr(model, "features") and hasattr(model, "classifier")
            and hasattr(model.features, "denseblock4") and hasattr(model.features, "norm5")):
        raise TypeError(f"expected a torchvision DenseNet (features.denseblock4, features.norm5, "
                        f"classifier), got {type(model).__name__}")


# --------------------------------------------------------------------------- inputs


def to_model_input(x: Tensor) -> Tensor:
    """Grey ROIs ``(N,H,W)`` or ``(N,1,H,W)`` in [0, 1] -> ``(N,3,H,W)`` with ImageNet mean/std,
    float32 cast up to the run's precision (:func:`mammo_lib.utils.precision.widen`)."""
    if not isinstance(x, Tensor):
        raise TypeError(f"expected a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"expected a float tensor in [0, 1], got {x.dtype} (divide integer images "
                        f"by their maximum first; masks go through mask_to_model_input)")
    x = widen(x)
    if x.ndim == 3:
        x = x.unsqueeze(1)
    if x.ndim != 4 or x.shape[1] != 1:
        raise ValueError(f"expected grey images (N,H,W) or (N,1,H,W), got shape {tuple(x.shape)}")
    if x.numel():
        lo, hi = float(x.min()), float(x.max())
        if lo < -_RANGE_TOLERANCE or hi > 1 + _RANGE_TOLERANCE:
            raise ValueError(f"expected grey values in [0, 1], got min {lo:g}, max {hi:g}")
    mean = torch.tensor(IMAGENET_MEAN, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x.expand(-1, 3, -1, -1) - mean) / std


def mask_to_model_input(m: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """Binary masks ``(N,H,W)`` / ``(N,1,H,W)`` (uint8, bool or float in {0, 1}) as images (Sec. 4.1):
    {0, 1} -> {0, 255} -> /255, three channels, the ROIs' ImageNet normalisation."""
    if not isinstance(m, Tensor):
        raise TypeError(f"expected a torch.Tensor, got {type(m).__name__}")
    if m.is_complex():
        raise TypeError(f"masks must be real, got {m.dtype}")
    if m.numel() and not bool(((m == 0) | (m == 1)).all()):
        raise ValueError(f"masks must hold only 0 and 1, got values {torch.unique(m)[:6].tolist()}")
    image = (m.to(dtype) * 255.0) / 255.0
    return to_model_input(image)
