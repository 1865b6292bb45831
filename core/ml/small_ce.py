"""Label-smoothed CE of a small CPU batch in the fewest autograd nodes (uniform / off-target).

At the batch sizes jobs train with (64 x 10 up to 256 x 1000) the cost of a loss is per-op
overhead, not arithmetic: torch's `F.cross_entropy(label_smoothing=)` is a log-softmax, an
NLL, a sum and their combination, each with its own backward node, and a Python
`autograd.Function` costs more than all of them. Here the soft target q, pre-scaled by
-1/N (or -1), is built without autograd and the loss is one dot product with the
log-probabilities: three C++ nodes (dot, view, log-softmax). The same value and gradient as
torch's (float rounding). Targets outside [0, K) make the scatter raise: callers fall back.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["SMALL_MAX_ELEMS", "small_smoothed_ce"]

SMALL_MAX_ELEMS = 1 << 18  # logits at most (bench/loss.py: still ahead of torch at 256 x 1000)


def small_smoothed_ce(logits: Tensor, target: Tensor, eps: float, reduction: str) -> Tensor:
    """torch's `cross_entropy(logits, target, label_smoothing=eps, reduction=reduction)`."""
    n, k = logits.shape
    scale = -1.0 / n if reduction == "mean" else -1.0
    with torch.no_grad():
        q = torch.full_like(logits, eps / k * scale, memory_format=torch.contiguous_format)
        q.scatter_(1, target.unsqueeze(1), (1.0 - eps + eps / k) * scale)
    logp = torch.log_softmax(logits, 1)
    if reduction == "none":
        return (q * logp).sum(1)
    return torch.dot(q.view(-1), logp.reshape(-1))
