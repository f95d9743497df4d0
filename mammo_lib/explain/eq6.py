"""The proposed explanation of a prediction: *Lesion* / *Background* cells (Sec. 4.2, Fig. 5, Eq. 6).

Step 1 (:func:`lesion_background`, Sec. 4.2 with Eq. 1-2): the GLCM variance map of the ROI
says where the ROI is *Lesion*; *Background* is the rest of the ROI. By default the two are
complementary parts of the ROI (``ROI = Lesion + Background``, rule ``"soft"``; see
:data:`DEFAULT_BACKGROUND_RULE` and ``docs/DECISIONS.md``).
Step 2 (:func:`window_grid`): the group-4 activation grid (g x g, 7 x 7 at 224 px) cuts the
S x S ROI into g^2 projection windows of (S/g) x (S/g); for each window (p, q) the inputs
``ROI_L(p,q)`` and ``ROI_B(p,q)`` are the ROI with that window replaced by *Lesion*'s or
*Background*'s pixels.
Step 3 (:func:`explain_roi`, Eq. 6): with ``A``, ``A^L``, ``A^B`` the (C, g, g) group-4
activations of the ROI and of the two replaced inputs,
``dis^L_{p,q} = (1/g^2) sum_n ||A_n - A^L_n||_2`` (l2 over channels, mean over the g^2 positions
n), likewise ``dis^B``; cell (p, q) is *Lesion* where ``dis^L < dis^B``, else *Background*
(so a tie is *Background*, ``docs/DECISIONS.md``).

The explanation's sanity measures (how far the labels only follow the pixel change of the
replacement, model randomisation) are in :mod:`mammo_lib.explain.sanity`.
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from mammo_lib.utils.progress import tqdm
from mammo_lib.utils.files import write_json
from mammo_lib.networks.activation import GroupActivations, activation_map
from mammo_lib.explain.glcm import MeanForm, check_grey_image, glcm_variance_map
from mammo_lib.networks.densenet import eval_mode, on_device, to_model_input
from mammo_lib.data.records import LABEL_NAMES, DataError

#: Cell labels of Eq. 6.
LESION, BACKGROUND = "Lesion", "Background"

#: ``background_rule`` values of :func:`lesion_background` (Sec. 4.2, ``docs/DECISIONS.md``):
#: ``"soft"`` and ``"otsu"`` split the ROI into complementary parts (``Lesion + Background = ROI``);
#: ``"subtract_clip"`` is the former rule (variance stretched to the ROI's range, Background the
#: clipped difference); ``"difference"`` is its legacy variant without rescaling.
BackgroundRule = Literal["soft", "otsu", "subtract_clip", "difference", "unit_difference"]
# BACKGROUND_RULES, BACKGROUND_RULE_ALIASES and DEFAULT_BACKGROUND_RULE live in mammo_lib.utils.options
# (importable without torch: the command line lists them).
from mammo_lib.utils.options import BACKGROUND_RULE_ALIASES, BACKGROUND_RULES, DEFAULT_BACKGROUND_RULE  # noqa: E402

#: Default percentile of the variance map that maps to full *Lesion* weight in rule ``"soft"``.
DEFAULT_SOFT_PERCENTILE = 99.0

#: ``layer_fn(model, grey)`` -> ``(logits (N,K), A (N,C,g,g))``; ``grey`` is an ``(N,S,S)`` float
#: tensor in [0, 1] on the model's device. Replaces the default DenseNet group-activation read-out.
LayerFn = Callable[[nn.Module, Tensor], tuple[Tensor, Tensor]]

_JSON_KEYS = ("prediction", "probabilities", "label_names", "activation_map", "dis_lesion",
              "dis_background", "cell_labels", "window", "grid", "params")
#: Keys that files written before they existed lack (read as empty).
_OPTIONAL_JSON_KEYS = ("sanity",)


# --------------------------------------------------------------------------- step 1


def canonical_background_rule(rule: str | None) -> str:
    """``rule`` under its canonical name (``None`` -> :data:`DEFAULT_BACKGROUND_RULE`).

    >>> canonical_background_rule("unit_difference")
    'subtract_clip'

    Raises:
        ValueError: ``rule`` is not a value of :data:`BACKGROUND_RULES` nor a known alias.
    """
    if rule is None:
        rule = DEFAULT_BACKGROUND_RULE
    rule = BACKGROUND_RULE_ALIASES.get(rule, rule) if isinstance(rule, str) else rule
    if rule not in BACKGROUND_RULES:
        raise ValueError(f"background_rule must be one of {BACKGROUND_RULES} (or an alias in "
                         f"{sorted(BACKGROUND_RULE_ALIASES)}), got {rule!r}")
    return rule


def lesion_background(roi: np.ndarray, *, levels: int = 8, window: int = 5, distance: int = 1,
                      angle: float = 0.0, mean: MeanForm = "paper",
                      background_rule: BackgroundRule | None = None,
                      soft_percentile: float = DEFAULT_SOFT_PERCENTILE
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Step 1 of Sec. 4.2: the *Lesion* and *Background* images of one ROI.

    The paper (Sec. 4.2, Eq. 1-2) takes the GLCM variance image as *Lesion* ("increases the
    contrast between mass and no-mass area") and *Background* as "the remaining information ...
    excluded by the Lesion from the ROI"; the two "divide the ROI into mass area and no-mass
    area". With ``v`` = :func:`~mammo_lib.explain.glcm.glcm_variance_map` (GLCM arguments as there),
    ``background_rule`` (default :data:`DEFAULT_BACKGROUND_RULE`; ``docs/DECISIONS.md``) is:

    - ``"soft"`` (the default): weight ``w = clip(v / P, 0, 1)`` with ``P`` the ``soft_percentile``-th
      percentile of ``v`` (the maximum if that percentile is 0);
      ``Lesion = w * ROI``, ``Background = (1 - w) * ROI``;
    - ``"otsu"``: hard split, ``w = 1`` where ``v`` exceeds the Otsu threshold of ``v``
      (:func:`skimage.filters.threshold_otsu`), else 0; products as in ``"soft"``;
    - ``"subtract_clip"`` (alias ``"unit_difference"``, the former default): *Lesion* is ``v``
      linearly rescaled to ``[roi.min(), roi.max()]`` (a constant ``v`` gives ``roi.min()``) and
      ``Background = clip(u(ROI) - u(Lesion), 0)`` with ``u`` the min-max rescaling to [0, 1];
    - ``"difference"`` (legacy): as ``"subtract_clip"`` but ``clip(ROI - Lesion, 0)``.

    ``"soft"`` and ``"otsu"`` are complementary: ``Lesion + Background = ROI`` exactly (up to
    float32 rounding), no clipping, and each pixel of both lies between 0 and the ROI's pixel,
    so both stay in the ROI's range ``[0, roi.max()]``. For both, a constant variance map (a flat
    ROI) has no mass / no-mass contrast and gives ``w = 0``: Lesion all 0, Background = ROI.

    >>> roi = np.tile(np.linspace(0, 1, 16, dtype=np.float32), (16, 1))
    >>> lesion, background = lesion_background(roi, background_rule="soft")
    >>> bool(np.allclose(lesion + background, roi, atol=1e-6))
    True

    Returns:
        ``(lesion, background)``, float32 arrays of the ROI's shape.

    Raises:
        ValueError: unknown ``background_rule``, ``soft_percentile`` outside (0, 100], or a
            ROI that is not a 2-D float image in [0, 1].
    """
    rule = canonical_background_rule(background_rule)
    _check_percentile(soft_percentile)
    roi = check_grey_image(roi, "roi")
    variance = glcm_variance_map(roi, levels=levels, window=window, distance=distance, angle=angle,
                                 mean=mean)
    return split_roi(roi, variance, rule, soft_percentile)


