"""Training-time calibration methods besides label smoothing (SPEC §5.1b, `loss.method`).

Definitions, with logits z (N, K), target y, p = softmax(z), p_t = p_{i,y_i}:

* ``margin`` (MbLS, Liu et al. CVPR 2022, by-liu/MbLS ``LogitMarginL1``):
  ``CE + λ · mean_{i,k} ReLU((max_j z_ij − z_ik) − m)``; defaults m = 10, λ = 0.1.
* ``focal`` (Lin et al. 2017; Mukhoti et al. 2020): ``−(1 − p_t)^γ log p_t``, γ = 3.
* ``focal_adaptive`` (FLSD-53, torrvision/focal_calibration ``FocalLossAdaptive``): the same
  with γ = 5 where p_t < 0.2, γ = 3 where 0.2 ≤ p_t < 0.5 and the base γ where p_t ≥ 0.5; the
  per-sample γ is a constant of the step (no gradient flows through the choice).
* ``confidence_penalty`` (Pereyra et al. 2017): ``CE − β · H(p)``, β = 0.1.

The reductions follow torch (``mean`` over rows by default; the reference focal code sums, the
mean only rescales the gradient). Computed in float32 at least (float64 stays float64).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "METHOD_DEFAULTS",
    "AdaptiveFocalLoss",
    "ConfidencePenaltyLoss",
    "FocalLoss",
    "MarginLoss",
    "adaptive_focal_loss",
    "confidence_penalty_loss",
    "flsd_gammas",
    "focal_loss",
    "margin_loss",
    "method_loss",
    "params_from_spec",
]

# The parameters each method reads, with their defaults (label_smoothing reads loss.alpha).
METHOD_DEFAULTS: dict[str, dict[str, float]] = {
    "label_smoothing": {},
    "margin": {"margin": 10.0, "margin_weight": 0.1},
    "focal": {"gamma": 3.0},
    "focal_adaptive": {"gamma": 3.0},
    "confidence_penalty": {"beta": 0.1},
}
_REDUCTIONS = ("mean", "sum", "none")
_FLSD_GAMMAS = ((0.2, 5.0), (0.5, 3.0))  # p_t below the threshold -> this gamma


def _check_param(name: str, value: Any, *, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"Expected argument `{name}` to be a finite float, but got {value!r}")
    if value < 0 or (positive and value == 0):
        kind = "a positive float" if positive else "a non-negative float"
        raise ValueError(f"Expected argument `{name}` to be {kind}, but got {value}")
    return float(value)


def _check_inputs(logits: Any, target: Any, reduction: Any) -> tuple[Tensor, Tensor]:
    if not isinstance(logits, Tensor) or logits.ndim != 2 or not logits.is_floating_point():
        shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        raise ValueError(f"Expected argument `logits` to be a 2D float tensor, but got {shape}")
    if logits.shape[1] < 2:
        raise ValueError(
            f"Expected argument `logits` to have at least 2 classes, but got {logits.shape[1]}"
        )
    if (not isinstance(target, Tensor) or target.shape != logits.shape[:1]
            or target.dtype not in (torch.int64, torch.int32)):
        raise ValueError(
            f"Expected argument `target` to be an integer tensor of shape ({logits.shape[0]},), "
            f"but got {getattr(target, 'shape', target)!r}"
        )
    if target.numel() and (int(target.min()) < 0 or int(target.max()) >= logits.shape[1]):
        raise ValueError(
            f"Expected argument `target` to hold class ids in 0..{logits.shape[1] - 1}")
    if reduction not in _REDUCTIONS:
        raise ValueError(f"Expected argument `reduction` to be one of {_REDUCTIONS}, "
                         f"but got {reduction!r}")
    z = logits if logits.dtype == torch.float64 else logits.float()
    return z, target.long()


def _reduce(rows: Tensor, reduction: str) -> Tensor:
    if reduction == "mean":
        return rows.mean()
    return rows.sum() if reduction == "sum" else rows


def margin_loss(logits: Tensor, target: Tensor, *, margin: float = 10.0,
                margin_weight: float = 0.1, reduction: str = "mean") -> Tensor:
    """MbLS: CE + λ·mean_k ReLU(max_j z_j − z_k − m) per row (the mean over rows and classes)."""
    z, y = _check_inputs(logits, target, reduction)
    m = _check_param("margin", margin, positive=True)
    lam = _check_param("margin_weight", margin_weight)
    ce = F.cross_entropy(z, y, reduction="none")
    diff = z.amax(dim=1, keepdim=True) - z
    return _reduce(ce + lam * F.relu(diff - m).mean(dim=1), reduction)


def _focal_rows(z: Tensor, y: Tensor, gamma: Tensor | float) -> Tensor:
    logpt = F.log_softmax(z, dim=1).gather(1, y.unsqueeze(1)).squeeze(1)
    # (1 - p_t) as -expm1(log p_t): exact near p_t = 1, where 1 - exp() cancels
    return -((-torch.expm1(logpt)).clamp_min(0) ** gamma) * logpt


def focal_loss(logits: Tensor, target: Tensor, *, gamma: float = 3.0,
               reduction: str = "mean") -> Tensor:
    """Focal loss −(1 − p_t)^γ log p_t (γ = 0 is cross-entropy)."""
    z, y = _check_inputs(logits, target, reduction)
    return _reduce(_focal_rows(z, y, _check_param("gamma", gamma)), reduction)


def flsd_gammas(pt: Tensor, gamma: float) -> Tensor:
    """FLSD-53's per-sample γ: 5 for p_t < 0.2, 3 for 0.2 ≤ p_t < 0.5, else `gamma`."""
    out = torch.full_like(pt, float(gamma))
    for threshold, value in reversed(_FLSD_GAMMAS):
        out = torch.where(pt < threshold, torch.full_like(pt, value), out)
    return out


