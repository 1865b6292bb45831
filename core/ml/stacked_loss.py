"""The stacked trials' loss: every active trial's label-smoothed loss from one call."""

from __future__ import annotations

import torch
from torch import Tensor

from core.ml import losses
from core.ml.train import TrainConfig

__all__ = ["StackedLoss"]


class StackedLoss:
    """Every active trial's label-smoothed loss (train.compute_loss) from one stacked call.

    `losses.label_smoothed_cross_entropy` with stacked logits (T, B, K) and one alpha per
    trial returns each trial's batch mean, equal to its lone call; summing the per-trial
    means leaves every trial's gradient its own.
    """

    def __init__(self, cfgs: list[TrainConfig]) -> None:
        cfg = cfgs[0]
        self.variant, self.form = cfg.variant, cfg.form
        self.prior = torch.tensor(cfg.prior, dtype=torch.float64) if cfg.prior else None
        self.alphas = torch.tensor([c.alpha for c in cfgs], dtype=torch.float64)

    def keep(self, rows: list[int]) -> None:
        """Drop the trials that left the stack."""
        self.alphas = self.alphas[rows]

    def __call__(self, raw: Tensor, y: Tensor) -> Tensor:
        """Per-trial mean losses (T,) from raw outputs (T, B, K or 1) and labels (T, B) or (B,)."""
        return losses.label_smoothed_cross_entropy(
            raw.float(), y, self.alphas, self.variant, prior=self.prior, form=self.form)
