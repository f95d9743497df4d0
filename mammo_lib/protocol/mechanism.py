"""Why a shortcut survives knowledge transfer: the confounder's effect on the logit, split exactly
into DenseNet's pass-through channels and group 4's own channels (beyond the paper; Table 2's
mechanism table, ``docs/DECISIONS.md``).

Group 4's output ``A = relu(norm5(denseblock4(t)))`` (Sec. 3.3) has ``C`` channels: the first
``P = passthrough_channels(model)`` are ``transition3``'s output that the dense block concatenates
unchanged (frozen in Table 2's training, only ``norm5``'s affine parameters move), the other
``C - P`` are computed by group 4's own layers. With a GAP + linear head (``head="gap"``) the
logit margin of a case is

    m = z_malignant - z_benign = sum_c (w1_c - w0_c) * mean_ij A_c,ij + (b1 - b0),

so the change of the margin between two renderings r1, r2 of the same case (e.g. with and
without a calcification) is, exactly (the bias cancels),

    m(r1) - m(r2) = sum_{c < P} (w1_c - w0_c) (mean A_c(r1) - mean A_c(r2))      [pass-through]
                  + sum_{c >= P} (w1_c - w0_c) (mean A_c(r1) - mean A_c(r2))     [own]

(:func:`logit_split`). With ``head="gap_own"`` (the positive control) the classifier reads the
own channels only: the pass-through part is zero by construction. Eq. 5's loss acts on group 4's
activation map; it never reaches the classifier's weights, which can move onto the pass-through
channels (:func:`classifier_weight_split`) while the confounder leaves group 4's own channels
(:func:`confounder_energy`).

>>> import numpy as np
>>> from mammo_lib.networks.densenet import build_model
>>> from mammo_lib.engines.trunk_cache import build_cache
>>> model = build_model("small", seed=0)
>>> x = np.random.default_rng(0).random((3, 64, 64), dtype=np.float32)
>>> m = np.zeros((3, 64, 64), np.uint8); m[:, 20:40, 20:40] = 1
>>> a, b = (build_cache(model, im, m, flips=("none",), progress=False) for im in (x, x[:, ::-1].copy()))
>>> s = logit_split(model, a, b)
>>> bool(np.allclose(s["total"], s["passthrough"] + s["own"], atol=1e-5))
True
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from mammo_lib.networks.densenet import passthrough_channels
from mammo_lib.data.phantom.config import CONFOUNDER_CALCIFICATION, CONFOUNDER_DENSE
from mammo_lib.protocol.stand_in import mass_cells
from mammo_lib.engines.trunk_cache import TrunkCache, over_cache, group4_maps_cached, head_logits

#: Heads whose logit is linear in the pooled activation (the split is exact for these only).
GAP_HEADS = ("gap", "gap_own")
#: A grid cell counts as covered by a confounder when any of its pixels is (calcification clusters
#: are small against a 32-pixel cell at 224 / 7).
CONFOUNDER_CELL_COVER = 1e-9
#: Columns of :func:`mechanism_table`.
MECHANISM_COLUMNS = ("arm", "head", "n_cases", "logit effect total", "logit effect passthrough",
                     "logit effect own", "|w| passthrough", "|w| own", "confounder energy own",
                     "confounder cells' share")


def _check_gap(model: nn.Module) -> str:
    head = getattr(model, "head", "gap")
    if head not in GAP_HEADS:
        raise ValueError(f"the logit split needs a GAP + linear head {GAP_HEADS}, got head={head!r}")
    if model.classifier.out_features != 2:
        raise ValueError(f"the logit margin needs 2 classes (benign, malignant), got {model.classifier.out_features}")
    return head


def margin_weights(model: nn.Module) -> np.ndarray:
    """``w1 - w0`` (float64) over all ``C`` channels of group 4's output: the weight of each pooled
    channel in the margin ``z_malignant - z_benign``; zero on the pass-through channels of a
    ``"gap_own"`` head (its classifier does not read them)."""
    head = _check_gap(model)
    w = model.classifier.weight.detach().double().cpu()
    d = (w[1] - w[0]).numpy()
    if head == "gap_own":
        d = np.concatenate([np.zeros(passthrough_channels(model)), d])
    c = model.features.norm5.num_features
    if len(d) != c:
        raise ValueError(f"classifier reads {len(d)} channels, group 4 has {c}")
    return d


def pooled_activations(model: nn.Module, cache: TrunkCache, *, flip: int = 0, batch_size: int = 256,
                       device: str | torch.device = "cpu", amp: str = "off") -> np.ndarray:
    """``(N, C)`` float32: group 4's activation averaged over the grid (the GAP classifier's input
    before a ``"gap_own"`` head drops the pass-through channels), eval mode, modes restored."""
    return over_cache(model, cache, lambda a: torch.flatten(F.adaptive_avg_pool2d(a, 1), 1), flip=flip,
                       batch_size=batch_size, device=device, amp=amp).numpy()


def _margins(model: nn.Module, cache: TrunkCache, *, flip: int, batch_size: int, device: Any, amp: str) -> np.ndarray:
    lg = over_cache(model, cache, lambda a: head_logits(model, a).double(), flip=flip, batch_size=batch_size,
                     device=device, amp=amp).numpy()
    return lg[:, 1] - lg[:, 0]


def logit_split(model: nn.Module, cache_a: TrunkCache, cache_b: TrunkCache, *, flip: int = 0,
                batch_size: int = 256, device: str | torch.device = "cpu", amp: str = "off") -> pd.DataFrame:
    """Per case, the change of the logit margin ``m = z_malignant - z_benign`` from rendering b to
    rendering a, and its exact split (module docstring):

        total = m(a) - m(b) = passthrough + own,
        passthrough = sum_{c < P} (w1_c - w0_c) (mean A_c(a) - mean A_c(b)),
        own         = sum_{c >= P} (w1_c - w0_c) (mean A_c(a) - mean A_c(b)).

    ``total`` is the difference of the network's own logits (:func:`~mammo_lib.engines.trunk_cache.head_logits`),
    ``passthrough`` and ``own`` the sums over each half in float64; they add up to ``total`` to
    float precision (tested). ``cache_a`` and ``cache_b`` must hold the same cases in the same order
    (two renderings of one set, built with the same trunk).

    Returns:
        One row per case: ``case_id``, ``label``, ``margin_a``, ``margin_b``, ``total``,
        ``passthrough``, ``own`` (:func:`split_means` gives the means).
    """
    _check_gap(model)
    if list(cache_a.ids) != list(cache_b.ids):
        bad = next((i for i, (x, y) in enumerate(zip(cache_a.ids, cache_b.ids)) if x != y), min(len(cache_a), len(cache_b)))
        raise ValueError(f"the two renderings must hold the same cases in the same order; they differ at "
                         f"position {bad} ({len(cache_a)} vs {len(cache_b)} cases)")
    run = dict(flip=flip, batch_size=batch_size, device=device, amp=amp)
    w = margin_weights(model)
    p = passthrough_channels(model)
    diff = pooled_activations(model, cache_a, **run).astype(np.float64) - \
        pooled_activations(model, cache_b, **run).astype(np.float64)
    ma, mb = _margins(model, cache_a, **run), _margins(model, cache_b, **run)
    return pd.DataFrame({"case_id": list(cache_a.ids), "label": np.asarray(cache_a.labels, dtype=np.int64),
                         "margin_a": ma, "margin_b": mb, "total": ma - mb,
                         "passthrough": diff[:, :p] @ w[:p], "own": diff[:, p:] @ w[p:]})


def split_means(split: pd.DataFrame) -> dict[str, float]:
    """Means over the cases of :func:`logit_split`'s ``total``, ``passthrough`` and ``own``."""
    return {k: float(split[k].mean()) if len(split) else float("nan") for k in ("total", "passthrough", "own")}


