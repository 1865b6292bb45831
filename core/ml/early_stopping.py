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
from core.ml.stacked_metrics import val_metrics_rows

__all__ = ["METRICS", "EarlyStopping", "epoch_row", "epoch_rows", "improved", "val_metrics"]

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


def epoch_rows(epoch: int, train_losses: list[float], logits: Tensor, labels: Tensor,
               n_bins: int) -> list[dict[str, Any] | None]:
    """`epoch_row` for every trial of (T, N, K) class logits; None where a trial diverged."""
    finite = torch.isfinite(logits).flatten(1).all(dim=1).tolist()
    ok = [r for r, (loss, f) in enumerate(zip(train_losses, finite, strict=True))
          if math.isfinite(loss) and f]
    rows: list[dict[str, Any] | None] = [None] * len(train_losses)
    if ok:
        sub = logits if len(ok) == len(rows) else logits[ok]
        for r, metrics in zip(ok, val_metrics_rows(sub, labels, n_bins), strict=True):
            rows[r] = {"epoch": epoch, "train_loss": train_losses[r], **metrics}
    return rows


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