def adaptive_focal_loss(logits: Tensor, target: Tensor, *, gamma: float = 3.0,
                        reduction: str = "mean") -> Tensor:
    """FLSD-53 focal loss: γ chosen per sample from p_t (no gradient through the choice)."""
    z, y = _check_inputs(logits, target, reduction)
    g = _check_param("gamma", gamma)
    with torch.no_grad():
        pt = F.softmax(z, dim=1).gather(1, y.unsqueeze(1)).squeeze(1)
        gammas = flsd_gammas(pt, g)
    return _reduce(_focal_rows(z, y, gammas), reduction)


def confidence_penalty_loss(logits: Tensor, target: Tensor, *, beta: float = 0.1,
                            reduction: str = "mean") -> Tensor:
    """Confidence penalty: CE − β·H(softmax(z)) per row."""
    z, y = _check_inputs(logits, target, reduction)
    b = _check_param("beta", beta)
    logp = F.log_softmax(z, dim=1)
    ce = -logp.gather(1, y.unsqueeze(1)).squeeze(1)
    entropy = -(logp.exp() * logp).sum(dim=1)
    return _reduce(ce - b * entropy, reduction)


_FUNCTIONS = {
    "margin": margin_loss,
    "focal": focal_loss,
    "focal_adaptive": adaptive_focal_loss,
    "confidence_penalty": confidence_penalty_loss,
}


def method_loss(logits: Tensor, target: Tensor, method: str, params: dict[str, float]) -> Tensor:
    """The mean loss of `method` (not label_smoothing) with its parameters (defaults filled in)."""
    if method not in _FUNCTIONS:
        raise ValueError(f"Expected argument `method` to be one of {tuple(_FUNCTIONS)}, "
                         f"but got {method!r}")
    known = METHOD_DEFAULTS[method]
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise ValueError(f"Expected parameters of method {method!r} among {sorted(known)}, "
                         f"but got {unknown}")
    return _FUNCTIONS[method](logits, target, **{**known, **params})  # type: ignore[operator]


def params_from_spec(loss: dict[str, Any]) -> dict[str, float]:
    """The parameters of the spec's loss.method, read from the resolved `loss` block."""
    names = METHOD_DEFAULTS.get(str(loss.get("method", "label_smoothing")), {})
    return {n: float(loss[n]) if loss.get(n) is not None else d for n, d in names.items()}


class _MethodLoss(nn.Module):
    method = ""

    def __init__(self, *, reduction: str = "mean", **params: float) -> None:
        super().__init__()
        if reduction not in _REDUCTIONS:
            raise ValueError(f"Expected argument `reduction` to be one of {_REDUCTIONS}, "
                             f"but got {reduction!r}")
        self.reduction = reduction
        self.params = {**METHOD_DEFAULTS[self.method], **params}
        _FUNCTIONS[self.method](torch.zeros(1, 2), torch.zeros(1, dtype=torch.long),
                                **self.params)  # type: ignore[operator]  # checks the params

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        """The loss of the batch."""
        fn = _FUNCTIONS[self.method]
        return fn(logits, target, reduction=self.reduction, **self.params)  # type: ignore[operator]

    def extra_repr(self) -> str:
        """The parameters, for print(module)."""
        return ", ".join(f"{k}={v:g}" for k, v in self.params.items())


class MarginLoss(_MethodLoss):
    """Module form of `margin_loss` (MbLS)."""

    method = "margin"


class FocalLoss(_MethodLoss):
    """Module form of `focal_loss`."""

    method = "focal"


class AdaptiveFocalLoss(_MethodLoss):
    """Module form of `adaptive_focal_loss` (FLSD-53)."""

    method = "focal_adaptive"


class ConfidencePenaltyLoss(_MethodLoss):
    """Module form of `confidence_penalty_loss`."""

    method = "confidence_penalty"
