"""Sanity measures of the Eq. 6 explanation (mammo_lib.explain.sanity): pixel change, model randomisation,
mass margin and the per-rule sanity table."""
from __future__ import annotations

import doctest
import math

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from mammo_lib.explain import eq6 as explain_module
from mammo_lib.explain import sanity as sanity_module
from mammo_lib.explain.eq6 import BACKGROUND, LESION, Explanation
from mammo_lib.networks.densenet import build_model
from mammo_lib.explain.sanity import (GROUP4_PREFIXES, PIXEL_CHANGE_AGREEMENT_MAX, RANDOM_LABEL_AGREEMENT_MAX,
                              SANITY_COLUMNS, choose_default_rule, explanation_sanity, mass_margin,
                              pixel_change_agreement, pixel_change_labels, randomisation_check,
                              randomize_group4)

L, B = LESION, BACKGROUND


def make_explanation(**overrides) -> Explanation:
    """2x2 grid of 3 px windows; labels [[L, B], [B, L]] from dis^L < dis^B."""
    fields = dict(prediction=1, probabilities=[0.25, 0.75], label_names=("benign", "malignant"),
                  activation_map=np.zeros((2, 2)), dis_lesion=[[0.1, 0.2], [0.3, 0.4]],
                  dis_background=[[0.2, 0.2], [0.1, 0.5]], cell_labels=[[L, B], [B, L]], window=3, grid=2)
    fields.update(overrides)
    if "cell_labels" not in overrides:
        fields["cell_labels"] = np.where(np.asarray(fields["dis_lesion"]) < np.asarray(fields["dis_background"]), L, B)
    return Explanation(**fields)


def cells(values, side: int = 2) -> np.ndarray:
    """A (g*side)^2 image with constant side x side cells."""
    return np.kron(np.asarray(values, dtype=np.float64), np.ones((side, side))).astype(np.float32)


