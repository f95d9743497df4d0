"""Tests for mammo_lib.explain.knn: deep features, k-NN explanation/vote (Fig. 8c), GLCM-deep correlation (Fig. 8b)."""
from __future__ import annotations


import numpy as np
import pandas as pd
import pytest
import torch

from mammo_lib.explain.knn import feature_correlation, knn_explain, knn_vote, penultimate_features
from mammo_lib.networks.densenet import build_model, to_model_input

# Euclidean distances from the origin: 0, 1, 2, 5, 1 -> order 0, 1, 4 (tie with 1: index order), 2, 3.
TRAIN = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0], [3.0, 4.0], [1.0, 0.0]])
LABELS = np.array([0, 1, 1, 0, 0])

KNN_CASES = [
    # name, query, k, metric, expected indices, expected distances
    ("euclidean with a tie", [0.0, 0.0], 3, "euclidean", [0, 1, 4], [0.0, 1.0, 1.0]),
    ("all neighbours", [0.0, 0.0], 5, "euclidean", [0, 1, 4, 2, 3], [0.0, 1.0, 1.0, 2.0, 5.0]),
    ("cityblock", [3.0, 3.0], 2, "cityblock", [3, 2], [1.0, 4.0]),
    # cosine (a zero vector has no direction): test_knn_cosine_and_ids
]

VOTE_CASES = [
    # name, train labels (sorted by distance = index here), k, prediction, support
    ("clear majority", [1, 1, 0, 0, 0], 3, 1, 2 / 3),
    ("tie -> nearest's label", [0, 1, 1, 0, 1], 2, 0, 0.5),
    ("tie 2:2 -> nearest's label", [1, 0, 0, 1, 0], 4, 1, 0.5),
    ("unanimous", [0, 0, 0, 1, 1], 3, 0, 1.0),
]

ERROR_CASES = [
    ("k too large", lambda: knn_explain([0, 0], TRAIN, LABELS, k=6), ValueError, r"k must be an int in \[1, 5\]"),
    ("k zero", lambda: knn_vote([0, 0], TRAIN, LABELS, k=0), ValueError, "k must be"),
    ("feature count", lambda: knn_explain([0, 0, 0], TRAIN, LABELS), ValueError, "3 features"),
    ("label count", lambda: knn_explain([0, 0], TRAIN, LABELS[:4]), ValueError, "train_labels"),
    ("metric", lambda: knn_explain([0, 0], TRAIN, LABELS, metric="hamming"), ValueError, "unknown metric"),
    ("NaN train", lambda: knn_explain([0, 0], np.full((5, 2), np.nan), LABELS), ValueError, "NaN"),
    ("ids count", lambda: knn_explain([0, 0], TRAIN, LABELS, train_ids=["a"]), ValueError, "train_ids"),
    ("text features", lambda: knn_explain(["a", "b"], TRAIN, LABELS), TypeError, "real numbers"),
    ("corr rows", lambda: feature_correlation(pd.DataFrame({"a": [1.0, 2, 3]}), np.ones((4, 2))),
     ValueError, "not the same samples"),
    ("corr too few", lambda: feature_correlation(pd.DataFrame({"a": [1.0, 2]}), np.ones((2, 2))),
     ValueError, "at least 3"),
    ("corr non-numeric", lambda: feature_correlation(pd.DataFrame({"a": ["x", "y", "z"]}), np.ones((3, 2))),
     TypeError, "non-numeric"),
    ("corr bad top", lambda: feature_correlation(pd.DataFrame({"a": [1.0, 2, 3]}), np.ones((3, 2)), top=0),
     ValueError, "top"),
    ("features of 2-D image", lambda: penultimate_features(build_model("small", seed=0), np.zeros((32, 32))),
     ValueError, r"\(N, S, S\)"),
    ("features of non-DenseNet", lambda: penultimate_features(torch.nn.Linear(2, 2), np.zeros((1, 32, 32))),
     TypeError, "DenseNet"),
    ("features bad batch size", lambda: penultimate_features(build_model("small", seed=0), np.zeros((1, 32, 32)),
                                                             batch_size=0), ValueError, "batch_size"),
]


@pytest.mark.parametrize("name,query,k,metric,idx,dist", KNN_CASES, ids=[c[0] for c in KNN_CASES])
def test_knn_explain_hand_values(name, query, k, metric, idx, dist) -> None:
    df = knn_explain(np.array(query), TRAIN, LABELS, k=k, metric=metric)
    assert list(df.columns) == ["query", "rank", "train_index", "train_id", "label", "distance"]
    assert df["train_index"].tolist() == idx
    np.testing.assert_allclose(df["distance"], dist)
    assert df["rank"].tolist() == list(range(1, k + 1))
    assert df["label"].tolist() == LABELS[idx].tolist()
    assert df["train_id"].tolist() == [str(i) for i in idx]


def test_knn_cosine_and_ids() -> None:
    train = np.array([[0.0, 1.0], [2.0, 0.0], [4.0, 3.0]])
    df = knn_explain(np.array([1.0, 0.0]), train, [1, 0, 1], k=3, metric="cosine", train_ids=["p", "q", "r"])
    assert df["train_id"].tolist() == ["q", "r", "p"]
    np.testing.assert_allclose(df["distance"], [0.0, 1 - 4 / 5, 1.0], atol=1e-12)


