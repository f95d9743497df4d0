"""Tests of mammo_lib.protocol.mechanism: the confounder's logit effect split exactly into pass-through and
own channels, the classifier's weights on each half, the confounder energy, the table."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from mammo_lib.protocol.mechanism import (MECHANISM_COLUMNS, MechanismArm, calcification_contrast, classifier_weight_split,
                                 confounder_energy, confounder_energy_cases, confounder_masks, contrast_pairs,
                                 logit_split, margin_weights, mechanism_table, pair_caches, pair_masks,
                                 pooled_activations, split_means)
from mammo_lib.networks.densenet import build_model, passthrough_channels
from mammo_lib.engines.trunk_cache import build_cache, group4_maps_cached

S = 64  # small DenseNet: 2x2 group-4 grid, 32-pixel cells


def _renderings(n=6, seed=0):
    """Two renderings of the same cases: b, and a = b with a bright square (the 'confounder')."""
    rng = np.random.default_rng(seed)
    b = rng.random((n, S, S), dtype=np.float32) * 0.5
    a = b.copy()
    conf = np.zeros((n, S, S), np.uint8)
    a[:, 4:14, 40:52] = 1.0
    conf[:, 4:14, 40:52] = 1
    masks = np.zeros((n, S, S), np.uint8)
    masks[:, 24:44, 20:40] = 1
    return a, b, conf, masks, np.arange(n) % 2


@pytest.fixture(scope="module")
def caches():
    a, b, conf, masks, y = _renderings()
    out = {}
    for head in ("gap", "gap_own"):
        model = build_model("small", seed=3, head=head)
        ids = [f"c{i}" for i in range(len(a))]
        out[head] = (model, *(build_cache(model, im, masks, labels=y, ids=ids, flips=("none",), progress=False)
                              for im in (a, b)))
    return out, conf


def _set_classifier(model, w1_minus_w0):
    with torch.no_grad():
        model.classifier.weight.zero_()
        model.classifier.weight[1] = torch.as_tensor(w1_minus_w0, dtype=torch.float32)
        model.classifier.bias.copy_(torch.tensor([0.3, -0.2]))


@pytest.mark.parametrize("head", ["gap", "gap_own"])
def test_split_adds_up_to_the_logit_difference(caches, head):
    (nets, _) = caches
    model, a, b = nets[head]
    s = logit_split(model, a, b)
    assert list(s.columns) == ["case_id", "label", "margin_a", "margin_b", "total", "passthrough", "own"]
    assert s["case_id"].tolist() == a.ids
    # total is the network's own logit margin difference, computed through predict-like forwards
    with torch.no_grad():
        from mammo_lib.engines.trunk_cache import group4_activation, head_logits
        model.eval()
        za = head_logits(model, group4_activation(model, a.features[:, 0])).double()
        zb = head_logits(model, group4_activation(model, b.features[:, 0])).double()
    np.testing.assert_allclose(s["total"], ((za[:, 1] - za[:, 0]) - (zb[:, 1] - zb[:, 0])).numpy(), rtol=0, atol=1e-6)
    np.testing.assert_allclose(s["total"], s["passthrough"] + s["own"], rtol=0, atol=1e-5)
    assert s["total"].abs().max() > 1e-3  # the confounder moves the margin: the check is not 0 = 0
    if head == "gap_own":  # the classifier does not read the pass-through channels
        assert (s["passthrough"] == 0).all()
    else:
        assert s["passthrough"].abs().max() > 1e-4
    m = split_means(s)
    assert m["total"] == pytest.approx(s["total"].mean()) and set(m) == {"total", "passthrough", "own"}


def test_split_by_hand_with_chosen_weights(caches):
    """w1 - w0 = 1 on pass-through channel 0 and 2 on own channel P: passthrough = the change of
    channel 0's pooled activation, own = 2 x channel P's."""
    (nets, _) = caches
    model, a, b = nets["gap"]
    model = build_model("small", seed=3)
    p, c = passthrough_channels(model), model.features.norm5.num_features
    w = np.zeros(c)
    w[0], w[p] = 1.0, 2.0
    _set_classifier(model, w)
    np.testing.assert_array_equal(margin_weights(model), w)
    pa, pb = pooled_activations(model, a).astype(np.float64), pooled_activations(model, b).astype(np.float64)
    s = logit_split(model, a, b)
    np.testing.assert_allclose(s["passthrough"], pa[:, 0] - pb[:, 0], rtol=1e-12)
    np.testing.assert_allclose(s["own"], 2 * (pa[:, p] - pb[:, p]), rtol=1e-12)
    np.testing.assert_allclose(s["margin_a"], pa[:, 0] + 2 * pa[:, p] - 0.5, rtol=1e-5, atol=1e-6)
    # pooled activations are the GAP of group 4's output
    from mammo_lib.engines.trunk_cache import group4_activation
    with torch.no_grad():
        model.eval()
        want = group4_activation(model, a.features[:, 0]).mean(dim=(2, 3)).numpy()
    np.testing.assert_allclose(pa, want, rtol=1e-5, atol=1e-7)


def test_classifier_weight_split_by_hand():
    gap = build_model("small", seed=0)
    p, c = passthrough_channels(gap), gap.features.norm5.num_features
    _set_classifier(gap, np.r_[np.full(p, -1.0), np.full(c - p, 3.0)])
    assert classifier_weight_split(gap) == {"passthrough_abs_w": 1.0, "own_abs_w": 3.0}
    own = build_model("small", seed=0, head="gap_own")
    w = np.arange(c - p, dtype=float) - 4  # -4 .. 11 over 16 own channels: mean |w| = (10 + 66) / 16
    _set_classifier(own, w)
    assert classifier_weight_split(own) == {"passthrough_abs_w": 0.0, "own_abs_w": pytest.approx(76 / 16)}
    np.testing.assert_array_equal(margin_weights(own), np.r_[np.zeros(p), w])


# name, call, expected error
FAIL_CASES = [
    ("flatten head", lambda m, a, b: logit_split(build_model("small", seed=0, head="flatten", input_size=S), a, b),
     "needs a GAP \\+ linear head"),
    ("three classes", lambda m, a, b: classifier_weight_split(build_model("small", seed=0, num_classes=3)), "2 classes"),
    ("other cases", lambda m, a, b: logit_split(m, a, b.subset([1, 0, 2, 3, 4, 5])), "differ at position 0"),
    ("masks short", lambda m, a, b: confounder_energy(m, a, np.zeros((2, S, S), np.uint8)), "one confounder mask"),
    ("no arms", lambda m, a, b: mechanism_table({}, np.zeros((6, S, S))), "at least one arm"),
]


@pytest.mark.parametrize("name,call,msg", FAIL_CASES)
def test_rejects(caches, name, call, msg):
    (nets, _) = caches
    model, a, b = nets["gap"]
    with pytest.raises(ValueError, match=msg):
        call(model, a, b)


def test_confounder_energy_by_hand(caches):
    """The share of the own-channel Eq. 3 energy on the cells the mask touches (any pixel), read
    off the measured maps; an empty mask is left out of the mean."""
    (nets, conf) = caches
    model, a, _ = nets["gap"]
    maps = group4_maps_cached(model, a, channels="own").astype(np.float64)  # (N, 2, 2)
    masks = np.zeros((len(a), S, S), np.uint8)
    masks[0, 0, 40] = 1                  # one pixel in cell (0, 1)
    masks[1, 10:40, 10:40] = 1           # all four cells
    masks[2, 40:50, 0:10] = 1            # cell (1, 0)
    e = confounder_energy_cases(model, a, masks)
    want0 = maps[0, 0, 1] / maps[0].sum()
    want2 = maps[2, 1, 0] / maps[2].sum()
    np.testing.assert_allclose(e["energy_share"][:3], [want0, 1.0, want2], rtol=1e-12)
    np.testing.assert_allclose(e["cells_share"][:3], [0.25, 1.0, 0.25])
    assert e["energy_share"][3:].isna().all() and e["cells_share"][3:].isna().all()
    assert confounder_energy(model, a, masks) == pytest.approx((want0 + 1.0 + want2) / 3)
    assert np.isnan(confounder_energy(model, a, np.zeros_like(masks)))


def test_confounder_masks_and_contrast_by_hand():
    n = 5
    a = np.zeros((n, 4, 4), np.uint8)
    b = np.zeros((n, 4, 4), np.uint8)
    a[0, 0, 0] = 1                     # calc in a only, no dense: kept
    a[1, 0, 0] = 1; b[1, 3, 3] = 1     # calc in both: dropped
    a[2, 0, 0] = 1; a[2, 2, 2] = 2     # calc in a, dense in a only: dropped when matching dense
    a[3, 0, 0] = 1; a[3, 2, 2] = 2; b[3, 1, 1] = 2   # calc in a, dense in both: kept
    b[4, 0, 0] = 1                     # calc in b only: dropped
    assert calcification_contrast(a, b).tolist() == [0, 3]
    assert calcification_contrast(a, b, match_dense=False).tolist() == [0, 2, 3]
    cm = confounder_masks(a)
    assert cm.dtype == np.uint8 and cm.sum() == 4 and cm[2, 2, 2] == 0
    with pytest.raises(ValueError, match="one shape"):
        calcification_contrast(a, b[:2])


def test_mechanism_table_rows(caches):
    (nets, conf) = caches
    arms = {"fine-tune": MechanismArm(nets["gap"][0], nets["gap"][1], nets["gap"][2]),
            "positive control": MechanismArm(nets["gap_own"][0], nets["gap_own"][1], nets["gap_own"][2])}
    t = mechanism_table(arms, conf, cases=[0, 2, 4])
    assert list(t.columns) == list(MECHANISM_COLUMNS) and t["arm"].tolist() == list(arms)
    assert t["head"].tolist() == ["gap", "gap_own"] and (t["n_cases"] == 3).all()
    for (name, arm), (_, row) in zip(arms.items(), t.iterrows()):
        s = split_means(logit_split(arm.model, arm.with_confounder.subset([0, 2, 4]), arm.without.subset([0, 2, 4])))
        assert row["logit effect total"] == pytest.approx(s["total"])
        assert row["logit effect passthrough"] + row["logit effect own"] == pytest.approx(s["total"], abs=1e-5)
        w = classifier_weight_split(arm.model)
        assert (row["|w| passthrough"], row["|w| own"]) == (w["passthrough_abs_w"], w["own_abs_w"])
        assert row["confounder energy own"] == pytest.approx(
            confounder_energy(arm.model, arm.with_confounder.subset([0, 2, 4]), conf[[0, 2, 4]]))
        # the confounder square (rows 4-13, cols 40-51) touches one of the four cells
        assert row["confounder cells' share"] == pytest.approx(0.25)
    assert t.loc[1, "logit effect passthrough"] == 0.0 and t.loc[1, "|w| passthrough"] == 0.0


def test_mechanism_figure(caches):
    from matplotlib.figure import Figure

    from mammo_lib.repro.figures import mechanism_figure

    t = pd.DataFrame({"arm": ["fine-tune", "knowledge transfer", "positive control"],
                      "logit effect passthrough": [1.0, 1.5, 0.0], "logit effect own": [2.0, 0.2, 0.3]})
    fig = mechanism_figure(t)
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    heights = sorted(round(p.get_height(), 6) for p in ax.patches)
    assert heights == sorted([1.0, 1.5, 0.0, 2.0, 0.2, 0.3])
    with pytest.raises(ValueError, match="lacks columns"):
        mechanism_figure(t.drop(columns=["logit effect own"]))


def test_contrast_pairs_by_hand(caches):
    """Three renderings of four cases: per case the first rendering with a calcification (1) and
    the first without one whose dense tissue (2) matches."""
    n = 4
    r = {k: np.zeros((n, 4, 4), np.uint8) for k in ("train", "shifted", "reversed")}
    r["train"][0, 0, 0] = 1                         # case 0: with = train, without = shifted
    r["shifted"][1, 0, 0] = 1                       # case 1: with = shifted, without = train
    r["train"][2, 0, 0] = 1; r["train"][2, 3, 3] = 2
    r["reversed"][2, 1, 1] = 2                      # case 2: dense in train and reversed -> reversed
    for k in r:                                     # case 3: calcification everywhere: no pair
        r[k][3, 0, 0] = 1
    p = contrast_pairs(r)
    assert p.to_dict("list") == {"position": [0, 1, 2], "with": ["train", "shifted", "train"],
                                 "without": ["shifted", "train", "reversed"]}
    assert contrast_pairs(r, match_dense=False)["without"].tolist() == ["shifted", "train", "shifted"]
    pm = pair_masks(r, p)
    assert pm.shape == (3, 4, 4) and pm.sum(axis=(1, 2)).tolist() == [1, 1, 1]
    (nets, _) = caches
    _, a, b = nets["gap"]
    cw, cwo = pair_caches({"train": a, "shifted": b, "reversed": b}, p)
    assert cw.ids == ["c0", "c1", "c2"] and cw.flips == ("none",)
    assert torch.equal(cw.features[0], a.features[0, :1]) and torch.equal(cwo.features[0], b.features[0, :1])
    assert torch.equal(cw.features[1], b.features[1, :1]) and torch.equal(cwo.features[1], a.features[1, :1])
    with pytest.raises(ValueError, match="no cache for renderings"):
        pair_caches({"train": a}, p)
    with pytest.raises(ValueError, match="at least two renderings"):
        contrast_pairs({"train": r["train"]})
