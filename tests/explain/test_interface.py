"""One explainer interface (mammo_lib.explain.interface): Eq. 6, Grad-CAM / HiResCAM and kNN called
the same way, returning the same type; batching gives the one-by-one answers; the randomisation
check (mammo_lib.explain.sanity.randomisation_table) takes any explainer."""
from __future__ import annotations

import doctest
import math

import numpy as np
import pytest
import torch

from mammo_lib.explain import interface
from mammo_lib.explain.eq6 import LESION, explain_roi
from mammo_lib.explain.interface import (Attribution, CamExplainer, Eq6Explainer, Explainer, KnnExplainer,
                                         similarity)
from mammo_lib.explain.sanity import (RANDOM_SIMILARITY_MAX, RANDOMISATION_COLUMNS, explanation_sanity,
                                      randomisation_table)
from mammo_lib.networks.densenet import build_model

S = 64   # the small DenseNet's group-4 grid is 2 x 2 at 64 px


@pytest.fixture(scope="module")
def model():
    return build_model("small", seed=0)


@pytest.fixture(scope="module")
def rois():
    rng = np.random.default_rng(3)
    out = rng.random((3, S, S)).astype(np.float32) * 0.3
    out[:, 16:48, 16:48] += 0.6 * rng.random((3, 32, 32)).astype(np.float32)   # a bright "mass"
    return out


@pytest.fixture(scope="module")
def masks():
    m = np.zeros((3, S, S), np.uint8)
    m[:, 16:48, 16:48] = 1
    return m


def _train(n: int = 6):
    rng = np.random.default_rng(7)
    return rng.random((n, S, S)).astype(np.float32), np.array([0, 1] * (n // 2))


def _explainers(model):
    train, labels = _train()
    return {"eq6": Eq6Explainer(model, batch_size=3), "gradcam": CamExplainer(model, method="gradcam", batch_size=2),
            "hirescam": CamExplainer(model, method="hirescam", target_layer="norm5", batch_size=2),
            "knn": KnnExplainer(model, train, labels, k=3, batch_size=4)}


class RoiOnly(Explainer):
    """A control that ignores the model: its evidence is the ROI itself."""

    method = "roi"

    def attribute(self, rois, *, progress=False):
        probs = self._probabilities(np.asarray(rois))
        return [Attribution("roi", int(np.argmax(p)), p, ("benign", "malignant"), evidence=r)
                for p, r in zip(probs, np.asarray(rois))]


def test_docstring_examples():
    assert doctest.testmod(interface, optionflags=doctest.ELLIPSIS).failed == 0


@pytest.mark.parametrize("name", ["eq6", "gradcam", "hirescam", "knn"])
def test_one_call_shape_one_result_type_and_batching_changes_nothing(name, model, rois):
    explainer = _explainers(model)[name]
    batch = explainer.attribute(rois)
    assert len(batch) == len(rois) and all(isinstance(a, Attribution) for a in batch)
    probs = torch.softmax(model.eval()(torch.as_tensor(rois)[:, None].expand(-1, 3, -1, -1)), 1).detach().numpy()
    for a, r, p in zip(batch, rois, probs):
        one = explainer(r)
        assert a.method == one.method == ("eq6" if name == "eq6" else name)
        assert a.prediction == one.prediction == int(np.argmax(p))
        np.testing.assert_allclose(a.probabilities, one.probabilities, rtol=0, atol=1e-6)
        for field in ("evidence", "labels", "neighbours", "neighbour_labels"):
            x, y = getattr(a, field), getattr(one, field)
            assert (x is None) == (y is None), field
            if x is not None:
                if x.dtype.kind == "f":
                    np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6, err_msg=field)
                else:
                    np.testing.assert_array_equal(x, y, err_msg=field)


def test_eq6_attribution_is_the_explanation(model, rois):
    a = Eq6Explainer(model, background_rule="otsu")(rois[0])
    e = explain_roi(model, rois[0], background_rule="otsu")
    np.testing.assert_array_equal(a.evidence, e.dis_background - e.dis_lesion)
    np.testing.assert_array_equal(a.labels, e.cell_labels)
    np.testing.assert_array_equal(a.evidence > 0, e.cell_labels == LESION)   # Eq. 6: Lesion where dis^L < dis^B
    assert a.detail.params["background_rule"] == "otsu" and a.evidence.shape == (2, 2)


def test_cam_maps_are_the_cam_functions(model, rois):
    from mammo_lib.explain.cam import cam_map

    a = CamExplainer(model, method="hirescam", target_layer="norm5").attribute(rois)
    want = cam_map(model, rois, method="hirescam", target_layer="norm5")
    np.testing.assert_array_equal(np.stack([x.evidence for x in a]), want.astype(np.float64))
    assert all(x.labels is None and x.neighbours is None for x in a)


def test_knn_neighbours_by_hand():
    """Two training ROIs equal to the query's neighbours: the nearest is the identical one."""
    model = build_model("small", seed=1)
    train, labels = _train(6)
    k = KnnExplainer(model, train, labels, k=2)
    a = k(train[4])
    assert a.neighbours[0] == 4 and a.neighbour_labels[0] == labels[4]
    assert a.detail["distance"].iloc[0] == pytest.approx(0.0, abs=1e-4)


def test_with_model_keeps_the_settings_and_recomputes_what_depends_on_the_model(model):
    train, labels = _train()
    k = KnnExplainer(model, train, labels, k=3)
    before = k.train_features.copy()
    other = k.with_model(build_model("small", seed=5))
    assert (other.k, other.metric, other.train_rois is k.train_rois) == (3, "euclidean", True)
    assert not np.allclose(other.train_features, before)          # recomputed for the other network
    np.testing.assert_array_equal(k.train_features, before)       # the original is unchanged
    assert k.model is model and other.model is not model


def test_similarity_by_hand():
    ev = np.arange(4.0).reshape(2, 2)
    a = Attribution("x", 0, [1.0, 0.0], ("b", "m"), evidence=ev, labels=[["L", "B"], ["B", "B"]],
                    neighbours=[0, 1], neighbour_labels=[0, 0])
    assert similarity(a, a) == {"label_agreement": 1.0, "rank_correlation": 1.0, "neighbour_overlap": 1.0}
    b = Attribution("x", 0, [1.0, 0.0], ("b", "m"), evidence=-ev, labels=[["B", "L"], ["L", "L"]],
                    neighbours=[2, 3], neighbour_labels=[1, 1])
    assert similarity(a, b) == {"label_agreement": 0.0, "rank_correlation": -1.0, "neighbour_overlap": 0.0}
    c = Attribution("x", 0, [1.0, 0.0], ("b", "m"), evidence=np.ones((2, 2)))   # constant map, no labels
    assert all(math.isnan(v) for v in similarity(a, c).values())


def test_the_randomisation_check_takes_any_explainer(model, rois, masks):
    explainers = {**_explainers(model), "ROI only (control)": RoiOnly(model)}
    state = {k: v.clone() for k, v in model.state_dict().items()}
    t = randomisation_table(explainers, rois, masks, seed=0)
    assert tuple(t.columns) == RANDOMISATION_COLUMNS and list(t["explainer"]) == list(explainers)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())   # models untouched
    row = t.set_index("explainer")
    assert list(row["measure"]) == ["label_agreement", "rank_correlation", "rank_correlation",
                                    "neighbour_overlap", "rank_correlation"]
    # the control ignores the model: identical explanations, so it must fail the check
    assert row.loc["ROI only (control)", "similarity"] == 1.0
    assert not row.loc["ROI only (control)", "changes"]
    # kNN has no map, so no mass share; the map explainers have one in [0, 1]
    assert math.isnan(row.loc["knn", "mass_share_trained"])
    shares = row.loc[["gradcam", "hirescam", "eq6", "ROI only (control)"], "mass_share_trained"]
    assert shares.notna().sum() >= 2 and ((shares.dropna() >= 0) & (shares.dropna() <= 1)).all(), shares
    assert (row["changes"] == (row["similarity"] <= RANDOM_SIMILARITY_MAX)).all()
    # Eq. 6 row = the sanity table's random-net label agreement for the same rule and seed
    s = explanation_sanity(model, rois, masks, rules=("soft",), random_seed=0, progress=False)
    assert row.loc["eq6", "label_agreement"] == pytest.approx(float(s["random_net_label_agreement"].iloc[0]))