def test_knn_batch_equals_one_by_one() -> None:
    rng = np.random.default_rng(0)
    train, queries = rng.normal(size=(20, 6)), rng.normal(size=(4, 6))
    labels = rng.integers(0, 2, 20)
    batch = knn_explain(queries, train, labels, k=4)
    votes = knn_vote(queries, train, labels, k=4)
    for i in range(4):
        single = knn_explain(queries[i], train, labels, k=4)
        part = batch[batch["query"] == i].drop(columns="query").reset_index(drop=True)
        pd.testing.assert_frame_equal(part, single.drop(columns="query"))
        one_vote = knn_vote(queries[i], train, labels, k=4)
        assert one_vote.loc[0, "prediction"] == votes.loc[i, "prediction"]
    # brute force check of the neighbour sets
    d = np.sqrt(((queries[:, None] - train[None]) ** 2).sum(-1))
    for i in range(4):
        assert set(batch[batch["query"] == i]["train_index"]) == set(np.argsort(d[i])[:4])


@pytest.mark.parametrize("name,labels,k,prediction,support", VOTE_CASES, ids=[c[0] for c in VOTE_CASES])
def test_knn_vote(name, labels, k, prediction, support) -> None:
    train = np.arange(5, dtype=float)[:, None]          # distance to query 0 = index
    out = knn_vote(np.array([0.0]), train, np.array(labels), k=k)
    assert out.loc[0, "prediction"] == prediction
    assert out.loc[0, "support"] == pytest.approx(support)
    assert out.loc[0, "votes_0"] + out.loc[0, "votes_1"] == k
    assert out.loc[0, "votes_1"] == sum(labels[:k])


@pytest.mark.parametrize("name,call,exc,match", ERROR_CASES, ids=[c[0] for c in ERROR_CASES])
def test_errors(name, call, exc, match) -> None:
    with pytest.raises(exc, match=match):
        call()


def test_feature_correlation_hand_values() -> None:
    x = np.array([1.0, 2.0, 3.0, 4.0])
    glcm = pd.DataFrame({"contrast": x, "energy": 2 * x})
    # deep_0 = x (r = 1), deep_1 orthogonal to x after centring (r = 0), deep_2 constant (NaN),
    # deep_3: centred (1.5, .5, -1.5, -.5) . (-1.5, -.5, .5, 1.5) = -4, norms sqrt(5) -> r = -0.8.
    deep = np.stack([x, [1.0, 0, 0, 1], np.full(4, 7.0), [4.0, 3, 1, 2]], axis=1)
    full = feature_correlation(glcm, deep, top=None)
    assert list(full.columns) == ["deep_0", "deep_1", "deep_2", "deep_3"]
    assert list(full.index) == ["contrast", "energy"]
    np.testing.assert_allclose(full.loc["contrast", ["deep_0", "deep_1", "deep_3"]], [1.0, 0.0, -0.8], atol=1e-12)
    assert full[["deep_2"]].isna().all().all()
    top = feature_correlation(glcm, deep, top=3)
    assert list(top.columns) == ["deep_0", "deep_3", "deep_1"]
    assert list(feature_correlation(glcm, deep, top=10).columns) == ["deep_0", "deep_3", "deep_1"]


def test_feature_correlation_matches_pandas() -> None:
    rng = np.random.default_rng(3)
    glcm = pd.DataFrame(rng.normal(size=(12, 3)), columns=["a", "b", "c"])
    deep = rng.normal(size=(12, 8))
    got = feature_correlation(glcm, deep, top=None)
    ref = pd.concat([glcm, pd.DataFrame(deep, columns=[f"deep_{j}" for j in range(8)])], axis=1).corr()
    np.testing.assert_allclose(got.to_numpy(), ref.loc[["a", "b", "c"], got.columns].to_numpy(), atol=1e-12)


@pytest.fixture(scope="module")
def small_model() -> torch.nn.Module:
    return build_model("small", seed=0)


def test_penultimate_features_feed_the_classifier(small_model) -> None:
    rng = np.random.default_rng(0)
    images = rng.random((5, 64, 64)).astype(np.float32)
    small_model.train()
    bn_before = small_model.features.norm5.running_mean.clone()
    feats = penultimate_features(small_model, images, batch_size=2)
    assert feats.shape == (5, small_model.classifier.in_features)
    assert small_model.training and all(m.training for m in small_model.modules())
    assert torch.equal(bn_before, small_model.features.norm5.running_mean)   # eval mode: no BN update
    small_model.eval()
    with torch.no_grad():
        logits = small_model(to_model_input(torch.from_numpy(images)))
        from_feats = small_model.classifier(torch.from_numpy(feats))
    small_model.train()
    torch.testing.assert_close(from_feats, logits, rtol=1e-5, atol=1e-5)
    # batch size does not change the result (eval mode)
    np.testing.assert_allclose(penultimate_features(small_model, images, batch_size=5), feats, rtol=1e-5, atol=1e-6)
    assert (feats >= 0).all()                                                 # after ReLU
