"""One interface for every explainer: configure once, call per ROI, get an :class:`Attribution`.

As in captum (one ``attribute(...)`` for every method) and MONAI (``OcclusionSensitivity(nn_module=model)``
then ``occ(x)``), an explainer is built with the model and its settings, and then called:

>>> from mammo_lib.networks.densenet import build_model
>>> import numpy as np
>>> model = build_model("small", seed=0)
>>> rois = np.random.default_rng(0).random((2, 64, 64)).astype(np.float32)
>>> eq6 = Eq6Explainer(model)                          # the proposed explanation (Eq. 6)
>>> cam = CamExplainer(model, method="gradcam")        # Grad-CAM (ref. [49])
>>> [a.method for a in (eq6(rois[0]), cam(rois[0]))]
['eq6', 'gradcam']
>>> [a.evidence.shape for a in cam.attribute(rois)]
[(64, 64), (64, 64)]

Every explainer returns the same :class:`Attribution` per ROI: the model's prediction and
probabilities, and whatever kind of evidence the method gives, each ``None`` where it has none:

- ``evidence``: a map, larger = more evidence (Eq. 6: ``dis^B - dis^L`` per cell of the g x g
  grid, positive where the cell is *Lesion*; Grad-CAM / HiResCAM: the class map at ROI size);
- ``labels``: categorical cell labels (Eq. 6: ``"Lesion"`` / ``"Background"``);
- ``neighbours``, ``neighbour_labels``: the nearest training cases (kNN, Fig. 8c, ref. [51]).

``detail`` keeps the method's own result (the :class:`~mammo_lib.explain.eq6.Explanation`, the
kNN table). :meth:`Explainer.with_model` gives the same explainer for another network, which is
how :func:`mammo_lib.explain.sanity.randomisation_table` applies the model-randomisation check to
any explainer, and :func:`similarity` compares two attributions of one ROI whatever their kind.
"""
from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import torch
from torch import nn

from mammo_lib.engines.training import predict
from mammo_lib.explain.cam import CamMethod, TargetLayer, cam_map
from mammo_lib.explain.eq6 import (DEFAULT_SOFT_PERCENTILE, BackgroundRule, Explanation, default_label_names,
                                   explain_roi)
from mammo_lib.explain.glcm import MeanForm, check_grey_image
from mammo_lib.explain.knn import Metric, knn_explain, penultimate_features


@dataclass
class Attribution:
    """One explainer's answer for one ROI (fields a method does not give are ``None``).

    Attributes:
        method: the explainer's name (``"eq6"``, ``"gradcam"``, ``"hirescam"``, ``"knn"``).
        prediction: the model's predicted class for the ROI.
        probabilities: the model's softmax output, ``(K,)``.
        label_names: class names (``label_names[prediction]`` is the predicted one).
        evidence: ``(h, w)`` float map, larger = more evidence (see the module docstring).
        labels: ``(h, w)`` categorical cell labels.
        neighbours: indices of the nearest training cases, nearest first.
        neighbour_labels: their class labels.
        detail: the method's own result.
    """

    method: str
    prediction: int
    probabilities: np.ndarray
    label_names: tuple[str, ...]
    evidence: Optional[np.ndarray] = None
    labels: Optional[np.ndarray] = None
    neighbours: Optional[np.ndarray] = None
    neighbour_labels: Optional[np.ndarray] = None
    detail: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.prediction = int(self.prediction)
        self.probabilities = np.asarray(self.probabilities, dtype=np.float64)
        self.label_names = tuple(str(n) for n in self.label_names)
        if len(self.label_names) != len(self.probabilities):
            raise ValueError(f"{len(self.label_names)} label names for {len(self.probabilities)} probabilities")
        if self.evidence is not None:
            self.evidence = np.asarray(self.evidence, dtype=np.float64)
            if self.evidence.ndim != 2:
                raise ValueError(f"evidence must be a 2-D map, got shape {self.evidence.shape}")
        if self.labels is not None:
            self.labels = np.asarray(self.labels)
        if (self.neighbours is None) != (self.neighbour_labels is None):
            raise ValueError("give neighbours and neighbour_labels together")
        if self.neighbours is not None:
            self.neighbours = np.asarray(self.neighbours, dtype=np.int64)
            self.neighbour_labels = np.asarray(self.neighbour_labels)
            if self.neighbours.shape != self.neighbour_labels.shape or self.neighbours.ndim != 1:
                raise ValueError("neighbours and neighbour_labels must be 1-D and of one length")
        if self.evidence is None and self.labels is None and self.neighbours is None:
            raise ValueError(f"attribution of {self.method!r} carries no evidence, labels or neighbours")

    @property
    def predicted_label(self) -> str:
        """Name of the predicted class."""
        return self.label_names[self.prediction]

    @classmethod
    def from_explanation(cls, explanation: Explanation) -> "Attribution":
        """The Eq. 6 explanation as an attribution: ``evidence = dis^B - dis^L`` (positive on
        *Lesion* cells), ``labels`` the cell labels, ``detail`` the explanation itself."""
        return cls("eq6", explanation.prediction, explanation.probabilities, explanation.label_names,
                   evidence=explanation.dis_background - explanation.dis_lesion,
                   labels=explanation.cell_labels, detail=explanation)