def classifier_weight_split(model: nn.Module) -> dict[str, float]:
    """Mean ``|w1_c - w0_c|`` (the margin weight of pooled channel c, :func:`margin_weights`) over
    the pass-through channels (``passthrough_abs_w``) and over group 4's own channels
    (``own_abs_w``). A ``"gap_own"`` head has ``passthrough_abs_w = 0`` by construction."""
    w = np.abs(margin_weights(model))
    p = passthrough_channels(model)
    return {"passthrough_abs_w": float(w[:p].mean()), "own_abs_w": float(w[p:].mean())}


def confounder_masks(confounders: np.ndarray, label: int = CONFOUNDER_CALCIFICATION) -> np.ndarray:
    """``(N, S, S)`` uint8 {0, 1}: the pixels of one confounder type in a ROI set's label maps
    (:attr:`mammo_lib.data.preprocess.RoiSet.confounders`; the phantom's 1 = calcification, 2 = dense
    tissue)."""
    c = np.asarray(confounders)
    if c.ndim != 3:
        raise ValueError(f"confounder label maps must be (N,S,S), got shape {c.shape}")
    return (c == label).astype(np.uint8)


def calcification_contrast(confounders_a: np.ndarray, confounders_b: np.ndarray, *,
                           match_dense: bool = True) -> np.ndarray:
    """Positions of the cases with a calcification in rendering a and none in rendering b (and,
    with ``match_dense``, dense tissue in both or in neither): the cases whose margin change
    between a and b is the calcification's effect (the tissue and the mass are the same in every
    rendering of a phantom case; the other confounder is drawn anew)."""
    a, b = np.asarray(confounders_a), np.asarray(confounders_b)
    if a.shape != b.shape or a.ndim != 3:
        raise ValueError(f"confounder maps must be (N,S,S) of one shape, got {a.shape} and {b.shape}")
    calc_a = (a == CONFOUNDER_CALCIFICATION).any(axis=(1, 2))
    calc_b = (b == CONFOUNDER_CALCIFICATION).any(axis=(1, 2))
    keep = calc_a & ~calc_b
    if match_dense:
        keep &= (a == CONFOUNDER_DENSE).any(axis=(1, 2)) == (b == CONFOUNDER_DENSE).any(axis=(1, 2))
    return np.flatnonzero(keep)