def _check_percentile(soft_percentile: float) -> None:
    if isinstance(soft_percentile, bool) or not isinstance(soft_percentile, (int, float, np.number)) \
            or not 0.0 < float(soft_percentile) <= 100.0:
        raise ValueError(f"soft_percentile must be a number in (0, 100], got {soft_percentile!r}")


def lesion_weight(variance: np.ndarray, rule: str,
                  soft_percentile: float = DEFAULT_SOFT_PERCENTILE) -> np.ndarray:
    """The per-pixel *Lesion* weight ``w`` in [0, 1] of the complementary rules ``"soft"`` and
    ``"otsu"`` (see :func:`lesion_background`), float64 of the variance map's shape; all 0 for a
    constant map.

    >>> lesion_weight(np.array([[0.0, 1.0], [2.0, 4.0]]), "soft", 100).tolist()
    [[0.0, 0.25], [0.5, 1.0]]
    """
    v = np.asarray(variance, dtype=np.float64)
    if rule not in ("soft", "otsu"):
        raise ValueError(f"lesion_weight is defined for the rules 'soft' and 'otsu', got {rule!r}")
    if float(v.max()) == float(v.min()):  # no contrast: nothing is Lesion
        return np.zeros_like(v)
    if rule == "soft":
        _check_percentile(soft_percentile)
        scale = float(np.percentile(v, soft_percentile))
        if scale <= 0:  # most of the map is 0: fall back to its maximum
            scale = float(v.max())
        return np.clip(v / scale, 0.0, 1.0) if scale > 0 else np.zeros_like(v)
    from skimage.filters import threshold_otsu

    return (v > threshold_otsu(v)).astype(np.float64)