def _check_batch(rois: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
    arr = np.asarray(rois)
    if arr.ndim == 2:
        raise ValueError(f"attribute() takes a batch (N, S, S) of ROIs, got one ROI {arr.shape}: "
                         f"call the explainer on it instead")
    if arr.ndim != 3 or 0 in arr.shape or arr.shape[1] != arr.shape[2]:
        raise ValueError(f"rois must be a non-empty (N, S, S) array of square grey ROIs, got shape {arr.shape}")
    for i, r in enumerate(arr):
        check_grey_image(r, f"roi {i}")
    return arr


class Explainer(ABC):
    """Configure once with a model and settings; ``explainer(roi)`` or ``explainer.attribute(rois)``.

    Subclasses implement :meth:`attribute`; every result is an :class:`Attribution`, and
    ``attribute(rois)[i]`` equals ``explainer(rois[i])`` (batching never changes the answer).
    """

    #: The name written in :attr:`Attribution.method`.
    method: str = ""

    def __init__(self, model: nn.Module, *, device: str | torch.device = "cpu", batch_size: int = 16):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        self.model = model
        self.device = torch.device(device)
        self.batch_size = int(batch_size)

    @abstractmethod
    def attribute(self, rois: np.ndarray, *, progress: bool = False) -> list[Attribution]:
        """One :class:`Attribution` per ROI of an ``(N, S, S)`` batch of grey ROIs in [0, 1]."""

    def __call__(self, roi: np.ndarray) -> Attribution:
        """The attribution of one ``(S, S)`` ROI."""
        return self.attribute(np.asarray(roi)[None])[0]

    def with_model(self, model: nn.Module) -> "Explainer":
        """The same explainer (same settings) for another network; this one is unchanged."""
        other = copy.copy(self)
        other.model = model
        other._forget_model()
        return other

    def _forget_model(self) -> None:
        """Drop what was computed from the previous model (a subclass's caches)."""

    def _probabilities(self, rois: np.ndarray) -> np.ndarray:
        return predict(self.model, rois.astype(np.float32, copy=False), batch_size=self.batch_size,
                       device=self.device)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(model={type(self.model).__name__}, device={str(self.device)!r})"


class Eq6Explainer(Explainer):
    """The proposed *Lesion* / *Background* explanation (Sec. 4.2, Eq. 6;
    :func:`~mammo_lib.explain.eq6.explain_roi` with the settings given here).

    ``evidence[p, q] = dis^B_{p,q} - dis^L_{p,q}``: positive where replacing window (p, q) by the
    *Lesion* image moves the group-4 activations less than replacing it by the *Background* image,
    i.e. where the cell is labelled *Lesion*.
    """

    method = "eq6"

    def __init__(self, model: nn.Module, *, background_rule: BackgroundRule | None = None,
                 soft_percentile: float = DEFAULT_SOFT_PERCENTILE, levels: int = 8, window: int = 5,
                 distance: int = 1, angle: float = 0.0, mean: MeanForm = "paper", group: int = 4,
                 device: str | torch.device = "cpu", batch_size: int = 16):
        super().__init__(model, device=device, batch_size=batch_size)
        self.settings = dict(background_rule=background_rule, soft_percentile=soft_percentile, levels=levels,
                             window=window, distance=distance, angle=angle, mean=mean, group=group)

    def attribute(self, rois: np.ndarray, *, progress: bool = False) -> list[Attribution]:
        from mammo_lib.utils.progress import tqdm

        arr = _check_batch(rois)
        return [Attribution.from_explanation(explain_roi(self.model, r, batch_size=self.batch_size,
                                                         device=self.device, **self.settings))
                for r in tqdm(arr, desc="Eq. 6", disable=not progress)]


class CamExplainer(Explainer):
    """Grad-CAM (ref. [49]) or HiResCAM (ref. [50]) class maps
    (:func:`~mammo_lib.explain.cam.cam_map`): Grad-CAM ``relu(sum_c mean_hw(dY_k/dA_c) A_c)``,
    HiResCAM ``relu(sum_c dY_k/dA_c * A_c)``, for the predicted class (or ``target_class``), in
    [0, 1] at ROI size."""

    def __init__(self, model: nn.Module, *, method: CamMethod = "gradcam", target_layer: TargetLayer = "relu",
                 target_class: int | None = None, device: str | torch.device = "cpu", batch_size: int = 16):
        super().__init__(model, device=device, batch_size=batch_size)
        from mammo_lib.explain.cam import CAM_METHODS, TARGET_LAYERS

        if method not in CAM_METHODS:
            raise ValueError(f"unknown method {method!r}; choose one of {tuple(CAM_METHODS)}")
        if target_layer not in TARGET_LAYERS:
            raise ValueError(f"unknown target_layer {target_layer!r}; choose one of {TARGET_LAYERS}")
        self.method = method
        self.target_layer = target_layer
        self.target_class = target_class

    def attribute(self, rois: np.ndarray, *, progress: bool = False) -> list[Attribution]:
        arr = _check_batch(rois)
        probs = self._probabilities(arr)
        maps = cam_map(self.model, arr, method=self.method, target_class=self.target_class, device=self.device,
                       target_layer=self.target_layer, batch_size=self.batch_size, progress=progress)
        names = default_label_names(probs.shape[1])
        return [Attribution(self.method, int(np.argmax(p)), p, names, evidence=m) for p, m in zip(probs, maps)]


class KnnExplainer(Explainer):
    """Explanation by the ``k`` training ROIs nearest in the model's deep-feature space (Fig. 8c;
    deep k-NN, ref. [51]; :func:`~mammo_lib.explain.knn.knn_explain` on
    :func:`~mammo_lib.explain.knn.penultimate_features`). The training features are computed from
    the explainer's model on first use, so :meth:`with_model` recomputes them for another network."""

    method = "knn"

    def __init__(self, model: nn.Module, train_rois: np.ndarray, train_labels: Sequence[int], *, k: int = 5,
                 metric: Metric = "euclidean", train_ids: Sequence[str] | None = None,
                 device: str | torch.device = "cpu", batch_size: int = 32):
        super().__init__(model, device=device, batch_size=batch_size)
        self.train_rois = _check_batch(train_rois)
        self.train_labels = np.asarray(train_labels)
        if self.train_labels.shape != (len(self.train_rois),):
            raise ValueError(f"{len(self.train_labels)} train_labels for {len(self.train_rois)} training ROIs")
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= len(self.train_rois):
            raise ValueError(f"k must be an int in [1, {len(self.train_rois)}], got {k!r}")
        self.k, self.metric, self.train_ids = int(k), metric, train_ids
        self._train_features: np.ndarray | None = None

    def _forget_model(self) -> None:
        self._train_features = None

    @property
    def train_features(self) -> np.ndarray:
        """``(N, D)`` deep features of the training ROIs under this explainer's model."""
        if self._train_features is None:
            self._train_features = penultimate_features(self.model, self.train_rois, batch_size=self.batch_size,
                                                        device=self.device)
        return self._train_features

    def attribute(self, rois: np.ndarray, *, progress: bool = False) -> list[Attribution]:
        arr = _check_batch(rois)
        probs = self._probabilities(arr)
        out = []
        for i, r in enumerate(arr):   # one ROI at a time: its features do not depend on the batch
            feats = penultimate_features(self.model, r[None], device=self.device)
            table = knn_explain(feats, self.train_features, self.train_labels, k=self.k, train_ids=self.train_ids,
                                metric=self.metric)
            out.append(Attribution("knn", int(np.argmax(probs[i])), probs[i], default_label_names(probs.shape[1]),
                                   neighbours=table["train_index"].to_numpy(),
                                   neighbour_labels=table["label"].to_numpy(), detail=table))
        return out


def similarity(a: Attribution, b: Attribution) -> dict[str, float]:
    """How alike two attributions of one ROI are (e.g. by a trained and a randomised network).

    - ``label_agreement``: share of equal cell labels (needs ``labels`` on both);
    - ``rank_correlation``: Spearman correlation of the evidence maps over their cells
      (:func:`scipy.stats.spearmanr`; NaN when a map is constant or has one cell);
    - ``neighbour_overlap``: Jaccard overlap ``|N_a & N_b| / |N_a | N_b|`` of the neighbour sets.

    Each is NaN where either attribution lacks that kind of evidence.

    >>> x = Attribution("t", 0, [0.7, 0.3], ("b", "m"), labels=[["L", "B"], ["B", "B"]],
    ...                 evidence=[[3.0, 1.0], [0.0, 2.0]], neighbours=[1, 2, 3], neighbour_labels=[0, 0, 1])
    >>> y = Attribution("t", 0, [0.7, 0.3], ("b", "m"), labels=[["L", "L"], ["B", "B"]],
    ...                 evidence=[[2.0, 3.0], [0.0, 1.0]], neighbours=[2, 3, 4], neighbour_labels=[0, 1, 1])
    >>> {k: round(v, 6) for k, v in similarity(x, y).items()}   # rho = 1 - 6 * 6 / (4 * 15)
    {'label_agreement': 0.75, 'rank_correlation': 0.4, 'neighbour_overlap': 0.5}

    Raises:
        ValueError: maps or label grids of different shapes.
    """
    nan = float("nan")
    out = {"label_agreement": nan, "rank_correlation": nan, "neighbour_overlap": nan}
    if a.labels is not None and b.labels is not None:
        if a.labels.shape != b.labels.shape:
            raise ValueError(f"label grids differ: {a.labels.shape} vs {b.labels.shape}")
        out["label_agreement"] = float(np.mean(a.labels == b.labels))
    if a.evidence is not None and b.evidence is not None:
        if a.evidence.shape != b.evidence.shape:
            raise ValueError(f"evidence maps differ: {a.evidence.shape} vs {b.evidence.shape}")
        u, v = a.evidence.ravel(), b.evidence.ravel()
        if u.size >= 2 and np.ptp(u) > 0 and np.ptp(v) > 0:
            from scipy.stats import spearmanr

            out["rank_correlation"] = float(spearmanr(u, v).statistic)
    if a.neighbours is not None and b.neighbours is not None:
        sa, sb = set(a.neighbours.tolist()), set(b.neighbours.tolist())
        out["neighbour_overlap"] = len(sa & sb) / len(sa | sb)
    return out


__all__ = ["Attribution", "Explainer", "Eq6Explainer", "CamExplainer", "KnnExplainer", "similarity"]
