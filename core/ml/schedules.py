"""Learning-rate schedules stepped once per batch: constant, step, cosine; linear warmup.

The factor multiplying the base lr after `s` optimizer steps (spe = steps per epoch):
- warmup over W epochs: (s + 1) / (W * spe) while s < W * spe;
- constant: 1;
- step: gamma ** (number of milestones m with m <= s // spe), i.e. lr *= gamma once
  epoch m is complete (torch MultiStepLR's epoch semantics);
- cosine: 0.5 * (1 + cos(pi * t)), t = (s - W*spe) / (epochs*spe - W*spe) (SGDR without
  restarts, to 0 at the end).
The scheduler's state (step count, last lr) goes into every checkpoint, so a resumed run
continues the schedule exactly where it stopped.
"""

from __future__ import annotations

import json
import math
from typing import Any

import torch

__all__ = ["lr_factor", "make_scheduler", "restore_scheduler", "scheduler_state"]


def lr_factor(step: int, *, steps_per_epoch: int, epochs: int, name: str,
              milestones: list[int], gamma: float, warmup_epochs: int) -> float:
    """The lr multiplier after `step` optimizer steps (see the module docstring)."""
    spe = max(1, steps_per_epoch)
    warm = warmup_epochs * spe
    if step < warm:
        return (step + 1) / warm
    if name == "step":
        return float(gamma ** sum(1 for m in milestones if m <= step // spe))
    if name == "cosine":
        span = max(1, epochs * spe - warm)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warm) / span)))
    return 1.0


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: Any, steps_per_epoch: int
                   ) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-batch LambdaLR for cfg.schedule / milestones / gamma / warmup_epochs / epochs."""
    def factor(step: int) -> float:
        return lr_factor(step, steps_per_epoch=steps_per_epoch, epochs=cfg.epochs,
                         name=cfg.schedule, milestones=list(cfg.milestones), gamma=cfg.gamma,
                         warmup_epochs=cfg.warmup_epochs)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def scheduler_state(scheduler: torch.optim.lr_scheduler.LRScheduler) -> dict[str, Any]:
    """The scheduler's JSON-safe state (its lambdas are rebuilt from the config)."""
    state = {k: v for k, v in scheduler.state_dict().items() if k != "lr_lambdas"}
    return json.loads(json.dumps(state, default=float))


def restore_scheduler(scheduler: torch.optim.lr_scheduler.LambdaLR, state: dict[str, Any]) -> None:
    """Load a state written by `scheduler_state` (the lambdas stay the ones built from config)."""
    if not isinstance(state.get("last_epoch"), int) or not isinstance(state.get("base_lrs"), list):
        raise ValueError(f"not a scheduler state: {sorted(state)}")
    scheduler.load_state_dict({**state, "lr_lambdas": [None] * len(state["base_lrs"])})
