"""The one model-selection policy of the training loops (mammo_lib.engines.selection.EarlySelection)."""
from __future__ import annotations

import math

import doctest

import pytest

from mammo_lib.engines import selection as selection_mod
from mammo_lib.engines.selection import EarlySelection


def _run(sel: EarlySelection, scores):
    return [sel.update(e, acc, loss) for e, (acc, loss) in enumerate(scores)]


def test_higher_accuracy_wins_and_ties_go_to_the_lower_loss():
    sel = EarlySelection("accuracy")
    assert _run(sel, [(0.6, 0.5), (0.7, 0.9), (0.7, 0.8), (0.7, 0.8), (0.65, 0.1)]) == [True, True, True, False, False]
    assert (sel.best_epoch, sel.best_key) == (2, (0.7, 0.8))


def test_loss_metric_ignores_accuracy():
    sel = EarlySelection("loss")
    assert _run(sel, [(0.9, 0.5), (0.1, 0.4), (1.0, 0.4)]) == [True, True, False]
    assert sel.best_epoch == 1


@pytest.mark.parametrize("patience, stops_after", [(1, 1), (2, 2), (None, None)])
def test_patience_counts_epochs_without_improvement(patience, stops_after):
    sel = EarlySelection("accuracy", patience)
    stopped_at = None
    for e, acc in enumerate([0.5, 0.4, 0.4, 0.4, 0.4]):
        sel.update(e, acc, 1.0)
        if sel.should_stop:
            stopped_at = e
            break
    assert stopped_at == stops_after


def test_state_round_trips_through_a_checkpoint():
    a = EarlySelection("accuracy", 3)
    _run(a, [(0.5, 0.7), (0.6, 0.6), (0.55, 0.5)])
    b = EarlySelection("accuracy", 3)
    b.load_state_dict(a.state_dict())
    assert (b.best_epoch, b.best_key, b.since_best) == (1, (0.6, 0.6), 1)
    assert b.update(3, 0.6, 0.59) and not a.is_better(0.6, 0.61)


def test_unknown_metric_is_refused():
    with pytest.raises(ValueError, match="selection metric"):
        EarlySelection("auc")


def test_docstring_examples():
    assert doctest.testmod(selection_mod).failed == 0


def test_an_unmeasured_loss_keeps_the_earlier_of_tied_epochs():
    sel = EarlySelection("accuracy")
    assert [sel.update(e, a, math.inf) for e, a in enumerate([0.5, 0.5, 0.6, 0.6, 0.4])] == [
        True, False, True, False, False]
    assert sel.best_epoch == 2 and sel.best_key == (0.6, math.inf)


def test_the_generic_pretraining_selects_with_the_shared_policy(tmp_path, monkeypatch):
    """The third training loop (the ImageNet stand-in) keeps the epoch EarlySelection picks."""
    from mammo_lib.protocol import stand_in

    seen: list[tuple[int, float]] = []

    class Recording(EarlySelection):
        def update(self, epoch, acc, loss):
            seen.append((epoch, acc))
            return super().update(epoch, acc, loss)

    monkeypatch.setattr(stand_in, "EarlySelection", Recording)
    m = stand_in.pretrain_generic(tmp_path, arch="small", n_train=16, n_test=8, size=32, epochs=3, batch_size=8,
                                  progress=False)
    assert [e for e, _ in seen] == [0, 1, 2]
    assert [a for _, a in seen] == [h["val_accuracy"] for h in m["history"]]
    assert m["best_val_accuracy"] == max(a for _, a in seen)
