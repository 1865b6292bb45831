"""Label-smoothed cross-entropy: one fused, memory-lean loss for every smoothing variant.

With K classes, logits z, target class y and a smoothing distribution u the soft target is
q = (1 - alpha) * onehot(y) + alpha * u and the loss is -sum_k w_k q_k log softmax(z)_k
(w = class weights, 1 by default; this is exactly torch's `label_smoothing` + `weight`
convention).  Every categorical variant is written as q = a * onehot(y) + s with a scalar
``a`` and a fixed K-vector ``s``:

* ``uniform``    a = 1 - alpha,                s_k = alpha / K          (== torch)
* ``off_target`` a = 1 - alpha - alpha/(K-1),  s_k = alpha / (K - 1)
* ``prior``      a = 1 - alpha,                s_k = alpha * u_k
* ``binary``     one logit, sigmoid, target t = y (1 - alpha) + alpha / 2 (Keras convention)

``form="kl"`` returns KL(q || p) = CE - H(q) (OpenNMT); the gradient is the same.

Small plain batches (uniform/off_target, no weight, up to `TORCH_DISPATCH_MAX_ELEMS`
logits) take a shorter path: on the CPU a soft-target dot product in three autograd nodes
(`core.ml.small_ce`, fewer than torch's), elsewhere (or with an `ignore_index`) torch's
`F.cross_entropy(label_smoothing=)` itself. Stacked trials (logits (T, B, K), one alpha per
trial) run the fused kernel once per trial into one gradient buffer. The fused path
(`core.ml.loss_kernel`) works through the rows in cache-sized chunks: one log-softmax per chunk
written straight into the gradient buffer, the loss read off it, and the buffer turned in
place into the (pre-scaled) gradient ``c * softmax - a w_y onehot - w * s``.
No K-wide log-softmax or soft-target matrix is ever held: the peak extra memory is the one
gradient buffer (plus chunk-sized temporaries), and backward only rescales it in place.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from core.ml.loss_checks import (
    as_vector,
    check_alpha,
    check_alphas,
    check_choice,
    check_length,
    check_logits,
    check_prior,
    check_prior_use,
    check_target,
)
from core.ml.loss_kernel import (
    FusedSmoothedCE,
    StackedFusedSmoothedCE,
    compute_dtype,
    fused,
    make_plan,
    smoothing,
)
from core.ml.methods import *  # noqa: F403  (margin, focal, FLSD-53, confidence penalty)
from core.ml.small_ce import SMALL_MAX_ELEMS, small_smoothed_ce, stacked_small_ce
from core.spec import FORMS, VARIANTS  # noqa: E402  (the spec's vocabularies, written once)

REDUCTIONS = ("mean", "sum", "none")

# At most this many logits go straight to torch's own kernels (uniform/off_target, no weight):
# below it torch's per-call cost is lower than the chunk planning of the fused kernel, and
# the value is the same formula. Tests set it to 0 to exercise the fused kernel everywhere.
TORCH_DISPATCH_MAX_ELEMS = 1 << 18
_FAST_DTYPES = (torch.float32, torch.float64)


# --------------------------------------------------------------------------- torch's kernels


def _uniform_entropy(alpha: float, k: int, variant: str) -> float:
    """H(q) of the uniform / off-target soft target (the same for every class)."""
    def xlogx(x: float) -> float:
        return x * math.log(x) if x > 0 else 0.0

    rest = alpha / k if variant == "uniform" else alpha / (k - 1)
    top = 1.0 - alpha + alpha / k if variant == "uniform" else 1.0 - alpha
    return -(xlogx(top) + (k - 1) * xlogx(rest))


def _torch_dispatch(logits: Any, target: Any, alpha: Any, variant: Any, prior: Any, form: Any,
                    weight: Any, ignore_index: int, reduction: Any) -> Tensor | None:
    """F.cross_entropy(label_smoothing=) for small plain batches; None when it does not apply."""
    if not (isinstance(logits, Tensor) and isinstance(target, Tensor) and logits.ndim == 2
            and prior is None and weight is None and variant in ("uniform", "off_target")
            and logits.numel() <= TORCH_DISPATCH_MAX_ELEMS and logits.dtype in _FAST_DTYPES
            and target.dtype == torch.int64 and target.shape == logits.shape[:1]
            and type(alpha) in (float, int) and 0.0 <= alpha < 1.0 and reduction in REDUCTIONS
            and (form == "ce" or (form == "kl" and reduction == "mean"))):
        return None
    k = logits.shape[1]
    eps = float(alpha) if variant == "uniform" else (alpha * k / (k - 1) if k > 1 else 2.0)
    if eps > 1.0:
        return None
    if logits.is_cuda:  # a bad class index is a device-side assert there: check first
        bad = ((target < 0) | (target >= k)) & (target != ignore_index)
        if bool(bad.any()):
            return None  # the full path raises the ValueError
    out = None
    if logits.device.type == "cpu" and logits.numel() <= SMALL_MAX_ELEMS and ignore_index < 0:
        with contextlib.suppress(IndexError, RuntimeError):  # a target outside [0, K)
            out = small_smoothed_ce(logits, target, eps, reduction)
    if out is None:
        try:
            out = F.cross_entropy(logits, target, ignore_index=ignore_index,
                                  reduction=reduction, label_smoothing=eps)
        except (IndexError, RuntimeError):
            return None  # out-of-range targets: the full path explains them
    return out - _uniform_entropy(float(alpha), k, variant) if form == "kl" else out


# --------------------------------------------------------------------------- stacked trials


def _stacked(logits: Tensor, target: Tensor, alphas: Tensor, variant: str,
             prior: Tensor | None, form: str, weight: Tensor | None, ignore_index: int,
             reduction: str) -> Tensor:
    """Stacked logits (T, B, K) (binary: (T, B) or (T, B, 1)) with alpha[t] for trial t."""
    t = alphas.numel()
    binary = variant == "binary"
    if binary and logits.ndim == 3 and logits.shape[2] == 1:
        logits = logits.squeeze(2)
    if logits.ndim != (2 if binary else 3) or logits.shape[0] != t:
        want = "(T, B) or (T, B, 1)" if binary else "(T, B, K)"
        raise ValueError(f"Expected `logits` of shape {want} with T={t} (one row per alpha), "
                         f"but got {tuple(logits.shape)}")
    b = logits.shape[1]
    if tuple(target.shape) == (b,):
        target = target.expand(t, b)
    if tuple(target.shape) != (t, b):
        raise ValueError(f"Expected `target` of shape ({b},) or ({t}, {b}), but got "
                         f"{tuple(target.shape)}")
    if binary:
        return _binary(logits, target, alphas.to(logits.device).unsqueeze(1), form, weight,
                       ignore_index, reduction)
    k = logits.shape[2]
    check_length("prior", prior, k)
    check_length("weight", weight, k)
    target = check_target(target, k, ignore_index, binary=False)
    if weight is None and logits.numel() <= TORCH_DISPATCH_MAX_ELEMS:
        return stacked_small_ce(logits, target, alphas, variant, prior, form, ignore_index,
                                reduction)
    z = logits.contiguous()
    plans = [make_plan(target[i], k, float(alphas[i]), variant, prior, form, weight,
                       ignore_index, reduction, logits.dtype, logits.device) for i in range(t)]
    if z.requires_grad and torch.is_grad_enabled():
        return StackedFusedSmoothedCE.apply(z, plans)
    with torch.no_grad():
        return torch.stack([fused(z[i], p, False)[0] for i, p in enumerate(plans)]).to(z.dtype)


# --------------------------------------------------------------------------- front ends


def _categorical(logits: Tensor, target: Tensor, alpha: float, variant: str,
                 prior: Tensor | None, form: str, weight: Tensor | None, ignore_index: int,
                 reduction: str) -> Tensor:
    """Categorical variants: (N, K) or (N, K, d1, ...) logits against class indices."""
    if logits.ndim < 2:
        raise ValueError(
            f"Expected `logits` of shape (N, K) for variant {variant!r}, but got "
            f"{tuple(logits.shape)}"
        )
    k = logits.shape[1]
    expected = (logits.shape[0], *logits.shape[2:])
    if tuple(target.shape) != expected:
        raise ValueError(
            f"Expected `target` of shape {expected} for logits of shape {tuple(logits.shape)}, "
            f"but got {tuple(target.shape)}"
        )
    check_length("prior", prior, k)
    check_length("weight", weight, k)
    target = check_target(target, k, ignore_index, binary=False)
    z = logits if logits.ndim == 2 else logits.movedim(1, -1).reshape(-1, k)
    z = z.contiguous()
    plan = make_plan(target.reshape(-1), k, alpha, variant, prior, form, weight,
                     ignore_index, reduction, logits.dtype, logits.device)
    if z.requires_grad and torch.is_grad_enabled():
        out = FusedSmoothedCE.apply(z, plan)
    else:
        out = fused(z.detach(), plan, with_grad=False)[0].to(z.dtype)
    return out.reshape(expected) if reduction == "none" else out


def _binary(logits: Tensor, target: Tensor, alpha: float | Tensor, form: str,
            weight: Tensor | None, ignore_index: int, reduction: str) -> Tensor:
    """One-logit sigmoid loss against t = y (1 - alpha) + alpha / 2 (class weights w0, w1).

    Stacked trials pass (T, B) logits and targets and alpha (T, 1): reductions run per trial.
    """
    stacked = isinstance(alpha, Tensor)
    if not stacked and logits.ndim == 2 and logits.shape[1] == 1:
        logits = logits.squeeze(1)
    if not stacked and logits.ndim != 1:
        raise ValueError(
            f"Expected `logits` of shape (N,) or (N, 1) for variant 'binary', but got "
            f"{tuple(logits.shape)}"
        )
    if target.ndim == 2 and target.shape[1] == 1:
        target = target.squeeze(1)
    if tuple(target.shape) != tuple(logits.shape):
        raise ValueError(
            f"Expected `target` of shape {tuple(logits.shape)} for variant 'binary', but got "
            f"{tuple(target.shape)}"
        )
    check_length("weight", weight, 2)
    target = check_target(target, 2, ignore_index, binary=True)
    cdtype = compute_dtype(logits.dtype)
    z = logits.to(cdtype)
    keep = target != ignore_index
    y = torch.where(keep, target, 0).to(cdtype)
    a = alpha.to(cdtype) if isinstance(alpha, Tensor) else alpha
    t = y * (1.0 - a) + a / 2
    w1, w0 = (1.0, 1.0) if weight is None else (weight[1].to(z), weight[0].to(z))
    sp_pos = torch.nn.functional.softplus(z)  # -log(1 - sigmoid(z))
    loss = w1 * t * (sp_pos - z) + w0 * (1.0 - t) * sp_pos
    if form == "kl":
        loss = loss + w1 * torch.special.xlogy(t, t) + w0 * torch.special.xlogy(1.0 - t, 1.0 - t)
    loss = torch.where(keep, loss, 0.0)
    if reduction == "none":
        return loss.to(logits.dtype)
    if reduction == "sum":
        return loss.sum(-1).to(logits.dtype)
    wy = keep.to(cdtype) if weight is None else torch.where(keep, torch.where(y > 0, w1, w0), 0.0)
    return (loss.sum(-1) / wy.sum(-1)).to(logits.dtype)


def _check_options(variant: Any, form: Any, reduction: Any) -> None:
    """Validate the string arguments shared by the function and the module."""
    check_choice("variant", variant, VARIANTS)
    check_choice("form", form, FORMS)
    check_choice("reduction", reduction, REDUCTIONS)


def _check_common(alpha: Any, variant: Any, form: Any, reduction: Any) -> float:
    """Validate the scalar arguments shared by the function and the module."""
    _check_options(variant, form, reduction)
    return check_alpha(alpha)


def label_smoothed_cross_entropy(
    logits: Tensor,
    target: Tensor,
    alpha: float | Sequence[float] | Tensor = 0.0,
    variant: str = "uniform",
    *,
    prior: Tensor | None = None,
    form: str = "ce",
    weight: Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
) -> Tensor:
    """Return the label-smoothed cross-entropy (or KL) of `logits` against class indices.

    Stacked trials: `alpha` a sequence or 1-D tensor of T values, logits (T, B, K) and target
    (B,) or (T, B); trial t's result (T,) or (T, B) equals a call on logits[t] with alpha[t].
    """
    fast = _torch_dispatch(logits, target, alpha, variant, prior, form, weight, ignore_index,
                           reduction)
    if fast is not None:
        return fast
    stacked = (isinstance(alpha, Sequence) and not isinstance(alpha, str)) or (
        isinstance(alpha, Tensor) and alpha.ndim == 1)
    if stacked:
        _check_options(variant, form, reduction)
    alpha_value = check_alphas(alpha) if stacked else _check_common(alpha, variant, form,
                                                                     reduction)
    check_logits(logits)
    check_prior_use(variant, prior)
    prior_vec = None if prior is None else check_prior(prior)
    weight_vec = None if weight is None else as_vector("weight", weight)
    if not isinstance(target, Tensor):
        raise ValueError(f"Expected argument `target` to be a Tensor, but got {type(target)}")
    if isinstance(alpha_value, Tensor):
        return _stacked(logits, target, alpha_value, variant, prior_vec, form, weight_vec,
                        ignore_index, reduction)
    alpha = alpha_value
    if variant == "binary":
        return _binary(logits, target, alpha, form, weight_vec, ignore_index, reduction)
    return _categorical(logits, target, alpha, variant, prior_vec, form, weight_vec,
                        ignore_index, reduction)


class LabelSmoothingCrossEntropy(nn.Module):
    """Module form of `label_smoothed_cross_entropy` (prior and weight move with `.to()`)."""

    prior: Tensor | None
    weight: Tensor | None

    def __init__(
        self,
        alpha: float = 0.0,
        variant: str = "uniform",
        *,
        prior: Tensor | None = None,
        form: str = "ce",
        weight: Tensor | None = None,
        ignore_index: int = -100,
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        self.alpha = _check_common(alpha, variant, form, reduction)
        check_prior_use(variant, prior)
        self.variant = variant
        self.form = form
        self.ignore_index = int(ignore_index)
        self.reduction = reduction
        self.register_buffer("prior", None if prior is None else check_prior(prior))
        self.register_buffer("weight", None if weight is None else as_vector("weight", weight))

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        """Compute the loss for one batch."""
        return label_smoothed_cross_entropy(
            logits, target, self.alpha, self.variant, prior=self.prior, form=self.form,
            weight=self.weight, ignore_index=self.ignore_index, reduction=self.reduction,
        )

    def extra_repr(self) -> str:
        """Summarise the configuration."""
        return f"alpha={self.alpha}, variant={self.variant!r}, form={self.form!r}"


def soft_targets(
    target: Tensor, num_classes: int, alpha: float, variant: str = "uniform", *,
    prior: Tensor | None = None,
) -> Tensor:
    """Dense soft targets q (N, K) float64; for 'binary', the smoothed P(y=1) per sample."""
    alpha = check_alpha(alpha)
    check_choice("variant", variant, VARIANTS)
    check_prior_use(variant, prior)
    if variant == "binary":
        y = check_target(target, 2, ignore_index=-(1 << 62), binary=True)
        return y.double() * (1.0 - alpha) + alpha / 2
    prior_vec = None if prior is None else check_prior(prior)
    check_length("prior", prior_vec, num_classes)
    y = check_target(target, num_classes, ignore_index=-(1 << 62), binary=False).reshape(-1)
    a, _, s = smoothing(variant, alpha, num_classes, prior_vec)
    q = s.to(y.device).expand(y.numel(), num_classes).clone()
    q.scatter_add_(1, y.unsqueeze(1), torch.full((y.numel(), 1), a, dtype=q.dtype,
                                                 device=q.device))
    return q.reshape(*target.shape, num_classes)


__all__ = [
    "FORMS",
    "REDUCTIONS",
    "VARIANTS",
    "LabelSmoothingCrossEntropy",
    "label_smoothed_cross_entropy",
    "soft_targets",
]