def split_roi(roi: np.ndarray, variance: np.ndarray, rule: str,
               soft_percentile: float = DEFAULT_SOFT_PERCENTILE) -> tuple[np.ndarray, np.ndarray]:
    """Step 1 from a ready variance map; ``rule`` canonical (see :func:`lesion_background`)."""
    r = roi.astype(np.float64)
    if rule in ("soft", "otsu"):
        w = lesion_weight(variance, rule, soft_percentile)
        lesion = w * r
        background = r - lesion  # = (1 - w) * ROI, exactly complementary
        return lesion.astype(np.float32), background.astype(np.float32)
    lo, hi = float(r.min()), float(r.max())
    lesion = lo + unit_range(np.asarray(variance, dtype=np.float64)) * (hi - lo)
    if rule == "subtract_clip":
        background = np.clip(unit_range(r) - unit_range(lesion), 0.0, None)
    else:  # "difference"
        background = np.clip(r - lesion, 0.0, None)
    return lesion.astype(np.float32), background.astype(np.float32)


def unit_range(x: np.ndarray) -> np.ndarray:
    """Min-max rescaling to [0, 1]; a constant array becomes zeros."""
    lo, span = float(x.min()), float(x.max() - x.min())
    return (x - lo) / span if span > 0 else np.zeros_like(x)


# --------------------------------------------------------------------------- step 2


