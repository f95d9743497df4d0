"""Deep features and the two feature-based comparison methods of Fig. 8 (b) and (c).

- :func:`penultimate_features`: the classifier's input, ``avgpool(relu(norm5(...)))``, i.e. the
  1024 (DenseNet121) deep features of each ROI.
- :func:`knn_explain`, :func:`knn_vote`: Fig. 8c, explanation by the k most similar *training*
  ROIs in deep-feature space (deep k-NN, Papernot & McDaniel, ref. [51]).
- :func:`feature_correlation`: Fig. 8b, Pearson correlation between hand-crafted GLCM features
  (``mammo_lib.explain.glcm.glcm_feature_table``) and deep features (refs. [37, 39]).
"""
from __future__ import annotations

from typing import Literal, Optional, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from scipy.spatial.distance import cdist
from torch import nn

from mammo_lib.utils.progress import tqdm
from mammo_lib.utils.precision import full
from mammo_lib.networks.densenet import eval_mode, on_device, to_model_input

Metric = Literal["euclidean", "cosine", "cityblock"]
#: Distances :func:`knn_explain` accepts (names of :func:`scipy.spatial.distance.cdist`).
METRICS: tuple[str, ...] = ("euclidean", "cosine", "cityblock")


def _check_batch_size(batch_size: int) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")


def penultimate_features(model: nn.Module, images: np.ndarray, *, batch_size: int = 32,
                         device: str | torch.device = "cpu", progress: bool = False) -> np.ndarray:
    """Deep features of grey ROIs: ``flatten(avgpool(relu(model.features(x))))`` (classifier input).

    This is exactly what torchvision's ``DenseNet.forward`` feeds to ``model.classifier``
    (group 4 after norm5 and ReLU, Sec. 3.3, globally average-pooled), so
    ``model.classifier(features) == model(x)``. Runs in eval mode under ``torch.inference_mode``;
    the model's modes (and device, if it had to be moved to ``device``) are restored.

    Args:
        images: ``(N, S, S)`` grey ROIs in [0, 1].

    Returns:
        ``(N, num_features)`` float32 array (1024 for DenseNet121).
    """
    if not hasattr(model, "features") or not isinstance(model.features, nn.Module):
        raise TypeError(f"expected a torchvision DenseNet (with .features), got {type(model).__name__}")
    arr = np.asarray(images)
    if arr.ndim != 3:
        raise ValueError(f"images must be (N, S, S) grey ROIs, got shape {arr.shape}")
    _check_batch_size(batch_size)
    device = torch.device(device)
    param = next(model.parameters())
    chunks: list[torch.Tensor] = []
    with on_device(model, device), eval_mode(model), torch.inference_mode():
        for start in tqdm(range(0, len(arr), batch_size), disable=not progress, desc="deep features"):
            x = torch.as_tensor(arr[start:start + batch_size], dtype=param.dtype).to(device)
            a = F.relu(model.features(to_model_input(x)))
            chunks.append(full(torch.flatten(F.adaptive_avg_pool2d(a, 1), 1)).cpu())
    if not chunks:
        raise ValueError("images is empty: nothing to extract features from")
    return torch.cat(chunks).numpy()


