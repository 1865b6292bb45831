"""Temperature scaling: one T > 0 minimising the validation NLL (Guo et al. 2017)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from core.ml.metric_helpers import check_labels, check_tensor


def _nll_derivatives(z: Tensor, z_y: Tensor, beta: float) -> tuple[float, float]:
    """First and second derivative in beta of mean(LSE(beta z) - beta z_y)."""
    p = torch.softmax(beta * z, dim=1)
    ez = (p * z).sum(dim=1)
    ez2 = (p * z * z).sum(dim=1)
    d1 = float((ez - z_y).mean())
    d2 = float((ez2 - ez * ez).clamp_min(0.0).mean())
    return d1, d2


def fit_temperature(logits: Tensor, labels: Tensor, *, log_t_range: float = 5.0) -> float:
    """Fit one temperature T > 0 minimising the NLL of softmax(logits / T); 1.0 on degenerate input.

    The NLL is convex in beta = 1/T, so its derivative is monotone: a safeguarded Newton search on
    log T within [-log_t_range, log_t_range] (bisection whenever Newton leaves the bracket).
    Degenerate input (empty, fewer than 2 classes, non-finite logits, no logit spread) gives 1.0;
    an optimum outside the bracket is clamped to its edge.
    """
    logits = check_tensor(logits, "logits")
    if logits.ndim != 2 or not logits.is_floating_point():
        raise ValueError(
            "Expected argument `logits` to be a 2D floating point tensor, "
            f"but got shape {tuple(logits.shape)} and dtype {logits.dtype}"
        )
    n, k = logits.shape
    if n == 0 or k < 2:
        if check_tensor(labels, "labels").shape[0] != n:
            raise ValueError(
                f"Expected argument `labels` to have shape ({n},), but got {tuple(labels.shape)}"
            )
        return 1.0
    labels = check_labels(labels, n, k, name="logits")
    z = logits.double()
    if not bool(torch.isfinite(z).all()):
        return 1.0
    z = z - z.mean(dim=1, keepdim=True)
    if float((z.amax(dim=1) - z.amin(dim=1)).max()) <= 0.0:
        return 1.0
    z_y = z.gather(1, labels.unsqueeze(1)).squeeze(1)
    # v = log(beta) = -log T; g(v) = f(exp v) is unimodal; g'(v) = f'(beta) * beta
    lo, hi = -float(log_t_range), float(log_t_range)
    v = 0.0
    for _ in range(100):
        beta = math.exp(v)
        d1, d2 = _nll_derivatives(z, z_y, beta)
        if not (math.isfinite(d1) and math.isfinite(d2)):
            return 1.0
        if d1 > 0.0:
            hi = v
        elif d1 < 0.0:
            lo = v
        else:
            break
        g1, g2 = d1 * beta, d2 * beta * beta + d1 * beta
        step = v - g1 / g2 if g2 > 0.0 else math.nan
        new_v = step if lo < step < hi else 0.5 * (lo + hi)
        if abs(new_v - v) < 1e-10 or hi - lo < 1e-10:
            v = new_v
            break
        v = new_v
    t = math.exp(-v)
    return t if math.isfinite(t) and t > 0.0 else 1.0

