"""Sanity measures of the Eq. 6 explanation (Sec. 4.2, Eq. 1-2, Eq. 6; ``docs/DECISIONS.md``).

Eq. 6 labels a projection window *Lesion* when replacing it by the *Lesion* image moves the
group-4 activations less than replacing it by the *Background* image. Two things can make those
labels say little about the network:

- **pixel change**: a network that is roughly smooth in its input moves less for the
  replacement that changes fewer pixels, whatever it learnt. :func:`pixel_change_labels` is that
  trivial predictor and :func:`pixel_change_agreement` the share of cells where Eq. 6 equals it.
- **model randomisation** (Adebayo et al., "Sanity checks for saliency maps", NeurIPS 2018):
  an explanation that hardly changes when the layers it reads are re-initialised does not
  explain the trained weights. :func:`randomize_group4` re-initialises group 4 (denseblock4 +
  norm5) and the classifier; :func:`randomisation_check` compares the two explanations.

:func:`mass_margin` measures whether *Lesion* cells lie on the mass (ground truth masks), and
:func:`explanation_sanity` tabulates all of it per ``background_rule``. Two baselines sit beside
the trained model's labels, each as raw agreement and Cohen's kappa (:func:`mammo_lib.metrics.stats.cohen_kappa`;
raw agreement ignores chance):

- **trunk-only read-out**: Eq. 6 on the *initial* network (the pre-trained trunk with its own,
  untrained-for-the-task group 4). Groups 1-3 are frozen and shared, so a high agreement says the
  labels are set by the trunk, not by what group 4 learnt;
- **between models**: Eq. 6 of a second model trained on the same trunk (fine-tune against
  knowledge transfer). Agreement near the trunk-only one says the explanation cannot tell the two
  training regimes apart.

The default Background rule is the complementary ``"soft"`` split
(:data:`mammo_lib.explain.eq6.DEFAULT_BACKGROUND_RULE`, ``docs/DECISIONS.md``), fixed in advance rather
than picked from the table; :func:`choose_default_rule` names the rule the measurements favour
(``table.attrs["best_rule"]``), and while no rule passes the explanation is not evidence.

Quantus (Hedström et al.) is not used: its randomisation metrics (MPRT and relatives) expect a
per-pixel attribution of the input's shape from an ``explain_func`` and randomise layers through
their own model wrapper, whereas Eq. 6 gives categorical cell labels on the g x g activation grid
and the test here re-initialises one named group (denseblock4, norm5, classifier); the glue would
outweigh the few lines below.
"""
from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from mammo_lib.utils.progress import tqdm
from mammo_lib.explain.eq6 import (DEFAULT_BACKGROUND_RULE, DEFAULT_SOFT_PERCENTILE, Explanation, canonical_background_rule,
                                   explain_roi, lesion_agreement, pixel_change_agreement, pixel_change_labels,
                                   split_roi)
from mammo_lib.explain.glcm import MeanForm, check_grey_image, glcm_variance_map
from mammo_lib.explain.interface import Explainer, similarity
from mammo_lib.explain.localization import energy_share
from mammo_lib.networks.densenet import on_device, preserve_mode
from mammo_lib.metrics.stats import cohen_kappa

#: ``passes`` needs ``pixel_change_agreement`` at most this (Eq. 6 labels must not be mostly
#: "the replacement that changes fewer pixels").
PIXEL_CHANGE_AGREEMENT_MAX = 0.65
#: "Clearly lower" than the self-agreement of 1.0: ``passes`` needs the label agreement between
#: the trained and the group-4-randomised network at most this.
RANDOM_LABEL_AGREEMENT_MAX = 0.85
#: :func:`randomisation_table`: an explainer "changes" with the randomised network when its
#: similarity to the trained network's explanation (equal labels, Spearman rho of the maps or
#: Jaccard overlap of the neighbours) is at most this: the bar of the label agreement.
RANDOM_SIMILARITY_MAX = RANDOM_LABEL_AGREEMENT_MAX
#: Columns of :func:`randomisation_table`, in order.
RANDOMISATION_COLUMNS = ("explainer", "method", "n_rois", "measure", "similarity", "label_agreement",
                         "rank_correlation", "neighbour_overlap", "mass_share_trained", "mass_share_random",
                         "changes")