def contrast_pairs(confounders: Mapping[str, np.ndarray], *, label: int = CONFOUNDER_CALCIFICATION,
                   match_dense: bool = True) -> pd.DataFrame:
    """For every case, a rendering with the confounder and one without it, among several renderings
    of the same cases (e.g. the phantom's ``train``, ``shifted``, ``reversed``; all label maps
    ``(N, S, S)`` in one case order): the first pair in the order the renderings are given whose
    maps have the confounder in one and not in the other (and, with ``match_dense``, dense tissue
    in both or in neither). Cases without such a pair are left out.

    Returns:
        ``position``, ``with``, ``without`` (rendering names), one row per case that has a pair;
        :func:`pair_caches` turns it into the two caches of :func:`logit_split`.
    """
    names = list(confounders)
    if len(names) < 2:
        raise ValueError(f"need at least two renderings, got {names}")
    maps = {k: np.asarray(v) for k, v in confounders.items()}
    shape = maps[names[0]].shape
    bad = [k for k, v in maps.items() if v.shape != shape or v.ndim != 3]
    if bad:
        raise ValueError(f"confounder maps must be (N,S,S) of one shape {shape}; renderings {bad} differ")
    has = {k: (v == label).any(axis=(1, 2)) for k, v in maps.items()}
    other = CONFOUNDER_DENSE if label == CONFOUNDER_CALCIFICATION else CONFOUNDER_CALCIFICATION
    dense = {k: (v == other).any(axis=(1, 2)) for k, v in maps.items()}
    rows = []
    for i in range(shape[0]):
        for w in names:
            if not has[w][i]:
                continue
            wo = next((k for k in names if not has[k][i] and (not match_dense or dense[k][i] == dense[w][i])), None)
            if wo is not None:
                rows.append({"position": i, "with": w, "without": wo})
                break
    return pd.DataFrame(rows, columns=["position", "with", "without"])