# (call, exception, message): bad input names what is wrong
FAILING = [
    (lambda m: Eq6Explainer(m).attribute(np.zeros((S, S), np.float32)), ValueError, "call the explainer on it"),
    (lambda m: Eq6Explainer(m).attribute(np.zeros((1, S, S - 1), np.float32)), ValueError, "square grey ROIs"),
    (lambda m: Eq6Explainer(m, batch_size=0), ValueError, "batch_size must be a positive int"),
    (lambda m: Eq6Explainer("model"), TypeError, "model must be a torch.nn.Module"),
    (lambda m: CamExplainer(m, method="lime"), ValueError, "unknown method 'lime'"),
    (lambda m: CamExplainer(m, target_layer="conv0"), ValueError, "unknown target_layer 'conv0'"),
    (lambda m: KnnExplainer(m, *_train(4), k=5), ValueError, r"k must be an int in \[1, 4\]"),
    (lambda m: KnnExplainer(m, _train(4)[0], [0, 1]), ValueError, "2 train_labels for 4 training ROIs"),
    (lambda m: Attribution("x", 0, [1.0], ("b",)), ValueError, "carries no evidence, labels or neighbours"),
    (lambda m: Attribution("x", 0, [1.0], ("b",), neighbours=[1]), ValueError, "together"),
    (lambda m: randomisation_table({}, np.zeros((1, S, S))), ValueError, "no explainer given"),
    (lambda m: randomisation_table({"e": Eq6Explainer(m)}, np.zeros((1, S, S)), np.zeros((2, S, S))), ValueError,
     r"masks shape \(2, 64, 64\) differs from rois shape \(1, 64, 64\)"),
]


@pytest.mark.parametrize("call, exc, msg", FAILING)
def test_bad_input(call, exc, msg, model):
    with pytest.raises(exc, match=msg):
        call(model)


def test_plot_attribution_draws_maps_and_neighbours(model, rois, masks):
    import matplotlib.figure

    from mammo_lib.visualize import plot_attribution

    for name, explainer in _explainers(model).items():
        fig = plot_attribution(explainer(rois[0]), rois[0], mask=masks[0])
        assert isinstance(fig, matplotlib.figure.Figure)
        ax = fig.axes[0]
        assert name in ax.get_title()
        assert len(ax.images) == (1 if name == "knn" else 2)          # ROI (+ evidence map)
        assert (len(ax.texts) == 1) == (name == "knn")                # the neighbour list
        fig.canvas.draw()
    with pytest.raises(ValueError, match="mask shape"):
        plot_attribution(_explainers(model)["gradcam"](rois[0]), rois[0], mask=masks[0][:4])