#: Rules compared by :func:`explanation_sanity` by default.
DEFAULT_SANITY_RULES = ("soft", "otsu", "subtract_clip")
#: Prefixes of the modules :func:`randomize_group4` re-initialises (group 4 + classifier).
GROUP4_PREFIXES = ("features.denseblock4", "features.norm5", "classifier")

#: Columns of :func:`explanation_sanity`'s table, in order.
SANITY_COLUMNS = ("rule", "n_rois", "pixel_change_agreement", "random_net_pixel_change_agreement",
                  "random_net_label_agreement", "random_net_kappa", "random_net_rank_correlation",
                  "mass_margin_trained", "mass_margin_random", "mass_margin_minus_random",
                  "lesion_fraction_trained", "lesion_fraction_random", "trunk_label_agreement",
                  "trunk_kappa", "other_model_label_agreement", "other_model_kappa", "passes", "default")
#: Baseline columns (:func:`explanation_sanity`): label set compared with the trained model's.
_BASELINES = {"random_net": "randomised", "trunk": "initial", "other_model": "other"}


# --------------------------------------------------------------------------- model randomisation


def randomize_group4(model: nn.Module, seed: int) -> nn.Module:
    """A deep copy of a torchvision DenseNet with group 4 and the classifier re-initialised.

    ``features.denseblock4``, ``features.norm5`` and ``classifier`` get torchvision's DenseNet
    initialisation: ``kaiming_normal_`` for convolutions, BatchNorm weight 1 / bias 0 with the
    running statistics reset, Linear weights as :class:`torch.nn.Linear` draws them and bias 0.
    The draws come from a CPU :class:`torch.Generator` seeded with ``seed`` (the global RNG is
    untouched; same seed, same copy). Everything else, training flags and ``requires_grad``
    included, is copied as is; ``model`` itself is not changed.

    >>> from mammo_lib.networks.densenet import build_model
    >>> m = build_model("small", seed=0)
    >>> r = randomize_group4(m, seed=1)
    >>> bool(torch.equal(r.features.conv0.weight, m.features.conv0.weight))
    True
    >>> bool(torch.equal(r.classifier.weight, m.classifier.weight))
    False

    Raises:
        TypeError: ``model`` lacks ``features.denseblock4``, ``features.norm5`` or ``classifier``.
    """
    if not (hasattr(model, "features") and hasattr(model, "classifier")
            and hasattr(model.features, "denseblock4") and hasattr(model.features, "norm5")):
        raise TypeError(f"expected a torchvision DenseNet (features.denseblock4, features.norm5, "
                        f"classifier), got {type(model).__name__}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    clone = copy.deepcopy(model)
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    roots = [clone.get_submodule(prefix) for prefix in GROUP4_PREFIXES]

    def draw(param: torch.Tensor, init: Any, **kw: Any) -> None:
        fresh = torch.empty(param.shape, dtype=param.dtype, device="cpu")
        init(fresh, generator=gen, **kw)
        param.copy_(fresh)

    with torch.no_grad():
        for root in roots:
            for module in root.modules():
                if isinstance(module, nn.Conv2d):
                    draw(module.weight, nn.init.kaiming_normal_)
                    if module.bias is not None:
                        module.bias.zero_()
                elif isinstance(module, _BatchNorm):
                    if module.weight is not None:
                        module.weight.fill_(1.0)
                        module.bias.zero_()
                    module.reset_running_stats()
                elif isinstance(module, nn.Linear):
                    draw(module.weight, nn.init.kaiming_uniform_, a=math.sqrt(5))  # nn.Linear's own
                    if module.bias is not None:
                        module.bias.zero_()
    return clone


def randomisation_check(expl_trained: Explanation, expl_random: Explanation) -> dict[str, float]:
    """Compare the explanations of one ROI by the trained and by the randomised network.

    ``label_agreement``: share of cells with the same Eq. 6 label (1.0 against itself);
    ``rank_correlation``: Spearman correlation (:func:`scipy.stats.spearmanr`) of
    ``dis^L - dis^B`` over the cells; NaN (no warning) when either is constant or the grid has
    one cell.

    >>> from mammo_lib.explain.eq6 import Explanation
    >>> e = Explanation(0, [0.6, 0.4], ("benign", "malignant"), [[0.0]], [[0.1]], [[0.2]],
    ...                 [["Lesion"]], 4, 1)
    >>> randomisation_check(e, e)["label_agreement"]
    1.0

    Raises:
        ValueError: the explanations have different grids.
    """
    if expl_trained.grid != expl_random.grid:
        raise ValueError(f"explanations on different grids: {expl_trained.grid} vs {expl_random.grid}")
    agree = float(np.mean(np.asarray(expl_trained.cell_labels) == np.asarray(expl_random.cell_labels)))
    a = (expl_trained.dis_lesion - expl_trained.dis_background).ravel()
    b = (expl_random.dis_lesion - expl_random.dis_background).ravel()
    if a.size < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        rho = float("nan")
    else:
        from scipy.stats import spearmanr

        rho = float(spearmanr(a, b).statistic)
    return {"label_agreement": agree, "rank_correlation": rho}


def randomisation_table(explainers: Mapping[str, Explainer], rois: np.ndarray,
                        masks: np.ndarray | None = None, *, seed: int = 0, progress: bool = False) -> pd.DataFrame:
    """The model-randomisation check (Adebayo et al. 2018) for any explainer, one row per explainer.

    Each explainer (:class:`~mammo_lib.explain.interface.Explainer`: Eq. 6, Grad-CAM / HiResCAM,
    kNN) explains every ROI with its own model and again with
    ``explainer.with_model(randomize_group4(explainer.model, seed))``; the two attributions of a
    ROI are compared by :func:`~mammo_lib.explain.interface.similarity`. Columns (means over the
    ROIs, NaNs skipped):

    - ``measure`` / ``similarity``: the explainer's own similarity: ``label_agreement`` when it gives
      cell labels, else ``rank_correlation`` of its maps, else ``neighbour_overlap``;
    - ``label_agreement``, ``rank_correlation``, ``neighbour_overlap``: all three (NaN where the
      explainer has no such evidence);
    - ``mass_share_trained`` / ``_random``: share of the positive evidence on the mask
      (:func:`~mammo_lib.explain.localization.energy_share` of ``max(evidence, 0)``), when masks
      are given and the explainer gives a map;
    - ``changes``: ``similarity <= RANDOM_SIMILARITY_MAX``: the explanation follows the trained
      weights of group 4 (an explainer that ignores the model fails; NaN fails).

    The explainers' models are not changed.

    Raises:
        ValueError: no explainer, or masks whose count or shape differs from the ROIs'.
    """
    if not explainers:
        raise ValueError("no explainer given")
    arr = np.asarray(rois)
    if masks is not None:
        masks = np.asarray(masks)
        if masks.shape != arr.shape:
            raise ValueError(f"masks shape {masks.shape} differs from rois shape {arr.shape}")
    rows = []
    for name, explainer in explainers.items():
        trained = explainer.attribute(arr, progress=progress)
        random = explainer.with_model(randomize_group4(explainer.model, seed)).attribute(arr, progress=progress)
        sims = pd.DataFrame([similarity(a, b) for a, b in zip(trained, random)])
        first = trained[0]
        measure = ("label_agreement" if first.labels is not None else
                   "rank_correlation" if first.evidence is not None else "neighbour_overlap")
        row: dict[str, Any] = {"explainer": name, "method": first.method, "n_rois": len(arr), "measure": measure}
        for col in ("label_agreement", "rank_correlation", "neighbour_overlap"):
            row[col] = _nanmean(sims[col].to_numpy(dtype=float))
        row["similarity"] = row[measure]
        for kind, atts in (("trained", trained), ("random", random)):
            shares = ([energy_share(np.clip(a.evidence, 0, None), m) for a, m in zip(atts, masks)]
                      if masks is not None and first.evidence is not None else [])
            row[f"mass_share_{kind}"] = _nanmean(np.asarray(shares, dtype=float))
        row["changes"] = bool(row["similarity"] <= RANDOM_SIMILARITY_MAX)   # NaN compares False
        rows.append(row)
    table = pd.DataFrame(rows)[list(RANDOMISATION_COLUMNS)]
    table.attrs.update(random_seed=int(seed), random_similarity_max=RANDOM_SIMILARITY_MAX)
    return table


def _nanmean(values: np.ndarray) -> float:
    finite = values[~np.isnan(values)]
    return float(np.mean(finite)) if finite.size else float("nan")


# --------------------------------------------------------------------------- ground truth


def mass_margin(explanation: Explanation, mask: np.ndarray, min_cover: float = 0.25) -> float:
    """``P(Lesion | mass cell) - P(Lesion | other cell)`` (:func:`~mammo_lib.explain.eq6.lesion_agreement`;
    a mass cell has at least ``min_cover`` of its window in ``mask``). NaN when one kind of cell
    is absent; > 0 when the *Lesion* cells follow the mass.

    >>> from mammo_lib.explain.eq6 import Explanation
    >>> e = Explanation(0, [0.6, 0.4], ("benign", "malignant"), [[0, 0], [0, 0]], [[0, 0], [0, 0]],
    ...                 [[0, 0], [0, 0]], [["Lesion", "Background"], ["Background", "Background"]], 2, 2)
    >>> m = np.zeros((4, 4)); m[:2, :2] = 1
    >>> mass_margin(e, m)
    1.0
    """
    r = lesion_agreement(explanation, mask, min_cover=min_cover)
    return float(r["p_lesion_on_mass"] - r["p_lesion_off_mass"])


# --------------------------------------------------------------------------- table


def explanation_sanity(model: nn.Module, rois: np.ndarray | Iterable[np.ndarray],
                       masks: np.ndarray | Iterable[np.ndarray], *,
                       rules: Sequence[str] = DEFAULT_SANITY_RULES, random_seed: int = 0,
                       batch_size: int = 16, device: str | torch.device = "cpu",
                       progress: bool = True, min_cover: float = 0.25, levels: int = 8,
                       window: int = 5, distance: int = 1, angle: float = 0.0,
                       mean: MeanForm = "paper", soft_percentile: float = DEFAULT_SOFT_PERCENTILE,
                       initial_model: nn.Module | None = None, other_model: nn.Module | None = None,
                       baseline_rules: Sequence[str] | None = None) -> pd.DataFrame:
    """The sanity table of the Eq. 6 explanation: one row per ``background_rule``.

    For every ROI and rule, the Eq. 6 explanation (:func:`~mammo_lib.explain.eq6.explain_roi`, step-1
    images by :func:`~mammo_lib.explain.eq6.lesion_background` with the GLCM arguments given) of
    ``model`` and of ``randomize_group4(model, random_seed)``; columns (means over the ROIs,
    NaNs skipped):

    - ``pixel_change_agreement`` / ``random_net_pixel_change_agreement``: :func:`pixel_change_agreement`
      of the trained / randomised network;
    - ``random_net_label_agreement``, ``random_net_rank_correlation``: :func:`randomisation_check`;
      ``random_net_kappa``: Cohen's kappa of the same two label sets;
    - ``mass_margin_trained``, ``mass_margin_random``, ``mass_margin_minus_random``: :func:`mass_margin`
      and their difference;
    - ``lesion_fraction_trained`` / ``_random``: share of *Lesion* cells;
    - ``trunk_label_agreement`` / ``trunk_kappa``: the trained model's labels against those of
      ``initial_model`` (the network before group 4 was trained: the trunk-only read-out);
    - ``other_model_label_agreement`` / ``other_model_kappa``: against ``other_model`` (a second
      model trained on the same trunk, e.g. fine-tune beside knowledge transfer);
      these four are NaN when the model is not given, and for rules outside ``baseline_rules``
      (default: every rule; each baseline costs one Eq. 6 explanation per ROI and rule);
    - ``passes``: ``pixel_change_agreement <= PIXEL_CHANGE_AGREEMENT_MAX`` and
      ``random_net_label_agreement <= RANDOM_LABEL_AGREEMENT_MAX`` and ``mass_margin_minus_random > 0``;
    - ``default``: True for :data:`~mammo_lib.explain.eq6.DEFAULT_BACKGROUND_RULE` (``"soft"``) when it
      is among ``rules``, else for the rule :func:`choose_default_rule` picks (exactly one row).

    Label agreements are means over the ROIs (equal cell counts, so the pooled share); kappas are
    computed over all cells of all ROIs pooled (a single ROI's grid is often one label).
    ``table.attrs``: ``any_passes`` (False: no rule passed: the explanation is not evidence),
    ``chosen_rule`` (the ``default`` row's rule), ``best_rule`` (:func:`choose_default_rule`),
    ``random_seed``, the thresholds. ``model``'s training flags are restored
    and it is not changed otherwise. The result does not depend on ``batch_size``.

    >>> from mammo_lib.networks.densenet import build_model
    >>> rng = np.random.default_rng(0)
    >>> rois = rng.random((1, 64, 64)).astype(np.float32); masks = np.zeros((1, 64, 64)); masks[0, :32, :32] = 1
    >>> t = explanation_sanity(build_model("small", seed=0), rois, masks, progress=False)
    >>> list(t["rule"]), int(t["default"].sum())
    (['soft', 'otsu', 'subtract_clip'], 1)

    Raises:
        ValueError: no ROI, ROI / mask counts or shapes differ, no or repeated rules, unknown rule,
            or a baseline model whose group-4 grid differs from ``model``'s.
    """
    roi_list = [check_grey_image(np.asarray(r), "roi") for r in rois]
    mask_list = [np.asarray(m) for m in masks]
    if not roi_list:
        raise ValueError("no ROI given")
    if len(mask_list) != len(roi_list):
        raise ValueError(f"{len(roi_list)} ROIs but {len(mask_list)} masks")
    for i, (r, m) in enumerate(zip(roi_list, mask_list)):
        if m.shape != r.shape:
            raise ValueError(f"mask {i} shape {m.shape} differs from ROI {i} shape {r.shape}")
    if isinstance(rules, str):
        rules = (rules,)
    canon = [canonical_background_rule(r) for r in rules]
    if not canon:
        raise ValueError("no background rule given")
    if len(set(canon)) != len(canon):
        raise ValueError(f"rules repeat (after aliases): {canon}")
    if isinstance(baseline_rules, str):
        baseline_rules = (baseline_rules,)
    with_baselines = set(canon) if baseline_rules is None else {canonical_background_rule(r) for r in baseline_rules}
    if not with_baselines <= set(canon):
        raise ValueError(f"baseline_rules {sorted(with_baselines - set(canon))} are not among the rules {canon}")

    random_model = randomize_group4(model, random_seed)
    per_rule: dict[str, list[dict[str, float]]] = {r: [] for r in canon}
    labels: dict[str, dict[str, list[np.ndarray]]] = {r: {} for r in canon}
    device = torch.device(device)
    common: dict[str, Any] = dict(batch_size=batch_size, device=device)
    random_model.to(device)
    baselines = {"randomised": random_model, "initial": initial_model, "other": other_model}
    with contextlib.ExitStack() as stack:  # each model moved once, not per explanation
        for m in [model] + [b for b in (initial_model, other_model) if b is not None]:
            stack.enter_context(on_device(m, device))
            stack.enter_context(preserve_mode(m))
        _tabulate(model, baselines, with_baselines, roi_list, mask_list, canon, per_rule, labels, common, progress,
                  min_cover, dict(levels=levels, window=window, distance=distance, angle=angle,
                                  mean=mean), soft_percentile)

    rows = []
    for rule in canon:
        frame = pd.DataFrame(per_rule[rule])
        row: dict[str, Any] = {"rule": rule, "n_rois": len(roi_list)}
        for col in frame.columns:
            values = frame[col].to_numpy(dtype=float)
            row[col] = float(np.mean(values[~np.isnan(values)])) if (~np.isnan(values)).any() else float("nan")
        trained = np.concatenate(labels[rule]["trained"])
        for prefix, which in _BASELINES.items():
            if which in labels[rule]:
                other = np.concatenate(labels[rule][which])
                row[f"{prefix}_label_agreement"] = float(np.mean(trained == other))
                row[f"{prefix}_kappa"] = cohen_kappa(trained, other)
            else:
                row[f"{prefix}_label_agreement"] = row[f"{prefix}_kappa"] = float("nan")
        rows.append(row)
    table = pd.DataFrame(rows)
    table["passes"] = _passes(table)
    best = choose_default_rule(table)
    chosen = DEFAULT_BACKGROUND_RULE if DEFAULT_BACKGROUND_RULE in canon else best
    table["default"] = table["rule"] == chosen
    table = table[list(SANITY_COLUMNS)]
    table.attrs.update(any_passes=bool(table["passes"].any()), chosen_rule=chosen, best_rule=best,
                       random_seed=int(random_seed),
                       pixel_change_agreement_max=PIXEL_CHANGE_AGREEMENT_MAX,
                       random_label_agreement_max=RANDOM_LABEL_AGREEMENT_MAX)
    return table


def _tabulate(model: nn.Module, baselines: dict[str, Any], with_baselines: set[str], roi_list: list[np.ndarray],
              mask_list: list[np.ndarray], canon: list[str], per_rule: dict[str, list[dict[str, float]]],
              labels: dict[str, dict[str, list[np.ndarray]]], common: dict[str, Any], progress: bool,
              min_cover: float, glcm: dict[str, Any], soft_percentile: float) -> None:
    """The per-ROI rows of :func:`explanation_sanity` (appended to ``per_rule``) and the cell
    labels of the trained model and of each given baseline model (appended to ``labels``)."""
    for roi, mask in tqdm(list(zip(roi_list, mask_list)), desc="explanation sanity",
                          disable=not progress):
        variance = glcm_variance_map(roi, **glcm)
        for rule in canon:
            lesion, background = split_roi(roi, variance, rule, soft_percentile)
            e_t = explain_roi(model, roi, lesion=lesion, background=background, **common)
            labels[rule].setdefault("trained", []).append(np.asarray(e_t.cell_labels).ravel())
            e_r = explain_roi(baselines["randomised"], roi, lesion=lesion, background=background, **common)
            for which, m in baselines.items():
                if m is None or (which != "randomised" and rule not in with_baselines):
                    continue
                e_b = e_r if which == "randomised" else explain_roi(m, roi, lesion=lesion,
                                                                    background=background, **common)
                if e_b.grid != e_t.grid:
                    raise ValueError(f"the {which} model's group-4 grid is {e_b.grid}x{e_b.grid}, the "
                                     f"trained model's {e_t.grid}x{e_t.grid}: not the same network")
                labels[rule].setdefault(which, []).append(np.asarray(e_b.cell_labels).ravel())
            check = randomisation_check(e_t, e_r)
            m_t, m_r = mass_margin(e_t, mask, min_cover), mass_margin(e_r, mask, min_cover)
            per_rule[rule].append({
                "pixel_change_agreement": e_t.sanity["pixel_change_agreement"],
                "random_net_pixel_change_agreement": e_r.sanity["pixel_change_agreement"],
                "random_net_rank_correlation": check["rank_correlation"],
                "mass_margin_trained": m_t, "mass_margin_random": m_r,
                "mass_margin_minus_random": m_t - m_r,
                "lesion_fraction_trained": e_t.lesion_fraction,
                "lesion_fraction_random": e_r.lesion_fraction,
            })


def _passes(table: pd.DataFrame) -> pd.Series:
    """The ``passes`` column (NaN in any criterion fails)."""
    return ((table["pixel_change_agreement"] <= PIXEL_CHANGE_AGREEMENT_MAX)
            & (table["random_net_label_agreement"] <= RANDOM_LABEL_AGREEMENT_MAX)
            & (table["mass_margin_minus_random"] > 0)).astype(bool)


def choose_default_rule(table: pd.DataFrame) -> str:
    """The rule the sanity measurements favour (``table.attrs["best_rule"]``), from a sanity table.

    It is reported, not adopted: the default stays :data:`~mammo_lib.explain.eq6.DEFAULT_BACKGROUND_RULE`
    (the complementary ``"soft"`` split, ``docs/DECISIONS.md``).

    Among the rows that pass (column ``passes``, computed from the thresholds when absent), the
    one with the lowest ``pixel_change_agreement``, ties broken by the highest
    ``mass_margin_minus_random`` (then by row order; NaN sorts last). If no row passes, the best
    row by the same ordering; whether any passed is ``table["passes"].any()``, which
    :func:`explanation_sanity` stores as ``table.attrs["any_passes"]``.

    >>> t = pd.DataFrame({"rule": ["soft", "otsu"], "pixel_change_agreement": [0.5, 0.4],
    ...                   "random_net_label_agreement": [0.6, 0.9], "mass_margin_minus_random": [0.2, 0.3]})
    >>> choose_default_rule(t)   # otsu changes fewer labels with the random net: it fails
    'soft'

    Raises:
        ValueError: an empty table or one without the needed columns.
    """
    needed = ["rule", "pixel_change_agreement", "mass_margin_minus_random"]
    if "passes" not in table.columns:
        needed.append("random_net_label_agreement")
    missing = [c for c in needed if c not in table.columns]
    if missing:
        raise ValueError(f"sanity table lacks columns {missing}")
    if len(table) == 0:
        raise ValueError("sanity table is empty")
    passes = (table["passes"] if "passes" in table.columns else _passes(table)).astype(bool)
    pool = table[passes.to_numpy()] if passes.any() else table
    order = pool.assign(_neg_margin=-pool["mass_margin_minus_random"].astype(float),
                        _pos=np.arange(len(pool)))
    order = order.sort_values(["pixel_change_agreement", "_neg_margin", "_pos"], na_position="last",
                              kind="mergesort")
    return str(order["rule"].iloc[0])


__all__ = ["PIXEL_CHANGE_AGREEMENT_MAX", "RANDOM_LABEL_AGREEMENT_MAX", "RANDOM_SIMILARITY_MAX", "DEFAULT_SANITY_RULES",
           "RANDOMISATION_COLUMNS", "randomisation_table",
           "GROUP4_PREFIXES", "SANITY_COLUMNS", "pixel_change_labels", "pixel_change_agreement",
           "randomize_group4", "randomisation_check", "mass_margin", "explanation_sanity",
           "choose_default_rule"]
