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



def _newton_step(v: float, lo: float, hi: float, d1: float, d2: float
                 ) -> tuple[float | None, float, float, bool]:
    """One step of fit_temperature's search: (new v or None on non-finite, lo, hi, done)."""
    if not (math.isfinite(d1) and math.isfinite(d2)):
        return None, lo, hi, True
    beta = math.exp(v)
    if d1 > 0.0:
        hi = v
    elif d1 < 0.0:
        lo = v
    else:
        return v, lo, hi, True
    g1, g2 = d1 * beta, d2 * beta * beta + d1 * beta
    step = v - g1 / g2 if g2 > 0.0 else math.nan
    new_v = step if lo < step < hi else 0.5 * (lo + hi)
    return new_v, lo, hi, abs(new_v - v) < 1e-10 or hi - lo < 1e-10


def _means(x: Tensor) -> list[float]:
    """Each row's mean as `x[t].mean()` gives it (torch splits long 1-D reductions)."""
    if x.shape[1] <= 32768:
        return x.mean(dim=1).tolist()
    return [float(row.mean()) for row in x]


def fit_temperatures(logits: Tensor, labels: Tensor, *, log_t_range: float = 5.0
                     ) -> list[float]:
    """`fit_temperature(logits[t], labels)` for every t of (T, N, K) logits, searched together.

    Each trial runs the same safeguarded Newton search on its own; one batched softmax per
    iteration serves every trial still searching.
    """
    logits = check_tensor(logits, "logits")
    if logits.ndim != 3 or not logits.is_floating_point():
        raise ValueError("Expected argument `logits` to be a 3D floating point tensor (T, N, K), "
                         f"but got shape {tuple(logits.shape)} and dtype {logits.dtype}")
    t, n, k = logits.shape
    if n == 0 or k < 2:
        return [fit_temperature(row, labels, log_t_range=log_t_range) for row in logits]
    labels = check_labels(labels, n, k, name="logits")
    z = logits.double()
    finite = torch.isfinite(z).flatten(1).all(dim=1).tolist()
    z = z - z.mean(dim=2, keepdim=True)
    spread = (z.amax(dim=2) - z.amin(dim=2)).amax(dim=1).tolist()
    ok = [f and s > 0.0 for f, s in zip(finite, spread, strict=True)]
    out = [1.0] * t
    z_y = z.gather(2, labels.expand(t, n).unsqueeze(2)).squeeze(2)
    state = {i: (0.0, -float(log_t_range), float(log_t_range)) for i in range(t) if ok[i]}
    final: dict[int, float | None] = {}
    for _ in range(100):
        if not state:
            break
        rows = list(state)
        beta = torch.tensor([math.exp(state[i][0]) for i in rows], dtype=torch.float64)
        zs, zys = z[rows], z_y[rows]
        p = torch.softmax(beta.view(-1, 1, 1) * zs, dim=2)
        ez = (p * zs).sum(dim=2)
        ez2 = (p * zs * zs).sum(dim=2)
        d1s, d2s = _means(ez - zys), _means((ez2 - ez * ez).clamp_min(0.0))
        for i, d1, d2 in zip(rows, d1s, d2s, strict=True):
            v, lo, hi = state[i]
            new_v, lo, hi, done = _newton_step(v, lo, hi, d1, d2)
            if done:
                final[i] = new_v
                del state[i]
            else:
                state[i] = (new_v if new_v is not None else v, lo, hi)
    for i, (last, _, _) in state.items():  # 100 iterations without converging
        final[i] = last
    for i, v_end in final.items():
        temp = math.exp(-v_end) if v_end is not None else math.nan
        out[i] = temp if math.isfinite(temp) and temp > 0.0 else 1.0
    return out
