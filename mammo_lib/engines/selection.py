"""Model selection and early stopping, one policy for every training loop of the package.

The selected epoch is the one with the best validation score: higher accuracy, ties broken by the
lower validation loss (``metric="accuracy"``), or the lower loss alone (``metric="loss"``); the
first epoch always counts as an improvement. Training stops after ``patience`` epochs in a row
without an improvement (``None``: never). Used by the package's three training loops:
:func:`mammo_lib.engines.training.train_model`, :func:`mammo_lib.engines.trunk_cache.train_heads` (its
``select_also`` second selection too) and :func:`mammo_lib.protocol.stand_in.pretrain_generic` (which
measures no validation loss: it passes ``math.inf``, so a tie keeps the earlier epoch).
"""
from __future__ import annotations

from typing import Any, Optional

SELECTION_METRICS = ("accuracy", "loss")


class EarlySelection:
    """Best epoch, ties and patience of one network's training.

    >>> s = EarlySelection("accuracy", patience=2)
    >>> [s.update(e, acc, loss) for e, (acc, loss) in enumerate([(0.5, 0.7), (0.5, 0.6), (0.4, 0.5), (0.5, 0.6)])]
    [True, True, False, False]
    >>> s.best_epoch, s.best_key, s.should_stop
    (1, (0.5, 0.6), True)
    """

    def __init__(self, metric: str = "accuracy", patience: Optional[int] = None) -> None:
        if metric not in SELECTION_METRICS:
            raise ValueError(f"selection metric must be one of {SELECTION_METRICS}, got {metric!r}")
        self.metric, self.patience = metric, patience
        self.best_key: Optional[tuple[float, float]] = None
        self.best_epoch = -1
        self.since_best = 0

    def is_better(self, acc: float, loss: float) -> bool:
        """Whether (``acc``, ``loss``) beats the best so far (always, before the first update)."""
        if self.best_key is None:
            return True
        b_acc, b_loss = self.best_key
        if self.metric == "loss":
            return loss < b_loss
        return acc > b_acc or (acc == b_acc and loss < b_loss)

    def update(self, epoch: int, acc: float, loss: float) -> bool:
        """Record one epoch's validation score; True when it is the new best epoch."""
        improved = self.is_better(acc, loss)
        if improved:
            self.best_key, self.best_epoch, self.since_best = (acc, loss), epoch, 0
        else:
            self.since_best += 1
        return improved

    @property
    def should_stop(self) -> bool:
        """``patience`` epochs in a row without an improvement."""
        return self.patience is not None and self.since_best >= self.patience

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint stores to resume the selection."""
        return {"best_epoch": self.best_epoch, "best_key": None if self.best_key is None else list(self.best_key),
                "since_best": self.since_best}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best_epoch = int(state["best_epoch"])
        self.best_key = tuple(state["best_key"]) if state["best_key"] is not None else None
        self.since_best = int(state["since_best"])