def _as_features(x: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(x)
    if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
        raise TypeError(f"{name} must be real numbers, got dtype {arr.dtype}")
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 2-D (samples, features), got shape {arr.shape}")
    if arr.size and not np.isfinite(arr).all():
        raise ValueError(f"{name} holds NaN or infinite values")
    return arr.astype(np.float64, copy=False)


def _neighbours(query_features: np.ndarray, train_features: np.ndarray, train_labels: Sequence[int],
                k: int, metric: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Validated inputs -> (query matrix, neighbour indices (Q, k), distances (Q, k), labels)."""
    q = np.asarray(query_features)
    q = _as_features(q[None, :] if q.ndim == 1 else q, "query_features")
    t = _as_features(train_features, "train_features")
    if q.shape[1] != t.shape[1]:
        raise ValueError(f"query_features have {q.shape[1]} features, train_features {t.shape[1]}")
    labels = np.asarray(train_labels)
    if labels.shape != (t.shape[0],):
        raise ValueError(f"train_labels must have shape ({t.shape[0]},) like train_features' rows, "
                         f"got {labels.shape}")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= t.shape[0]:
        raise ValueError(f"k must be an int in [1, {t.shape[0]}] (training samples), got {k!r}")
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; choose one of {METRICS}")
    dist = cdist(q, t, metric=metric)
    # A stable sort keeps equal distances in training-index order (ties broken by index).
    order = np.argsort(dist, axis=1, kind="stable")[:, :k]
    return q, order, np.take_along_axis(dist, order, axis=1), labels


def knn_explain(query_features: np.ndarray, train_features: np.ndarray, train_labels: Sequence[int], *,
                k: int = 5, train_ids: Optional[Sequence[str]] = None,
                metric: Metric = "euclidean") -> pd.DataFrame:
    """The ``k`` training samples nearest to each query in deep-feature space (Fig. 8c).

    Args:
        query_features: ``(D,)`` or ``(Q, D)`` features (e.g. :func:`penultimate_features`).
        train_features: ``(N, D)`` training-set features; ``train_labels`` their ``(N,)`` labels.
        k: neighbours per query (``1 <= k <= N``).
        train_ids: optional ``(N,)`` ids reported in ``train_id`` (default: the index as text).
        metric: ``"euclidean"``, ``"cosine"`` or ``"cityblock"`` (scipy ``cdist``).

    Returns:
        ``Q * k`` rows: ``query`` (row of ``query_features``), ``rank`` (1 = nearest),
        ``train_index``, ``train_id``, ``label``, ``distance``. Equal distances are ordered by
        training index.
    """
    q, order, dist, labels = _neighbours(query_features, train_features, train_labels, k, metric)
    n_train = len(labels)
    if train_ids is None:
        ids = np.array([str(i) for i in range(n_train)], dtype=object)
    else:
        ids = np.asarray(list(train_ids), dtype=object)
        if ids.shape != (n_train,):
            raise ValueError(f"train_ids has {len(ids)} entries for {n_train} training samples")
    n_q = q.shape[0]
    flat = order.ravel()
    return pd.DataFrame({
        "query": np.repeat(np.arange(n_q), k),
        "rank": np.tile(np.arange(1, k + 1), n_q),
        "train_index": flat,
        "train_id": ids[flat],
        "label": labels[flat],
        "distance": dist.ravel(),
    })


def knn_vote(query_features: np.ndarray, train_features: np.ndarray, train_labels: Sequence[int], *,
             k: int = 5, metric: Metric = "euclidean") -> pd.DataFrame:
    """Majority vote of the ``k`` nearest training samples (deep k-NN prediction, ref. [51]).

    Returns one row per query: ``query``, ``prediction``, ``support`` (share of the ``k``
    neighbours with the predicted label: the vote's confidence) and ``votes_<label>`` for each
    label in ``train_labels``. **Decision:** a tied vote goes to the tied label of the nearest
    neighbour among the tied ones (with index order breaking distance ties).
    """
    q, order, _dist, labels = _neighbours(query_features, train_features, train_labels, k, metric)
    classes = np.unique(labels)
    neigh = labels[order]                                    # (Q, k) labels, nearest first
    votes = (neigh[:, :, None] == classes[None, None, :]).sum(axis=1)   # (Q, C)
    top = votes == votes.max(axis=1, keepdims=True)          # tied winners
    # The first neighbour (in rank order) whose label is among the tied winners decides.
    winner_of_neigh = top[np.arange(len(q))[:, None], np.searchsorted(classes, neigh)]
    first = np.argmax(winner_of_neigh, axis=1)
    prediction = neigh[np.arange(len(q)), first]
    out = pd.DataFrame({"query": np.arange(len(q)), "prediction": prediction,
                        "support": votes.max(axis=1) / k})
    for j, c in enumerate(classes):
        out[f"votes_{c}"] = votes[:, j]
    return out


def feature_correlation(glcm_df: pd.DataFrame, deep_features: np.ndarray, top: Optional[int] = 10,
                        ) -> pd.DataFrame:
    """Pearson correlation between GLCM features and deep features over the same samples (Fig. 8b).

    Args:
        glcm_df: ``(N, G)`` table of hand-crafted features (``glcm.glcm_feature_table``); every
            column must be numeric.
        deep_features: ``(N, D)`` deep features of the same samples in the same order.
        top: keep the ``top`` deep features with the largest maximum ``|r|`` over the GLCM
            features, strongest first (ties by index); ``None`` keeps all ``D`` in order.
            **Decision:** the paper shows a subset without saying which; this is ours.

    Returns:
        ``G x top`` DataFrame of ``r`` (index: GLCM feature names, columns ``deep_<index>``).
        A constant feature has no correlation: NaN (and is never among the ``top``).
    """
    if not isinstance(glcm_df, pd.DataFrame):
        raise TypeError(f"glcm_df must be a pandas DataFrame, got {type(glcm_df).__name__}")
    non_numeric = [c for c in glcm_df.columns if not pd.api.types.is_numeric_dtype(glcm_df[c])]
    if non_numeric:
        raise TypeError(f"glcm_df columns must be numeric; non-numeric: {non_numeric}")
    g = _as_features(glcm_df.to_numpy(), "glcm_df")
    d = _as_features(deep_features, "deep_features")
    if g.shape[0] != d.shape[0]:
        raise ValueError(f"glcm_df has {g.shape[0]} rows, deep_features {d.shape[0]}: not the same samples")
    if g.shape[0] < 3:
        raise ValueError(f"need at least 3 samples for a correlation, got {g.shape[0]}")
    if top is not None and (isinstance(top, bool) or not isinstance(top, (int, np.integer)) or top < 1):
        raise ValueError(f"top must be a positive int or None, got {top!r}")

    def standardise(x: np.ndarray) -> np.ndarray:
        xc = x - x.mean(axis=0)
        norm = np.sqrt((xc ** 2).sum(axis=0))
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(norm > 1e-12 * (1 + np.abs(x).max(axis=0)), xc / norm, np.nan)

    r = np.clip(standardise(g).T @ standardise(d), -1.0, 1.0)     # (G, D)
    cols = np.arange(d.shape[1])
    if top is not None:
        strength = np.abs(r)
        strength = np.where(np.isnan(strength), -1.0, strength).max(axis=0)   # all-NaN column -> -1
        ranked = np.argsort(-strength, kind="stable")
        cols = ranked[strength[ranked] >= 0][:int(top)]
    return pd.DataFrame(r[:, cols], index=pd.Index([str(c) for c in glcm_df.columns], name="glcm_feature"),
                        columns=[f"deep_{j}" for j in cols])
