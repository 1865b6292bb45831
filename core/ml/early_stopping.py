"""The epoch rule shared by `train.fit` and the stacked sweep trainer: validation row,
divergence check, early stopping and which epoch's weights to keep."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from core.ml.errors import TrainingDivergedError
from core.ml.evaluation import val_metrics

__all__ = ["METRICS", "EarlyStopping", "epoch_row", "improved", "val_metrics"]

METRICS = {"val_nll": "min", "val_ece": "min", "val_accuracy": "max"}


def improved(value: float, best: float | None, metric: str) -> bool:
    """Strict improvement of an early-stopping metric in its direction."""
    if best is None:
        return True
    return value < best if METRICS[metric] == "min" else value > best



def epoch_row(epoch: int, train_loss: float, logits: Tensor, labels: Tensor, n_bins: int
              ) -> dict[str, Any]:
    """One history row; raises TrainingDivergedError on a non-finite loss or logits."""
    if not (math.isfinite(train_loss) and bool(torch.isfinite(logits).all())):
        raise TrainingDivergedError(epoch)
    return {"epoch": epoch, "train_loss": train_loss, **val_metrics(logits, labels, n_bins)}


@dataclass
class EarlyStopping:
    """Best epoch so far and the patience count of one run (metric None: keep the last epoch)."""

    metric: str | None
    patience: int
    best_value: float | None = None
    best_epoch: int = 0
    bad_epochs: int = 0
    stopped: bool = False

    def update(self, row: dict[str, Any]) -> bool:
        """Take one epoch's row; True when its weights are the new best (the caller keeps them)."""
        if self.metric is None:
            self.best_epoch = row["epoch"]
            return False
        if improved(row[self.metric], self.best_value, self.metric):
            self.best_value, self.best_epoch, self.bad_epochs = row[self.metric], row["epoch"], 0
            return True
        self.bad_epochs += 1
        self.stopped = self.bad_epochs >= self.patience
        return False
