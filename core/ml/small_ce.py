"""Label-smoothed CE of a small CPU batch as one autograd node (uniform / off-target smoothing).

At the batch sizes jobs train with (64 x 10 up to 256 x 1000) the cost of a loss is per-op
overhead, not arithmetic: torch's `F.cross_entropy(label_smoothing=)` is a log-softmax, an
NLL, a sum and their combination, each with its own backward node. Here forward is one
log-softmax, a gather and a row sum; backward is one node that writes
softmax - eps/K - (1 - eps) onehot(y) into a fresh buffer. The same value and gradient as
torch's (float rounding). Targets outside [0, K) make the gather raise: callers fall back.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

__all__ = ["SMALL_MAX_ELEMS", "SmallSmoothedCE"]

SMALL_MAX_ELEMS = 1 << 18  # logits at most (bench/loss.py: still ahead of torch at 256 x 1000)


class SmallSmoothedCE(torch.autograd.Function):
    """(logits (N, K), target (N,), eps, reduction) -> torch's label-smoothed CE."""

    @staticmethod
    def forward(ctx: Any, logits: Tensor, target: Tensor, eps: float, reduction: str
                ) -> Tensor:
        """The loss; saves the log-probabilities for backward."""
        logp = torch.log_softmax(logits, 1)
        picked = logp.gather(1, target.unsqueeze(1)).squeeze(1)
        per_row = picked.mul(eps - 1.0).sub_(logp.sum(1), alpha=eps / logits.shape[1])
        ctx.save_for_backward(logp, target)
        ctx.eps, ctx.reduction = eps, reduction
        if reduction == "mean":
            return per_row.mean()
        return per_row.sum() if reduction == "sum" else per_row

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor, None, None, None]:
        """d loss / d logits = (softmax - q) scaled by the incoming gradient."""
        logp, target = ctx.saved_tensors
        n, k = logp.shape
        grad = logp.exp().sub_(ctx.eps / k)
        grad.scatter_add_(1, target.unsqueeze(1),
                          torch.full((n, 1), ctx.eps - 1.0, dtype=grad.dtype))
        if ctx.reduction == "none":
            return grad.mul_(grad_out.unsqueeze(1)), None, None, None
        scale = grad_out / n if ctx.reduction == "mean" else grad_out
        return grad.mul_(scale), None, None, None