def pair_caches(caches: Mapping[str, TrunkCache], pairs: pd.DataFrame) -> tuple[TrunkCache, TrunkCache]:
    """The two caches of :func:`logit_split` from :func:`contrast_pairs`: case ``position`` taken
    from rendering ``with`` and from rendering ``without`` (identity flip only)."""
    def take(col: str) -> TrunkCache:
        parts = [caches[r].subset([int(p)]) for p, r in zip(pairs["position"], pairs[col])]
        if not parts:
            raise ValueError("no case has a rendering with and one without the confounder")
        return TrunkCache(torch.cat([c.features[:, :1] for c in parts]),
                          torch.cat([c.teacher_maps[:, :1] for c in parts]),
                          torch.cat([c.oracle_maps[:, :1] for c in parts]),
                          np.concatenate([c.labels for c in parts]), [c.ids[0] for c in parts],
                          (parts[0].flips[0],))
    missing = sorted({*pairs["with"], *pairs["without"]} - set(caches))
    if missing:
        raise ValueError(f"no cache for renderings {missing}")
    unflipped = sorted(r for r in {*pairs["with"], *pairs["without"]} if caches[r].flips[0] != "none")
    if unflipped:
        raise ValueError(f"caches {unflipped} do not hold the identity flip first")
    return take("with"), take("without")


def pair_masks(confounders: Mapping[str, np.ndarray], pairs: pd.DataFrame, *,
               label: int = CONFOUNDER_CALCIFICATION) -> np.ndarray:
    """The confounder's pixels in each pair's ``with`` rendering, in :func:`pair_caches`' order."""
    return np.stack([np.asarray(confounders[r][int(p)]) == label for p, r in zip(pairs["position"], pairs["with"])]
                    ).astype(np.uint8) if len(pairs) else np.zeros((0, 1, 1), np.uint8)


def confounder_energy_cases(model: nn.Module, cache: TrunkCache, masks: np.ndarray, *, channels: str = "own",
                            flip: int = 0, batch_size: int = 256, device: str | torch.device = "cpu",
                            amp: str = "off", min_cover: float = CONFOUNDER_CELL_COVER) -> pd.DataFrame:
    """Per case: the share of group 4's Eq. 3 energy (``channels``: ``"own"``, ``"all"`` or
    ``"passthrough"``, :func:`~mammo_lib.engines.trunk_cache.group4_maps_cached`) on the grid cells that
    the confounder mask covers (any pixel: :data:`CONFOUNDER_CELL_COVER`), and those cells' share of
    the grid (``energy_share``, ``cells_share``). Cases whose mask is empty get NaN."""
    masks = np.asarray(masks)
    if masks.ndim != 3 or len(masks) != len(cache):
        raise ValueError(f"need one confounder mask (N,S,S) per cached case ({len(cache)}), got shape {masks.shape}")
    maps = group4_maps_cached(model, cache, flip=flip, batch_size=batch_size, device=device, amp=amp,
                              channels=channels).astype(np.float64)
    cells = mass_cells(masks, maps.shape[-1], min_cover=min_cover)
    tot = maps.sum(axis=(1, 2))
    has = cells.any(axis=(1, 2))
    share = np.where(has & (tot > 0), (maps * cells).sum(axis=(1, 2)) / np.where(tot > 0, tot, 1.0), np.nan)
    return pd.DataFrame({"case_id": list(cache.ids), "energy_share": share,
                         "cells_share": np.where(has, cells.mean(axis=(1, 2)), np.nan)})