def window_grid(size: int, grid: int) -> list[tuple[int, int, slice, slice]]:
    """Step 2: the g x g projection windows of an S x S ROI, row by row (Sec. 4.2, Fig. 5).

    Returns ``(p, q, rows, cols)`` for p, q = 0..grid-1 (0-based), ``roi[rows, cols]`` being
    window (p, q); the windows tile the ROI exactly (224 with grid 7 -> 49 windows of 32 x 32).

    Raises:
        ValueError: ``size`` is not a multiple of ``grid`` (the message names sizes that work).
    """
    for name, v in (("size", size), ("grid", grid)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    if size % grid:
        below = (size // grid) * grid
        options = ", ".join(str(s) for s in (below, below + grid) if s > 0)
        raise ValueError(f"ROI size {size} is not a multiple of the activation grid {grid}: the "
                         f"projection windows would not tile it; use a size that is a multiple "
                         f"of {grid} (e.g. {options})")
    w = size // grid
    return [(p, q, slice(p * w, (p + 1) * w), slice(q * w, (q + 1) * w))
            for p in range(grid) for q in range(grid)]


# --------------------------------------------------------------------------- result


@dataclass
class Explanation:
    """Explanation of one ROI's prediction (Sec. 4.2, Eq. 6).

    Attributes:
        prediction: predicted class (argmax of ``probabilities``).
        probabilities: softmax of the logits of the unmodified ROI, ``(K,)``.
        label_names: class names, ``label_names[prediction]`` is the predicted one.
        activation_map: ``F^4`` (Eq. 3) of the unmodified ROI, ``(g, g)``.
        dis_lesion, dis_background: ``dis^L``, ``dis^B`` of Eq. 6, ``(g, g)``.
        cell_labels: ``"Lesion"`` where ``dis^L < dis^B`` else ``"Background"``, ``(g, g)``.
        window: side of a projection window in ROI pixels (S / g).
        grid: g.
        params: the settings that produced it (GLCM parameters, background rule, group, ...).
        sanity: sanity measures of this explanation (:mod:`mammo_lib.explain.sanity`), e.g.
            ``{"pixel_change_agreement": 0.5}`` from :func:`explain_roi`; empty when unknown
            (files written before it existed).
    """

    prediction: int
    probabilities: np.ndarray
    label_names: tuple[str, ...]
    activation_map: np.ndarray
    dis_lesion: np.ndarray
    dis_background: np.ndarray
    cell_labels: np.ndarray
    window: int
    grid: int
    params: dict[str, Any] = field(default_factory=dict)
    sanity: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.prediction = int(self.prediction)
        self.sanity = {} if self.sanity is None else dict(self.sanity)
        self.window, self.grid = int(self.window), int(self.grid)
        self.probabilities = np.asarray(self.probabilities, dtype=np.float64)
        self.label_names = tuple(str(n) for n in self.label_names)
        self.cell_labels = np.asarray(self.cell_labels, dtype=str)
        g = (self.grid, self.grid)
        for name in ("activation_map", "dis_lesion", "dis_background"):
            setattr(self, name, np.asarray(getattr(self, name), dtype=np.float64))
        for name in ("activation_map", "dis_lesion", "dis_background", "cell_labels"):
            if getattr(self, name).shape != g:
                raise ValueError(f"{name} must have shape {g}, got {getattr(self, name).shape}")
        if not np.isin(self.cell_labels, (LESION, BACKGROUND)).all():
            raise ValueError(f"cell_labels must hold only {LESION!r} and {BACKGROUND!r}")
        if self.probabilities.ndim != 1 or len(self.probabilities) != len(self.label_names):
            raise ValueError(f"{len(self.label_names)} label names for probabilities of shape "
                             f"{self.probabilities.shape}")
        if not 0 <= self.prediction < len(self.label_names):
            raise ValueError(f"prediction {self.prediction} is not a class index of {self.label_names}")

    @property
    def predicted_label(self) -> str:
        """Name of the predicted class."""
        return self.label_names[self.prediction]

    @property
    def lesion_fraction(self) -> float:
        """Share of the g^2 cells labelled *Lesion*."""
        return float(np.mean(self.cell_labels == LESION))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (arrays as nested lists)."""
        return {
            "prediction": self.prediction,
            "probabilities": self.probabilities.tolist(),
            "label_names": list(self.label_names),
            "activation_map": self.activation_map.tolist(),
            "dis_lesion": self.dis_lesion.tolist(),
            "dis_background": self.dis_background.tolist(),
            "cell_labels": self.cell_labels.tolist(),
            "window": self.window,
            "grid": self.grid,
            "params": _jsonable(self.params),
            "sanity": _jsonable(self.sanity),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Explanation":
        """Inverse of :meth:`to_dict` (a dict without the later ``"sanity"`` key reads as empty)."""
        missing = [k for k in _JSON_KEYS if k not in d]
        if missing:
            raise ValueError(f"not an Explanation: missing keys {missing}")
        return cls(**{k: d[k] for k in _JSON_KEYS}, **{k: d[k] for k in _OPTIONAL_JSON_KEYS if k in d})

    def to_json(self, path: str | os.PathLike) -> Path:
        """Write :meth:`to_dict` to ``path`` atomically (:func:`mammo_lib.utils.files.write_json`)."""
        return write_json(path, self.to_dict())

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> "Explanation":
        """Read a file written by :meth:`to_json` (a bad file raises :class:`DataError` naming it)."""
        try:
            with open(path, encoding="utf-8") as fh:
                d = json.load(fh)
            if not isinstance(d, dict):
                raise ValueError("expected a JSON object")
            return cls.from_dict(d)
        except (ValueError, TypeError) as err:  # json.JSONDecodeError is a ValueError
            raise DataError(f"cannot read an Explanation: {err}", path) from err


def _jsonable(obj: Any) -> Any:
    """``obj`` with numpy scalars/arrays and tuples turned into JSON types."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


# --------------------------------------------------------------------------- step 3


def default_label_names(k: int) -> tuple[str, ...]:
    """Class names of a ``k``-output model: ``records.LABEL_NAMES`` in label order for 2 classes,
    else ``"class 0"``, ``"class 1"``, ..."""
    if k == len(LABEL_NAMES):
        return tuple(LABEL_NAMES[i] for i in sorted(LABEL_NAMES))
    return tuple(f"class {i}" for i in range(k))


def classify_cells(dis_lesion: np.ndarray, dis_background: np.ndarray) -> np.ndarray:
    """Eq. 6 decision: ``"Lesion"`` where ``dis^L < dis^B``, else ``"Background"`` (ties too)."""
    return np.where(np.asarray(dis_lesion) < np.asarray(dis_background), LESION, BACKGROUND)


def explain_roi(model: nn.Module, roi: np.ndarray, *, lesion: np.ndarray | None = None,
                background: np.ndarray | None = None, batch_size: int = 16,
                device: str | torch.device = "cpu", levels: int = 8, window: int = 5,
                distance: int = 1, angle: float = 0.0, mean: MeanForm = "paper",
                background_rule: BackgroundRule | None = None,
                soft_percentile: float = DEFAULT_SOFT_PERCENTILE, group: int = 4,
                label_names: Sequence[str] | None = None, layer_fn: LayerFn | None = None,
                progress: bool = False) -> Explanation:
    """The proposed explanation of one ROI (Sec. 4.2, Fig. 5, Eq. 6).

    Runs ``1 + 2 g^2`` inputs through ``model`` (the ROI, then ``ROI_L(p,q)`` for every window in
    row order, then ``ROI_B(p,q)``) in eval mode under ``torch.inference_mode``, ``batch_size``
    at a time after the ROI alone, and compares their group activations by Eq. 6. The grid g is
    the spatial size of the ROI's own activation (never assumed; 7 for DenseNet121 at 224 px).
    The model's training flags, hooks and ``requires_grad`` flags are as before afterwards, and
    so is its device (it is moved to ``device`` for the run if needed).

    Args:
        model: a torchvision DenseNet (group activation read with :class:`GroupActivations`),
            or any module when ``layer_fn`` is given.
        roi: ``(S, S)`` grey ROI in [0, 1]; S must be a multiple of g.
        lesion, background: the step-1 images (both or neither); by default
            :func:`lesion_background` of the ROI with ``levels``, ``window``, ``distance``,
            ``angle``, ``mean``, ``background_rule`` (default :data:`DEFAULT_BACKGROUND_RULE`)
            and ``soft_percentile``. ``params["background_rule"]`` records the canonical rule,
            or ``"given"`` when the images are given.
        batch_size: inputs per forward (results do not depend on it).
        device: where to run.
        group: the activation group of Eq. 6 (the paper uses 4).
        label_names: class names (default ``records.LABEL_NAMES`` order for 2 classes).
        layer_fn: ``layer_fn(model, grey) -> (logits (N,K), A (N,C,g,g))`` replacing the
            DenseNet read-out; ``grey`` is the ``(N,S,S)`` float32 batch in [0, 1] on ``device``.
        progress: show a progress bar over batches.

    The result's ``sanity["pixel_change_agreement"]`` is the share of cells whose Eq. 6 label
    equals the one of "the replacement that changes fewer pixels"
    (:func:`pixel_change_agreement`); near 1 means the labels say little
    about the network.

    >>> from mammo_lib.networks.densenet import build_model
    >>> roi = np.random.default_rng(0).random((64, 64)).astype(np.float32)
    >>> e = explain_roi(build_model("small", seed=0), roi)
    >>> e.grid, e.params["background_rule"], sorted(e.sanity)
    (2, 'soft', ['pixel_change_agreement'])
    """
    roi = check_grey_image(roi, "roi")
    if roi.shape[0] != roi.shape[1]:
        raise ValueError(f"roi must be square (S, S), got {roi.shape}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if (lesion is None) != (background is None):
        raise ValueError("give both lesion and background, or neither (then both come from the GLCM)")
    params: dict[str, Any] = {"group": group, "roi_size": roi.shape[0]}
    if lesion is None:
        rule = canonical_background_rule(background_rule)
        lesion, background = lesion_background(roi, levels=levels, window=window, distance=distance,
                                               angle=angle, mean=mean, background_rule=rule,
                                               soft_percentile=soft_percentile)
        params.update(lesion_source="glcm", glcm_levels=levels, glcm_window=window,
                      glcm_distance=distance, glcm_angle=float(angle), glcm_mean=mean,
                      background_rule=rule)
        if rule == "soft":
            params["soft_percentile"] = float(soft_percentile)
    else:
        params.update(lesion_source="given", background_rule="given")
        for name, img in (("lesion", lesion), ("background", background)):
            check_grey_image(img, name)
            if img.shape != roi.shape:
                raise ValueError(f"{name} shape {img.shape} differs from roi shape {roi.shape}")
    if layer_fn is not None:
        params["layer_fn"] = getattr(layer_fn, "__name__", type(layer_fn).__name__)

    device = torch.device(device)
    grey = torch.from_numpy(np.stack([roi, lesion, background]).astype(np.float32)).to(device)
    with on_device(model, device), eval_mode(model), torch.inference_mode():
        if layer_fn is None:
            with GroupActivations(model, groups=(group,), mode="eval", detach=True) as acts:
                def forward(x: Tensor) -> tuple[Tensor, Tensor]:
                    logits = model(to_model_input(x))
                    return logits, acts[group]
                result = _run_eq6(forward, grey, batch_size, progress)
        else:
            result = _run_eq6(lambda x: layer_fn(model, x), grey, batch_size, progress)

    probabilities, f4, dis_l, dis_b, grid = result
    if label_names is None:
        label_names = default_label_names(len(probabilities))
    if len(label_names) != len(probabilities):
        raise ValueError(f"{len(label_names)} label names for a model with {len(probabilities)} outputs")
    explanation = Explanation(prediction=int(np.argmax(probabilities)), probabilities=probabilities,
                              label_names=tuple(label_names), activation_map=f4, dis_lesion=dis_l,
                              dis_background=dis_b, cell_labels=classify_cells(dis_l, dis_b),
                              window=roi.shape[0] // grid, grid=grid, params=params)
    explanation.sanity["pixel_change_agreement"] = pixel_change_agreement(explanation, roi, lesion, background)
    return explanation


def _run_eq6(forward: Callable[[Tensor], tuple[Tensor, Tensor]], grey: Tensor, batch_size: int,
             progress: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """Forward the ROI, then the 2 g^2 replaced inputs in batches; Eq. 6 distances.

    ``grey`` stacks (ROI, Lesion, Background). Returns probabilities, F^4, dis^L, dis^B, g.
    """
    roi, sources = grey[0], grey[1:]
    size = roi.shape[-1]
    logits, a = forward(roi[None])
    if logits.ndim != 2 or logits.shape[0] != 1:
        raise ValueError(f"the model must return logits (N, K), got shape {tuple(logits.shape)}")
    if a.ndim != 4 or a.shape[0] != 1 or a.shape[-1] != a.shape[-2]:
        raise ValueError(f"group activation must be (N, C, g, g), got shape {tuple(a.shape)}")
    grid = int(a.shape[-1])
    windows = window_grid(size, grid)
    a_ref = a[0].double()
    probabilities = torch.softmax(logits[0].double(), dim=0).cpu().numpy()
    f4 = activation_map(a.double())[0].cpu().numpy()

    n_cells = grid * grid
    n_items = 2 * n_cells  # items k < g^2: ROI_L(window k); else ROI_B(window k - g^2)
    dist = np.empty(n_items, dtype=np.float64)
    starts = range(0, n_items, batch_size)
    for start in tqdm(starts, desc="explain (Eq. 6)", disable=not progress):
        stop = min(start + batch_size, n_items)
        batch = roi.expand(stop - start, size, size).clone()
        for i, k in enumerate(range(start, stop)):
            kind, cell = divmod(k, n_cells)
            _, _, rows, cols = windows[cell]
            batch[i, rows, cols] = sources[kind, rows, cols]
        _, a_batch = forward(batch)
        if a_batch.shape[1:] != a.shape[1:] or a_batch.shape[0] != stop - start:
            raise ValueError(f"group activation shape changed from {tuple(a.shape[1:])} to "
                             f"{tuple(a_batch.shape)} within one ROI")
        # Eq. 6: l2 over channels at every position n, then the mean over the g^2 positions.
        d = torch.linalg.vector_norm(a_batch.double() - a_ref, ord=2, dim=1).mean(dim=(-2, -1))
        dist[start:stop] = d.cpu().numpy()
    return (probabilities, f4, dist[:n_cells].reshape(grid, grid),
            dist[n_cells:].reshape(grid, grid), grid)


def explain_many(model: nn.Module, rois: np.ndarray | Iterable[np.ndarray], *, progress: bool = True,
                 **kwargs: Any) -> list[Explanation]:
    """:func:`explain_roi` for each ROI of an ``(N, S, S)`` array or iterable (same keyword
    arguments, except ``lesion``/``background``, which are computed per ROI)."""
    for key in ("lesion", "background"):
        if key in kwargs:
            raise TypeError(f"explain_many computes {key} per ROI; call explain_roi to give one")
    items = list(rois)
    return [explain_roi(model, np.asarray(r), progress=False, **kwargs)
            for r in tqdm(items, desc="explanations", disable=not progress)]


def lesion_agreement(explanation: Explanation, mask: np.ndarray, *, min_cover: float = 0.25) -> dict[str, float]:
    """Beyond the paper: do the *Lesion* cells lie on the mass? (ground truth known on the phantom)

    A cell is a *mass cell* when at least ``min_cover`` of its window lies inside ``mask``.
    Returns ``p_lesion_on_mass`` = P(cell labelled Lesion | mass cell), ``p_lesion_off_mass`` =
    P(Lesion | other cell) (NaN when a kind of cell is absent), ``lesion_fraction`` and the cell counts.
    An explanation whose labels follow the mass has ``p_lesion_on_mass > p_lesion_off_mass``.
    """
    m = np.asarray(mask)
    g, w = explanation.grid, explanation.window
    if m.shape != (g * w, g * w):
        raise ValueError(f"mask shape {m.shape} does not match the explanation's {g}x{g} grid of {w} px windows")
    if not 0.0 < min_cover <= 1.0:
        raise ValueError(f"min_cover must be in (0, 1], got {min_cover}")
    cover = (m > 0).reshape(g, w, g, w).mean(axis=(1, 3))
    on = cover >= min_cover
    lesion = np.asarray(explanation.cell_labels) == LESION
    return {
        "p_lesion_on_mass": float(lesion[on].mean()) if on.any() else float("nan"),
        "p_lesion_off_mass": float(lesion[~on].mean()) if (~on).any() else float("nan"),
        "lesion_fraction": float(lesion.mean()),
        "mass_cells": int(on.sum()), "other_cells": int((~on).sum()),
    }


# --------------------------------------------------------------------------- pixel change
def pixel_change_labels(roi: np.ndarray, lesion: np.ndarray, background: np.ndarray,
                        grid: int) -> np.ndarray:
    """The trivial predictor of Eq. 6: per cell, the replacement that changes the pixels less.

    Cell (p, q) of the ``grid`` x ``grid`` projection windows (:func:`~mammo_lib.explain.eq6.window_grid`)
    is ``"Lesion"`` where ``||ROI_cell - Lesion_cell||_2 < ||ROI_cell - Background_cell||_2``,
    else ``"Background"`` (a tie is *Background*, Eq. 6's tie rule).

    >>> roi = np.full((4, 4), 0.5, np.float32); roi[:2, :2] = 0.9
    >>> pixel_change_labels(roi, np.full((4, 4), 0.8, np.float32), np.full((4, 4), 0.3, np.float32), 2).tolist()
    [['Lesion', 'Background'], ['Background', 'Background']]

    Returns:
        ``(grid, grid)`` array of ``"Lesion"`` / ``"Background"``.

    Raises:
        ValueError: images not of one square shape, or a size that ``grid`` does not divide.
    """
    imgs = [np.asarray(check_grey_image(np.asarray(a), n), dtype=np.float64)
            for a, n in ((roi, "roi"), (lesion, "lesion"), (background, "background"))]
    r, lesion_, background_ = imgs
    if r.shape[0] != r.shape[1]:
        raise ValueError(f"roi must be square (S, S), got {r.shape}")
    for name, img in (("lesion", lesion_), ("background", background_)):
        if img.shape != r.shape:
            raise ValueError(f"{name} shape {img.shape} differs from roi shape {r.shape}")
    window_grid(r.shape[0], grid)  # validates grid and divisibility
    w = r.shape[0] // grid

    def cell_norm(d: np.ndarray) -> np.ndarray:
        return np.sqrt((d.reshape(grid, w, grid, w) ** 2).sum(axis=(1, 3)))

    return classify_cells(cell_norm(r - lesion_), cell_norm(r - background_))


def pixel_change_agreement(explanation: Explanation, roi: np.ndarray, lesion: np.ndarray,
                           background: np.ndarray) -> float:
    """Share of cells whose Eq. 6 label equals :func:`pixel_change_labels`' (1.0: the labels
    only say which replacement changes fewer pixels).

    >>> from mammo_lib.explain.eq6 import explain_roi
    >>> from mammo_lib.networks.densenet import build_model
    >>> roi = np.random.default_rng(0).random((64, 64)).astype(np.float32)
    >>> lesion, background = roi * 0.5, roi * 0.5
    >>> e = explain_roi(build_model("small", seed=0), roi, lesion=lesion, background=background)
    >>> pixel_change_agreement(e, roi, lesion, background)  # ties everywhere: all Background
    1.0
    """
    size = explanation.grid * explanation.window
    if np.shape(roi) != (size, size):
        raise ValueError(f"roi shape {np.shape(roi)} does not match the explanation's "
                         f"{explanation.grid}x{explanation.grid} grid of {explanation.window} px windows")
    trivial = pixel_change_labels(roi, lesion, background, explanation.grid)
    return float(np.mean(np.asarray(explanation.cell_labels) == trivial))
