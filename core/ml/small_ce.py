"""Label-smoothed CE of a small CPU batch in the fewest autograd nodes (uniform / off-target).

At the batch sizes jobs train with (64 x 10 up to 256 x 1000) the cost of a loss is per-op
overhead, not arithmetic: torch's `F.cross_entropy(label_smoothing=)` is a log-softmax, an
NLL, a sum and their combination, each with its own backward node, and a Python
`autograd.Function` costs more than all of them. Here the soft target q, pre-scaled by
-1/N (or -1), is built without autograd and the loss is one dot product with the
log-probabilities: three C++ nodes (dot, view, log-softmax). The same value and gradient as
torch's (float rounding). Targets outside [0, K) make the scatter raise: callers fall back.
Stacked trials (T, B, K) small enough for this regime take the same form (`stacked_small_ce`).
"""

from __future__ import annotations

from functools import lru_cache

import torch
from torch import Tensor

from core.ml.loss_kernel import class_entropy, smoothing

__all__ = ["SMALL_MAX_ELEMS", "small_smoothed_ce", "stacked_small_ce"]

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


def stacked_small_ce(logits: Tensor, target: Tensor, alphas: Tensor, variant: str,
                     prior: Tensor | None, form: str, ignore_index: int, reduction: str
                     ) -> Tensor:
    """Stacked trials (T, B, K), alpha[t] for trial t, in a handful of ops whatever T.

    Every trial's soft target q (pre-scaled) is built without autograd from per-trial tables
    cached across calls (a training run passes the same alphas every step); the loss is
    sum q * log-softmax: three autograd nodes. `target` is (T, B), already checked.
    """
    cdtype = logits.dtype if logits.dtype == torch.float64 else torch.float32
    t, b, k = logits.shape
    with torch.no_grad():
        keep = None
        if bool((target == ignore_index).any()):
            keep = target != ignore_index
            target = target.masked_fill(~keep, 0)
        per_mean = reduction == "mean" and keep is None
        scale = -1.0 / b if per_mean else -1.0
        smooth, onehot, entropy, trials = _stacked_tables(
            tuple(alphas.tolist()), variant, None if prior is None else tuple(prior.tolist()),
            k, form, scale, cdtype, logits.device)
        y = target.unsqueeze(2)
        q = smooth.expand(t, b, k).clone(memory_format=torch.contiguous_format)
        q.scatter_add_(2, y, onehot.expand(t, b, 1))
        h = None if entropy is None else entropy[trials, target]  # (T, B), scaled like q
        if keep is not None:
            weights = keep.to(cdtype)
            if reduction == "mean":
                weights /= keep.sum(1, keepdim=True)
            q *= weights.unsqueeze(2)
            h = None if h is None else h * weights
    logp = torch.log_softmax(logits.to(cdtype), dim=2)
    if reduction == "none":
        rows = (q * logp).sum(2)
        return (rows if h is None else rows + h).to(logits.dtype)  # KL = CE - H
    total = (q * logp).sum((1, 2))
    return (total if h is None else total + h.sum(1)).to(logits.dtype)


@lru_cache(maxsize=32)
def _stacked_tables(alphas: tuple[float, ...], variant: str, prior: tuple[float, ...] | None,
                    k: int, form: str, scale: float, dtype: torch.dtype, device: torch.device
                    ) -> tuple[Tensor, Tensor, Tensor | None, Tensor]:
    """Per trial, times `scale`: s (T, 1, K), a (T, 1, 1) with q = a onehot(y) + s, and
    H(q) of each class (T, K) for form 'kl'; and the trial index (T, 1)."""
    prior_vec = None if prior is None else torch.tensor(prior, dtype=torch.float64)
    parts = [smoothing(variant, alpha, k, prior_vec) for alpha in alphas]
    smooth = torch.stack([s for _, _, s in parts]).unsqueeze(1)
    onehot = torch.tensor([a for a, _, _ in parts], dtype=torch.float64).view(-1, 1, 1)
    entropy = None
    if form == "kl":
        entropy = torch.stack([class_entropy(a, s, None) for a, _, s in parts])
        entropy = (entropy * scale).to(device=device, dtype=dtype)
    trials = torch.arange(len(alphas), device=device).unsqueeze(1)
    return ((smooth * scale).to(device=device, dtype=dtype),
            (onehot * scale).to(device=device, dtype=dtype), entropy, trials)