def confounder_energy(model: nn.Module, cache: TrunkCache, confounder_masks: np.ndarray, *, channels: str = "own",
                      flip: int = 0, batch_size: int = 256, device: str | torch.device = "cpu",
                      amp: str = "off") -> float:
    """Mean over the cases with a confounder of the share of group 4's own-channel energy (Eq. 3
    over channels ``P..C-1``) on the grid cells the confounder covers
    (:func:`confounder_energy_cases`); NaN when no case has one. Compare with the cells' share of
    the grid: a share well above it means group 4's own channels respond to the confounder."""
    e = confounder_energy_cases(model, cache, confounder_masks, channels=channels, flip=flip,
                                batch_size=batch_size, device=device, amp=amp)["energy_share"]
    return float(e.mean()) if e.notna().any() else float("nan")


@dataclass
class MechanismArm:
    """One arm of the mechanism table: a trained network and the caches of the two renderings made
    with its trunk (``with_confounder``: rendering a, ``without``: rendering b; same cases, same
    order)."""

    model: nn.Module
    with_confounder: TrunkCache
    without: TrunkCache


def mechanism_table(arms: Mapping[str, MechanismArm], confounder_masks: np.ndarray, *,
                    cases: Optional[Sequence[int] | np.ndarray] = None, batch_size: int = 256,
                    device: str | torch.device = "cpu", amp: str = "off") -> pd.DataFrame:
    """One row per arm (:data:`MECHANISM_COLUMNS`): the mean change of the logit margin from the
    rendering without to the rendering with the confounder, split into its pass-through and own
    parts (:func:`logit_split`), the classifier's mean margin weight on each half
    (:func:`classifier_weight_split`), the own-channel energy share on the confounder's cells in
    the rendering with it (:func:`confounder_energy`) and those cells' share of the grid.

    Args:
        arms: e.g. ``{"fine-tune": ..., "knowledge transfer": ..., "positive control, fine-tune": ...}``.
        confounder_masks: ``(N, S, S)`` {0, 1}, the confounder's pixels in the ``with_confounder``
            rendering (:func:`confounder_masks`), in the caches' case order.
        cases: positions of the cases to use (e.g. :func:`calcification_contrast`); default all.
    """
    if not arms:
        raise ValueError("the mechanism table needs at least one arm")
    masks = np.asarray(confounder_masks)
    rows = []
    for name, arm in arms.items():
        n = len(arm.with_confounder)
        if len(masks) != n:
            raise ValueError(f"arm {name!r}: {n} cached cases but {len(masks)} confounder masks")
        idx = np.arange(n) if cases is None else np.asarray(cases, dtype=np.int64)
        a, b = arm.with_confounder.subset(idx), arm.without.subset(idx)
        run = dict(batch_size=batch_size, device=device, amp=amp)
        sp = split_means(logit_split(arm.model, a, b, **run))
        wt = classifier_weight_split(arm.model)
        en = confounder_energy_cases(arm.model, a, masks[idx], **run)
        rows.append({"arm": name, "head": getattr(arm.model, "head", "gap"), "n_cases": len(idx),
                     "logit effect total": sp["total"], "logit effect passthrough": sp["passthrough"],
                     "logit effect own": sp["own"], "|w| passthrough": wt["passthrough_abs_w"],
                     "|w| own": wt["own_abs_w"],
                     "confounder energy own": float(en["energy_share"].mean()) if en["energy_share"].notna().any() else float("nan"),
                     "confounder cells' share": float(en["cells_share"].mean()) if en["cells_share"].notna().any() else float("nan")})
    return pd.DataFrame(rows, columns=list(MECHANISM_COLUMNS))


__all__ = ["GAP_HEADS", "CONFOUNDER_CELL_COVER", "MECHANISM_COLUMNS", "margin_weights", "pooled_activations",
           "logit_split", "split_means", "classifier_weight_split", "confounder_masks", "calcification_contrast",
           "contrast_pairs", "pair_caches", "pair_masks",
           "confounder_energy_cases", "confounder_energy", "MechanismArm", "mechanism_table"]