def disk(size: int, cy: float, cx: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    return ((yy - cy) ** 2 + (xx - cx) ** 2 < r ** 2).astype(np.uint8)


# ----------------------------------------------------------------------------- case tables

_ONE = np.array([[0.25, 0.75], [0.5, 0.5]], np.float32)
_C = np.full((4, 4), 0.5, np.float32)
_C_L = _C.copy()
_C_L[0, 0] = 1.0                       # cell (0, 0): Lesion differs in one pixel by 0.5 -> L2 0.5
_C_B = _C.copy()
_C_B[0:2, 0:2] = 0.7                   # cell (0, 0): Background differs in four pixels by 0.2 -> L2 0.4
_C_B[2:4, 2:4] = 0.1                   # cell (1, 1): Background differs by 0.4 x 4 -> L2 0.8; Lesion 0

# (name, roi, lesion, background, grid, labels by hand)
PIXEL_CHANGE_CASES = [
    # constant cells c, Lesion 0.75, Background 0.25: ||.|| = 2 |c - v|; c = 0.5 is a tie -> Background
    ("constant_cells", cells([[0.125, 0.5], [0.875, 0.25]]), np.full((4, 4), 0.75, np.float32),
     np.full((4, 4), 0.25, np.float32), 2, [[B, B], [L, B]]),
    # one cell, equal L2 (0.5 in one pixel vs 0.25 in four; exact in binary): tie -> Background
    ("l2_tie", _ONE, np.array([[0.25, 0.25], [0.5, 0.5]], np.float32),
     np.array([[0.5, 0.5], [0.75, 0.25]], np.float32), 1, [[B]]),
    ("l2_tie_broken", _ONE, np.array([[0.25, 0.3125], [0.5, 0.5]], np.float32),
     np.array([[0.5, 0.5], [0.75, 0.25]], np.float32), 1, [[L]]),
    # L2, not the mean change: cell (0, 0) Lesion mean |d| 0.125 < 0.2 but L2 0.5 > 0.4 -> Background;
    # unchanged cells (0, 1), (1, 0) tie -> Background; cell (1, 1) Lesion 0 < 0.8 -> Lesion
    ("l2_not_mean", _C, _C_L, _C_B, 2, [[B, B], [B, L]]),
]

# (name, call, exception, message)
PIXEL_CHANGE_FAIL_CASES = [
    ("shape", lambda: pixel_change_labels(_C, _C[:2, :2], _C, 2), ValueError, "lesion shape"),
    ("grid", lambda: pixel_change_labels(_C, _C, _C, 3), ValueError, "not a multiple of the activation grid 3"),
    ("square", lambda: pixel_change_labels(_C[:, :2], _C[:, :2], _C[:, :2], 2), ValueError, "square"),
    ("range", lambda: pixel_change_labels(_C, _C + 1, _C, 2), ValueError, r"\[0, 1\]"),
    ("agreement roi", lambda: pixel_change_agreement(make_explanation(), _C, _C, _C), ValueError,
     "does not match the explanation's 2x2 grid of 3 px windows"),
]

_E = make_explanation()  # dis^L - dis^B = [[-0.1, 0], [0.2, -0.1]], labels [[L, B], [B, L]]

# (name, second explanation, label_agreement, rank_correlation)
RANDOMISATION_CASES = [
    ("identical", _E, 1.0, 1.0),
    ("swapped_distances", make_explanation(dis_lesion=_E.dis_background, dis_background=_E.dis_lesion), 0.25, -1.0),
    ("scaled", make_explanation(dis_lesion=3 * _E.dis_lesion, dis_background=3 * _E.dis_background), 1.0, 1.0),
    ("constant_difference", make_explanation(dis_lesion=np.ones((2, 2)), dis_background=np.ones((2, 2))), 0.5, math.nan),
    ("labels_only_differ", make_explanation(cell_labels=[[B, B], [B, B]]), 0.5, 1.0),
]

# (name, mask filler on 6x6, margin by hand) for labels [[L, B], [B, L]] with 3 px windows
MARGIN_CASES = [
    ("top_left", lambda m: m.__setitem__((slice(0, 3), slice(0, 3)), 1), 1.0 - 1 / 3),
    ("top_right", lambda m: m.__setitem__((slice(0, 3), slice(3, 6)), 1), 0.0 - 2 / 3),
    ("diagonal", lambda m: (m.__setitem__((slice(0, 3), slice(0, 3)), 1),
                            m.__setitem__((slice(3, 6), slice(3, 6)), 1)), 1.0),
    ("under_min_cover", lambda m: m.__setitem__((slice(0, 1), slice(0, 2)), 1), math.nan),  # 2/9 < 0.25
    ("all_mass", lambda m: m.__setitem__((slice(None), slice(None)), 1), math.nan),
]


def table(**cols) -> pd.DataFrame:
    base = dict(rule=["soft", "otsu", "subtract_clip"], pixel_change_agreement=[0.5, 0.4, 0.9],
                random_net_label_agreement=[0.5, 0.5, 0.5], mass_margin_minus_random=[0.1, 0.1, 0.1])
    base.update(cols)
    return pd.DataFrame(base)


# (name, table, chosen rule)
CHOOSE_CASES = [
    ("lowest_pixel_change_passing", table(), "otsu"),
    ("otsu_fails_random", table(random_net_label_agreement=[0.5, 0.9, 0.5]), "soft"),
    ("otsu_fails_margin", table(mass_margin_minus_random=[0.1, 0.0, 0.1]), "soft"),
    ("tie_higher_margin", table(pixel_change_agreement=[0.4, 0.4, 0.4], mass_margin_minus_random=[0.1, 0.1, 0.3]),
     "subtract_clip"),
    ("tie_then_row_order", table(pixel_change_agreement=[0.4, 0.4, 0.9]), "soft"),
    ("none_passes_best_anyway", table(pixel_change_agreement=[0.8, 0.7, 0.9]), "otsu"),
    ("nan_last", table(pixel_change_agreement=[math.nan, 0.7, 0.9]), "otsu"),
    ("passes_column_wins", table().assign(passes=[True, False, False]), "soft"),
]

# (name, call, exception, message)
CHOOSE_FAIL_CASES = [
    ("empty", lambda: choose_default_rule(table().iloc[:0]), ValueError, "empty"),
    ("columns", lambda: choose_default_rule(table().drop(columns="mass_margin_minus_random")), ValueError,
     r"lacks columns \['mass_margin_minus_random'\]"),
]

S = 64  # build_model("small") gives a 2x2 group-4 grid at 64 px (1x1 at 32-56 px)
_RNG = np.random.default_rng(0)
_MASKS = np.stack([disk(S, 22, 24, 12), disk(S, 40, 36, 14)])
ROIS = np.clip(0.25 + 0.45 * _MASKS + 0.15 * _RNG.random((2, S, S)), 0, 1).astype(np.float32)

# (name, call, exception, message)
SANITY_FAIL_CASES = [
    ("counts", lambda m: explanation_sanity(m, ROIS, _MASKS[:1], progress=False), ValueError, "2 ROIs but 1 masks"),
    ("shape", lambda m: explanation_sanity(m, ROIS, _MASKS[:, :32, :32], progress=False), ValueError,
     "mask 0 shape"),
    ("no_roi", lambda m: explanation_sanity(m, ROIS[:0], _MASKS[:0], progress=False), ValueError, "no ROI"),
    ("repeat", lambda m: explanation_sanity(m, ROIS, _MASKS, rules=("subtract_clip", "unit_difference"),
                                            progress=False), ValueError, "rules repeat"),
    ("unknown", lambda m: explanation_sanity(m, ROIS, _MASKS, rules=("ratio",), progress=False), ValueError,
     "background_rule must be one of"),
    ("no_rule", lambda m: explanation_sanity(m, ROIS, _MASKS, rules=(), progress=False), ValueError,
     "no background rule"),
    ("not_densenet", lambda m: explanation_sanity(nn.Linear(2, 2), ROIS, _MASKS, progress=False), TypeError,
     "expected a torchvision DenseNet"),
]


@pytest.fixture(scope="module")
def small_model() -> nn.Module:
    return build_model("small", seed=0)


# ----------------------------------------------------------------------------- pixel change


@pytest.mark.parametrize("name, roi, lesion, background, grid, want", PIXEL_CHANGE_CASES,
                         ids=[c[0] for c in PIXEL_CHANGE_CASES])
def test_pixel_change_labels_by_hand(name, roi, lesion, background, grid, want):
    assert pixel_change_labels(roi, lesion, background, grid).tolist() == want


@pytest.mark.parametrize("name, call, exc, match", PIXEL_CHANGE_FAIL_CASES, ids=[c[0] for c in PIXEL_CHANGE_FAIL_CASES])
def test_pixel_change_bad_input(name, call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_pixel_change_agreement_counts_equal_cells():
    roi, lesion, background = cells([[0.125, 0.5], [0.875, 0.25]], 3), np.full((6, 6), 0.75, np.float32), \
        np.full((6, 6), 0.25, np.float32)
    # trivial labels [[B, B], [L, B]] vs the explanation's [[L, B], [B, L]]: one cell agrees
    assert pixel_change_agreement(make_explanation(), roi, lesion, background) == 0.25
    same = make_explanation(cell_labels=[[B, B], [L, B]])
    assert pixel_change_agreement(same, roi, lesion, background) == 1.0


# ----------------------------------------------------------------------------- model randomisation


def _perturbed_small_model() -> nn.Module:
    """Small DenseNet whose every group-4 tensor differs from a fresh initialisation."""
    model = build_model("small", seed=0)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if t.is_floating_point():
                t.add_(0.01 * torch.randn(t.shape, generator=gen))
            else:
                t.add_(3)  # num_batches_tracked
    model.train()
    model.features.denseblock1.eval()  # a mixed mode, restored as it was
    model.classifier.weight.requires_grad_(False)
    return model


def test_randomize_group4_changes_exactly_group4_and_classifier():
    model = _perturbed_small_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = {n: m.training for n, m in model.named_modules()}
    rng_state = torch.random.get_rng_state()
    clone = randomize_group4(model, seed=3)
    assert torch.equal(torch.random.get_rng_state(), rng_state)  # global RNG untouched
    after = model.state_dict()
    for k, v in before.items():  # the original is untouched
        assert torch.equal(after[k], v), k
    assert {n: m.training for n, m in model.named_modules()} == flags
    new = clone.state_dict()
    changed = {k for k in before if not torch.equal(new[k], before[k])}
    assert changed == {k for k in before if k.startswith(GROUP4_PREFIXES)}
    assert {n: m.training for n, m in clone.named_modules()} == flags
    assert clone.classifier.weight.requires_grad is False
    # torchvision's DenseNet init: BN 1 / 0 with fresh statistics, Linear bias 0
    assert torch.all(clone.features.norm5.weight == 1) and torch.all(clone.features.norm5.bias == 0)
    assert torch.all(clone.features.norm5.running_mean == 0) and torch.all(clone.features.norm5.running_var == 1)
    assert int(clone.features.norm5.num_batches_tracked) == 0 and torch.all(clone.classifier.bias == 0)
    conv = clone.features.denseblock4.denselayer1.conv1.weight.detach()
    fan_in = conv[0].numel()
    assert float(conv.std()) == pytest.approx(math.sqrt(2 / fan_in), rel=0.3)  # kaiming_normal (a = 0)
    # same seed, same copy; another seed, another copy
    again = randomize_group4(model, seed=3).state_dict()
    assert all(torch.equal(again[k], new[k]) for k in new)
    other = randomize_group4(model, seed=4)
    assert not torch.equal(other.features.denseblock4.denselayer1.conv1.weight, conv)


@pytest.mark.parametrize("model, seed, exc, match", [
    (nn.Linear(2, 2), 0, TypeError, "expected a torchvision DenseNet"),
    (None, 0.5, TypeError, "seed must be an int"),
    (None, True, TypeError, "seed must be an int"),
])
def test_randomize_group4_bad_input(small_model, model, seed, exc, match):
    with pytest.raises(exc, match=match):
        randomize_group4(small_model if model is None else model, seed)


@pytest.mark.parametrize("name, other, agreement, rho", RANDOMISATION_CASES, ids=[c[0] for c in RANDOMISATION_CASES])
def test_randomisation_check_by_hand(name, other, agreement, rho):
    r = randomisation_check(_E, other)
    assert r["label_agreement"] == pytest.approx(agreement)
    assert math.isnan(r["rank_correlation"]) if math.isnan(rho) else r["rank_correlation"] == pytest.approx(rho)


def test_randomisation_check_one_cell_and_bad_grid(recwarn):
    one = Explanation(0, [0.6, 0.4], ("a", "b"), [[0.0]], [[0.1]], [[0.2]], [[L]], 4, 1)
    r = randomisation_check(one, one)
    assert r["label_agreement"] == 1.0 and math.isnan(r["rank_correlation"])
    assert not recwarn.list  # NaN without scipy's constant-input warning
    with pytest.raises(ValueError, match="different grids: 1 vs 2"):
        randomisation_check(one, _E)


# ----------------------------------------------------------------------------- mass margin


@pytest.mark.parametrize("name, fill, margin", MARGIN_CASES, ids=[c[0] for c in MARGIN_CASES])
def test_mass_margin_by_hand(name, fill, margin):
    mask = np.zeros((6, 6), np.uint8)
    fill(mask)
    got = mass_margin(make_explanation(), mask)
    assert math.isnan(got) if math.isnan(margin) else got == pytest.approx(margin)


def test_mass_margin_min_cover():
    mask = np.zeros((6, 6), np.uint8)
    mask[0:1, 0:2] = 1  # 2 of 9 pixels of cell (0, 0)
    assert mass_margin(make_explanation(), mask, min_cover=0.2) == pytest.approx(1.0 - 1 / 3)
    with pytest.raises(ValueError, match="min_cover"):
        mass_margin(make_explanation(), mask, min_cover=0.0)


# ----------------------------------------------------------------------------- table


@pytest.mark.parametrize("name, t, want", CHOOSE_CASES, ids=[c[0] for c in CHOOSE_CASES])
def test_choose_default_rule(name, t, want):
    assert choose_default_rule(t) == want


@pytest.mark.parametrize("name, call, exc, match", CHOOSE_FAIL_CASES, ids=[c[0] for c in CHOOSE_FAIL_CASES])
def test_choose_default_rule_bad_input(name, call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_explanation_sanity_on_a_small_model():
    model = _perturbed_small_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = {n: m.training for n, m in model.named_modules()}
    t1 = explanation_sanity(model, ROIS, _MASKS, random_seed=0, batch_size=1, progress=False)
    t8 = explanation_sanity(model, list(ROIS), list(_MASKS), random_seed=0, batch_size=8, progress=False)
    assert list(t1.columns) == list(SANITY_COLUMNS)
    assert list(t1["rule"]) == ["soft", "otsu", "subtract_clip"] and (t1["n_rois"] == 2).all()
    assert t1["default"].sum() == 1
    assert t1.attrs["chosen_rule"] == t1.loc[t1["default"], "rule"].item()
    assert t1.attrs["any_passes"] == bool(t1["passes"].any())
    want_pass = ((t1["pixel_change_agreement"] <= PIXEL_CHANGE_AGREEMENT_MAX)
                 & (t1["random_net_label_agreement"] <= RANDOM_LABEL_AGREEMENT_MAX)
                 & (t1["mass_margin_minus_random"] > 0))
    assert t1["passes"].tolist() == want_pass.tolist()
    for col in ("pixel_change_agreement", "random_net_pixel_change_agreement", "random_net_label_agreement",
                "lesion_fraction_trained", "lesion_fraction_random"):
        assert t1[col].between(0, 1).all(), col
        assert np.allclose(t1[col] * 8, np.round(t1[col] * 8))  # means of 2 ROIs x 4 cells
    np.testing.assert_allclose(t1["mass_margin_minus_random"], t1["mass_margin_trained"] - t1["mass_margin_random"])
    pd.testing.assert_frame_equal(t1, t8)  # batching invariance
    assert t1.attrs == t8.attrs
    pd.testing.assert_frame_equal(t1, explanation_sanity(model, ROIS, _MASKS, random_seed=0, batch_size=4,
                                                         progress=False))  # deterministic
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())
    assert {n: m.training for n, m in model.named_modules()} == flags


def test_explanation_sanity_one_rule_matches_explain_roi(small_model):
    """The table's trained-network numbers are those of explain_roi with the same rule."""
    t = explanation_sanity(small_model, ROIS[:1], _MASKS[:1], rules=("unit_difference",), progress=False)
    assert t["rule"].tolist() == ["subtract_clip"] and t["default"].tolist() == [True]
    e = explain_module.explain_roi(small_model, ROIS[0], background_rule="subtract_clip")
    assert t["pixel_change_agreement"].item() == e.sanity["pixel_change_agreement"]
    assert t["lesion_fraction_trained"].item() == e.lesion_fraction
    assert t["mass_margin_trained"].item() == pytest.approx(mass_margin(e, _MASKS[0]), nan_ok=True)


@pytest.mark.parametrize("name, call, exc, match", SANITY_FAIL_CASES, ids=[c[0] for c in SANITY_FAIL_CASES])
def test_explanation_sanity_bad_input(small_model, name, call, exc, match):
    with pytest.raises(exc, match=match):
        call(small_model)


@pytest.mark.parametrize("module", [sanity_module, explain_module], ids=["sanity", "explain"])
def test_docstring_examples(module):
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


# ----------------------------------------------------------------------------- baselines


def test_default_rule_is_the_complementary_soft_split():
    """Code default, module docstring and docs/DECISIONS.md name the same rule."""
    from pathlib import Path

    assert explain_module.DEFAULT_BACKGROUND_RULE == "soft"
    assert explain_module.canonical_background_rule(None) == "soft"
    assert '``"soft"`` (the default)' in explain_module.lesion_background.__doc__
    decisions = (Path(__file__).resolve().parents[2] / "docs" / "DECISIONS.md").read_text()
    assert "`explain.eq6.DEFAULT_BACKGROUND_RULE` = `soft`" in decisions
    assert "- `soft` (default)" in decisions


def test_sanity_baselines_trunk_and_other_model():
    """trunk_* / other_model_* are the raw agreement and Cohen's kappa of the trained model's cell
    labels with those of the given model, pooled over ROIs; NaN when no model is given."""
    from mammo_lib.metrics.stats import cohen_kappa

    trained = _perturbed_small_model()
    initial = build_model("small", seed=0)           # the same network before the perturbation
    other = randomize_group4(trained, seed=5)
    rules = ("soft",)
    t = explanation_sanity(trained, ROIS, _MASKS, rules=rules, initial_model=initial, other_model=other,
                           progress=False)
    assert list(t.columns) == list(SANITY_COLUMNS)
    assert t["default"].tolist() == [True] and t.attrs["chosen_rule"] == "soft"
    lab = {name: np.concatenate([np.asarray(explain_module.explain_roi(m, r, background_rule="soft").cell_labels).ravel()
                                 for r in ROIS])
           for name, m in (("trained", trained), ("initial", initial), ("other", other))}
    for prefix, name in (("trunk", "initial"), ("other_model", "other")):
        assert t[f"{prefix}_label_agreement"].item() == pytest.approx(np.mean(lab["trained"] == lab[name]))
        assert t[f"{prefix}_kappa"].item() == pytest.approx(cohen_kappa(lab["trained"], lab[name]), nan_ok=True)
    # the trained model against itself: agreement 1; no baseline given: NaN
    t_self = explanation_sanity(trained, ROIS[:1], _MASKS[:1], rules=rules, initial_model=trained, progress=False)
    assert t_self["trunk_label_agreement"].item() == 1.0
    assert math.isnan(t_self["other_model_label_agreement"].item()) and math.isnan(t_self["other_model_kappa"].item())


def test_sanity_default_row_is_soft_and_best_rule_reported(small_model):
    t = explanation_sanity(small_model, ROIS[:1], _MASKS[:1], progress=False)
    assert t.loc[t["default"], "rule"].item() == "soft" == t.attrs["chosen_rule"]
    assert t.attrs["best_rule"] == choose_default_rule(t)


def test_sanity_baseline_on_another_grid_is_rejected(small_model):
    import copy

    coarse = copy.deepcopy(small_model)
    coarse.features.transition3.pool = nn.Identity()   # group-4 grid 4x4 instead of 2x2 at 64 px
    with pytest.raises(ValueError) as e:
        explanation_sanity(small_model, ROIS[:1], _MASKS[:1], rules=("soft",), other_model=coarse, progress=False)
    assert str(e.value) == ("the other model's group-4 grid is 4x4, the trained model's 2x2: "
                            "not the same network")


def test_sanity_baselines_only_for_the_given_rules(small_model):
    other = randomize_group4(small_model, seed=2)
    t = explanation_sanity(small_model, ROIS[:1], _MASKS[:1], rules=("soft", "otsu"), other_model=other,
                           initial_model=small_model, baseline_rules=("soft",), progress=False)
    soft, otsu = t.set_index("rule").loc["soft"], t.set_index("rule").loc["otsu"]
    assert soft["trunk_label_agreement"] == 1.0 and not math.isnan(soft["other_model_label_agreement"])
    for col in ("trunk_label_agreement", "trunk_kappa", "other_model_label_agreement", "other_model_kappa"):
        assert math.isnan(otsu[col]), col
    assert not math.isnan(otsu["random_net_label_agreement"])   # the randomisation check is never skipped
    with pytest.raises(ValueError) as e:
        explanation_sanity(small_model, ROIS[:1], _MASKS[:1], rules=("soft",), baseline_rules=("otsu",), progress=False)
    assert str(e.value) == "baseline_rules ['otsu'] are not among the rules ['soft']"
