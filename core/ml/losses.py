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

The fast path (`_FusedSmoothedCE`) works through the rows in cache-sized chunks: one
log-softmax per chunk written straight into the gradient buffer, the loss read off it, and the
buffer turned in place into the (pre-scaled) gradient ``c * softmax - a w_y onehot - w * s``.
No K-wide log-softmax or soft-target matrix is ever held: the peak extra memory is the one
gradient buffer (plus chunk-sized temporaries), and backward only rescales it in place.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

VARIANTS = ("uniform", "off_target", "prior", "binary")
FORMS = ("ce", "kl")
REDUCTIONS = ("mean", "sum", "none")

_CHUNK_ELEMS_CPU = 1 << 21  # 8 MiB of float32 per chunk: in L3, few parallel regions
_CHUNK_ELEMS_CUDA = 1 << 24
_SMALL_K = 16  # below this the row-wise log-softmax kernel is slow; use a transposed chunk
_TEMP_FRACTION = 0.1  # chunk temporaries may use at most this fraction of one logits buffer
_PRIOR_TOL = 1e-4
_log_softmax_out = torch.ops.aten._log_softmax.out


# --------------------------------------------------------------------------- validation


def _check_choice(name: str, value: object, choices: tuple[str, ...]) -> str:
    """Raise ValueError unless `value` is one of `choices`."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"Expected argument `{name}` to be one of {choices}, but got {value!r}")
    return value


def _check_alpha(alpha: object) -> float:
    """Raise ValueError unless alpha is a real number in [0, 1)."""
    if isinstance(alpha, bool) or not isinstance(alpha, int | float):
        raise ValueError(f"Expected argument `alpha` to be a float in [0, 1), but got {alpha!r}")
    if not 0.0 <= float(alpha) < 1.0:
        raise ValueError(f"Expected argument `alpha` to be in [0, 1), but got {alpha}")
    return float(alpha)


def _as_vector(name: str, value: Any) -> Tensor:
    """Convert a tensor or sequence to a finite 1-D float tensor, or raise ValueError."""
    try:
        vec = torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError) as err:
        msg = f"Expected argument `{name}` to be a 1-D tensor, but got {value!r}"
        raise ValueError(msg) from err
    if vec.ndim != 1 or not (vec.is_floating_point() or vec.dtype in (torch.int32, torch.int64)):
        raise ValueError(
            f"Expected argument `{name}` to be a 1-D float tensor, but got shape "
            f"{tuple(vec.shape)} and dtype {vec.dtype}"
        )
    vec = vec.detach().double() if vec.dtype != torch.float64 else vec.detach()
    if not bool(torch.isfinite(vec).all()) or bool((vec < 0).any()):
        raise ValueError(f"Expected argument `{name}` to have finite, non-negative entries")
    return vec


def _check_prior(prior: Any) -> Tensor:
    """Return the prior as a float64 1-D distribution, or raise ValueError."""
    vec = _as_vector("prior", prior)
    total = float(vec.sum())
    if abs(total - 1.0) > _PRIOR_TOL:
        raise ValueError(f"Expected argument `prior` to sum to 1, but it sums to {total:.6g}")
    return vec


def _check_length(name: str, vec: Tensor | None, k: int) -> None:
    """Raise ValueError unless `vec` (if given) has exactly k entries."""
    if vec is not None and vec.numel() != k:
        raise ValueError(f"Expected argument `{name}` to have {k} entries, but got {vec.numel()}")


def _check_prior_use(variant: str, prior: Any) -> None:
    """`prior` is required by, and only accepted with, variant='prior'."""
    if variant == "prior" and prior is None:
        raise ValueError("Expected argument `prior` to be given when `variant` is 'prior'")
    if variant != "prior" and prior is not None:
        raise ValueError(f"Expected argument `prior` to be None for variant {variant!r}")


def _check_target(target: Tensor, k: int, ignore_index: int, binary: bool) -> Tensor:
    """Return target as int64 after checking every entry is a class or ignore_index."""
    if not isinstance(target, Tensor):
        raise ValueError(f"Expected argument `target` to be a Tensor, but got {type(target)}")
    if target.is_floating_point():
        if not binary:
            raise ValueError(
                f"Expected argument `target` to hold class indices (integer dtype), but got "
                f"{target.dtype}"
            )
        if not bool((target == target.round()).all()):
            raise ValueError("Expected argument `target` to hold 0/1 labels for variant 'binary'")
    elif target.dtype == torch.bool or target.is_complex():
        raise ValueError(f"Expected argument `target` to have an integer dtype, got {target.dtype}")
    target = target.long()
    bad = ((target < 0) | (target >= k)) & (target != ignore_index)
    if bool(bad.any()):
        value = int(target[bad][0])
        raise ValueError(
            f"Expected argument `target` to be in [0, {k}) or ignore_index={ignore_index}, "
            f"but got {value}"
        )
    return target


def _check_logits(logits: Tensor) -> None:
    """Raise ValueError unless logits is a floating-point tensor."""
    if not isinstance(logits, Tensor) or not logits.is_floating_point():
        raise ValueError(f"Expected argument `logits` to be a float Tensor, but got {logits!r}")


# --------------------------------------------------------------------------- smoothing


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Half types accumulate in float32; float64 stays float64."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _smoothing(
    variant: str, alpha: float, k: int, prior: Tensor | None
) -> tuple[float, float | None, Tensor]:
    """Return (a, scalar s or None, s as a float64 K-vector) with q = a * onehot(y) + s."""
    if variant == "uniform":
        return 1.0 - alpha, alpha / k, torch.full((k,), alpha / k, dtype=torch.float64)
    if variant == "off_target":
        if k < 2:
            raise ValueError(f"Expected at least 2 classes for variant 'off_target', but got {k}")
        gamma = alpha / (k - 1)
        return 1.0 - alpha - gamma, gamma, torch.full((k,), gamma, dtype=torch.float64)
    if prior is None:
        raise ValueError("Expected argument `prior` to be given when `variant` is 'prior'")
    return 1.0 - alpha, None, alpha * prior


def _class_entropy(a: float, s: Tensor, weight: Tensor | None) -> Tensor:
    """H_c = -sum_k w_k q_k log q_k of the soft target for every class c (float64, O(K))."""
    w = torch.ones_like(s) if weight is None else weight
    xs = torch.special.xlogy(s, s)
    qc = a + s
    return -((w * xs).sum() - w * xs + w * torch.special.xlogy(qc, qc))


# --------------------------------------------------------------------------- fused kernel


@dataclass
class _Plan:
    """Everything the fused kernel needs besides the logits (all tensors on the logits' device)."""

    target: Tensor  # (N,) int64, ignored rows replaced by class 0
    ignored: Tensor | None  # (M,) int64 row indices to zero, or None
    ignored_mask: Tensor | None  # (N,) bool, or None
    a: float
    s: float | None  # scalar smoothing mass per class (unweighted uniform/off_target)
    ws: Tensor | None  # (K,) w * s when weights or a prior are in play
    wy: Tensor | None  # (N,) w[y] when weighted
    c_sum: float  # sum_k w_k s_k (used for the per-row total mass c = a * w_y + c_sum)
    scale: Tensor  # 0-dim: 1/denominator for mean, 1 otherwise
    row_offset: Tensor | None  # (N,) H(q) per row for form='kl'
    reduction: str
    cdtype: torch.dtype
    denominator: Tensor  # 0-dim, for reduction='mean'


def _rows_per_chunk(n: int, k: int, logits: Tensor, temp_elem_bytes: int) -> int:
    """Rows per chunk: cache-sized, and temporaries kept under a fraction of the logits."""
    budget = _CHUNK_ELEMS_CUDA if logits.is_cuda else _CHUNK_ELEMS_CPU
    rows = max(1, budget // k)
    if temp_elem_bytes:
        cap = int(_TEMP_FRACTION * n * logits.element_size() / temp_elem_bytes)
        rows = min(rows, max(1, cap))
    return min(rows, max(n, 1))


def _chunk_targets(
    plan: _Plan, r0: int, r1: int, grad: bool
) -> tuple[Tensor | None, Tensor | None]:
    """Per-row weights w_y and the values -a * scale * w_y scattered at y, for rows r0:r1."""
    wy = None if plan.wy is None else plan.wy[r0:r1]
    if not grad:
        return wy, None
    neg = plan.scale * -plan.a
    vals = neg.expand(r1 - r0) if wy is None else wy * neg
    return wy, vals


def _row_loss_rowwise(bc: Tensor, yc: Tensor, wy: Tensor | None, plan: _Plan, out: Tensor) -> None:
    """out = -a w_y ls_y - sum_k ws_k ls_k for a chunk holding log-softmax rows."""
    if plan.ws is not None:
        torch.mv(bc, plan.ws, out=out)
        out.neg_()
    elif plan.s:
        torch.sum(bc, 1, out=out)
        out.mul_(-plan.s)
    else:
        out.zero_()
    ly = bc.gather(1, yc.unsqueeze(1)).squeeze(1)
    if wy is not None:
        ly.mul_(wy)
    out.sub_(ly, alpha=plan.a)


def _grad_from_logsoftmax(bc: Tensor, yc: Tensor, wy: Tensor | None, vals: Tensor | None,
                          plan: _Plan) -> None:
    """Turn log-softmax rows in place into scale * (c softmax - a w_y onehot - w s)."""
    if wy is not None:
        bc.add_(torch.log((wy * plan.a + plan.c_sum) * plan.scale).unsqueeze(1))
    elif plan.reduction == "mean":
        bc.add_(torch.log(plan.scale))
    bc.exp_()
    _subtract_smoothing(bc, plan, dim=1)
    if vals is not None:
        bc.scatter_add_(1, yc.unsqueeze(1), vals.unsqueeze(1))


def _subtract_smoothing(bc: Tensor, plan: _Plan, dim: int) -> None:
    """Subtract scale * w * s along the class dimension `dim` of a chunk."""
    if plan.ws is not None:
        ws = plan.ws * plan.scale
        bc.sub_(ws if dim == 1 else ws.unsqueeze(1))
    elif plan.s:
        bc.sub_(plan.scale * plan.s)


class _Sink:
    """Collects per-row losses chunk by chunk: kept for reduction='none', else summed."""

    def __init__(self, n: int, plan: _Plan, device: torch.device) -> None:
        self.plan = plan
        keep = plan.reduction == "none"
        self.rows = torch.empty(n if keep else 0, dtype=plan.cdtype, device=device)
        self.total = torch.zeros((), dtype=plan.cdtype, device=device)
        self.scratch = self.rows

    def chunk(self, r0: int, r1: int) -> Tensor:
        """Where the losses of rows r0:r1 are to be written."""
        if self.plan.reduction == "none":
            return self.rows[r0:r1]
        if self.scratch.numel() < r1 - r0:
            self.scratch = torch.empty(r1 - r0, dtype=self.rows.dtype, device=self.rows.device)
        return self.scratch[: r1 - r0]

    def done(self, out: Tensor, r0: int, r1: int) -> None:
        """Apply the KL offset and the ignore mask to a finished chunk; accumulate it."""
        if self.plan.row_offset is not None:
            out.sub_(self.plan.row_offset[r0:r1])
        if self.plan.ignored_mask is not None:
            out.masked_fill_(self.plan.ignored_mask[r0:r1], 0.0)
        if self.plan.reduction != "none":
            self.total.add_(out.sum())

    def result(self) -> Tensor:
        """The reduced loss (compute dtype)."""
        if self.plan.reduction == "none":
            return self.rows
        if self.plan.reduction == "mean":
            return self.total / self.plan.denominator
        return self.total


def _chunk_rowwise(z: Tensor, buf: Tensor | None, loss: _Sink, plan: _Plan) -> None:
    """Fused loss (and gradient into `buf`) over row chunks for K >= _SMALL_K."""
    n, k = z.shape
    direct = buf is not None and buf.dtype == plan.cdtype
    cd_bytes = torch.empty((), dtype=plan.cdtype).element_size()
    temp_bytes = (0 if direct else cd_bytes) + (cd_bytes if z.dtype != plan.cdtype else 0)
    rows = _rows_per_chunk(n, k, z, temp_bytes)
    temp = torch.empty((0 if direct else rows, k), dtype=plan.cdtype, device=z.device)
    for r0 in range(0, n, rows):
        r1 = min(n, r0 + rows)
        zc = z[r0:r1]
        if zc.dtype != plan.cdtype:
            zc = zc.to(plan.cdtype)
        bc = buf[r0:r1] if direct and buf is not None else temp[: r1 - r0]
        _log_softmax_out(zc, 1, False, out=bc)
        yc = plan.target[r0:r1]
        wy, vals = _chunk_targets(plan, r0, r1, buf is not None)
        out = loss.chunk(r0, r1)
        _row_loss_rowwise(bc, yc, wy, plan, out)
        loss.done(out, r0, r1)
        if buf is not None:
            _grad_from_logsoftmax(bc, yc, wy, vals, plan)
            if not direct:
                buf[r0:r1].copy_(bc)


def _chunk_transposed(z: Tensor, buf: Tensor | None, loss: _Sink, plan: _Plan) -> None:
    """Fused loss (and gradient) for small K: work on (K, rows) chunks, vectorised over rows."""
    n, k = z.shape
    rows = _rows_per_chunk(n, k, z, torch.empty((), dtype=plan.cdtype).element_size())
    temp = torch.empty((k, rows), dtype=plan.cdtype, device=z.device)
    for r0 in range(0, n, rows):
        r1 = min(n, r0 + rows)
        tc = temp[:, : r1 - r0]
        tc.copy_(z[r0:r1].t())
        tc.sub_(tc.amax(0))  # z' = z - max, so log-softmax = z' - log S
        yc = plan.target[r0:r1].unsqueeze(0)
        wy, vals = _chunk_targets(plan, r0, r1, buf is not None)
        out = loss.chunk(r0, r1)
        if plan.ws is not None:
            torch.mv(tc.t(), plan.ws, out=out)
            out.neg_()
        elif plan.s:
            torch.sum(tc, 0, out=out)
            out.mul_(-plan.s)
        else:
            out.zero_()
        zy = tc.gather(0, yc).squeeze(0)
        c = None if wy is None else wy * plan.a + plan.c_sum
        if wy is not None:
            zy.mul_(wy)
        out.sub_(zy, alpha=plan.a)
        tc.exp_()
        log_s = tc.sum(0).log_()
        out.add_(log_s if c is None else log_s * c)
        loss.done(out, r0, r1)
        if buf is None:
            continue
        factor = torch.exp(-log_s) * plan.scale
        tc.mul_(factor if c is None else factor * c)
        _subtract_smoothing(tc, plan, dim=0)
        if vals is not None:
            tc.scatter_add_(0, yc, vals.unsqueeze(0))
        buf[r0:r1].copy_(tc.t())


def _fused(z: Tensor, plan: _Plan, with_grad: bool) -> tuple[Tensor, Tensor | None]:
    """Reduced loss (compute dtype) and, if asked, the pre-scaled gradient buffer."""
    n, k = z.shape
    sink = _Sink(n, plan, z.device)
    buf = torch.empty_like(z, memory_format=torch.contiguous_format) if with_grad else None
    if n:
        kernel = _chunk_transposed if k < _SMALL_K else _chunk_rowwise
        kernel(z, buf, sink, plan)
    if plan.ignored is not None and buf is not None:
        buf.index_fill_(0, plan.ignored, 0.0)
    return sink.result(), buf


class _FusedSmoothedCE(torch.autograd.Function):
    """Loss and gradient in one chunked pass; backward rescales the stored gradient in place."""

    @staticmethod
    def forward(ctx: Any, z: Tensor, plan: _Plan) -> Tensor:  # type: ignore[override]
        """Compute the reduced loss and keep the pre-scaled gradient for backward."""
        loss, buf = _fused(z, plan, with_grad=True)
        ctx.plan = plan
        ctx.buf = buf
        ctx.save_for_backward(z)  # only read if backward runs a second time
        return loss.to(z.dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        """Scale the stored gradient by grad_out in place (recompute if it was already used)."""
        buf = ctx.buf
        ctx.buf = None
        if buf is None:  # retain_graph / gradcheck: a second backward recomputes
            (z,) = ctx.saved_tensors
            buf = _fused(z, ctx.plan, with_grad=True)[1]
        if ctx.plan.reduction == "none":
            buf.mul_(grad_out.unsqueeze(1).to(buf.dtype))
        elif grad_out.is_cuda or float(grad_out) != 1.0:
            buf.mul_(grad_out.to(buf.dtype))
        return buf, None


# --------------------------------------------------------------------------- front ends


def _make_plan(target: Tensor, k: int, alpha: float, variant: str, prior: Tensor | None,
               form: str, weight: Tensor | None, ignore_index: int, reduction: str,
               dtype: torch.dtype, device: torch.device) -> _Plan:
    """Precompute the per-row and per-class quantities of the fused kernel."""
    cdtype = _compute_dtype(dtype)
    a, s_scalar, s_vec = _smoothing(variant, alpha, k, prior)
    mask = target == ignore_index
    has_ignored = bool(mask.any())
    tgt = target.masked_fill(mask, 0) if has_ignored else target
    ignored = mask.nonzero().squeeze(1) if has_ignored else None
    w64 = None if weight is None else weight.to(device=device, dtype=torch.float64)
    wy = None if w64 is None else w64[tgt].to(cdtype)
    ws64 = s_vec.to(device) if w64 is None else w64 * s_vec.to(device)
    use_vec = w64 is not None or s_scalar is None
    if w64 is None:
        denominator = (~mask).sum().to(cdtype)
    else:
        denominator = torch.where(mask, 0.0, w64[tgt]).sum().to(cdtype)
    scale = 1.0 / denominator if reduction == "mean" else torch.ones((), dtype=cdtype,
                                                                      device=device)
    row_offset = None
    if form == "kl":
        row_offset = _class_entropy(a, s_vec.to(device), w64)[tgt].to(cdtype)
    return _Plan(
        target=tgt, ignored=ignored, ignored_mask=mask if has_ignored else None, a=a,
        s=None if use_vec else s_scalar,
        ws=ws64.to(cdtype) if use_vec else None, wy=wy, c_sum=float(ws64.sum()),
        scale=scale, row_offset=row_offset, reduction=reduction, cdtype=cdtype,
        denominator=denominator,
    )


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
    _check_length("prior", prior, k)
    _check_length("weight", weight, k)
    target = _check_target(target, k, ignore_index, binary=False)
    z = logits if logits.ndim == 2 else logits.movedim(1, -1).reshape(-1, k)
    z = z.contiguous()
    plan = _make_plan(target.reshape(-1), k, alpha, variant, prior, form, weight,
                      ignore_index, reduction, logits.dtype, logits.device)
    if z.requires_grad and torch.is_grad_enabled():
        out = _FusedSmoothedCE.apply(z, plan)
    else:
        out = _fused(z.detach(), plan, with_grad=False)[0].to(z.dtype)
    return out.reshape(expected) if reduction == "none" else out


def _binary(logits: Tensor, target: Tensor, alpha: float, form: str, weight: Tensor | None,
            ignore_index: int, reduction: str) -> Tensor:
    """One-logit sigmoid loss against t = y (1 - alpha) + alpha / 2 (class weights w0, w1)."""
    if logits.ndim == 2 and logits.shape[1] == 1:
        logits = logits.squeeze(1)
    if logits.ndim != 1:
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
    _check_length("weight", weight, 2)
    target = _check_target(target, 2, ignore_index, binary=True)
    cdtype = _compute_dtype(logits.dtype)
    z = logits.to(cdtype)
    keep = target != ignore_index
    y = torch.where(keep, target, 0).to(cdtype)
    t = y * (1.0 - alpha) + alpha / 2
    w1, w0 = (1.0, 1.0) if weight is None else (weight[1].to(z), weight[0].to(z))
    sp_pos = torch.nn.functional.softplus(z)  # -log(1 - sigmoid(z))
    loss = w1 * t * (sp_pos - z) + w0 * (1.0 - t) * sp_pos
    if form == "kl":
        loss = loss + w1 * torch.special.xlogy(t, t) + w0 * torch.special.xlogy(1.0 - t, 1.0 - t)
    loss = torch.where(keep, loss, 0.0)
    if reduction == "none":
        return loss.to(logits.dtype)
    if reduction == "sum":
        return loss.sum().to(logits.dtype)
    wy = keep.to(cdtype) if weight is None else torch.where(keep, torch.where(y > 0, w1, w0), 0.0)
    return (loss.sum() / wy.sum()).to(logits.dtype)


def _check_common(alpha: Any, variant: Any, form: Any, reduction: Any) -> float:
    """Validate the scalar arguments shared by the function and the module."""
    _check_choice("variant", variant, VARIANTS)
    _check_choice("form", form, FORMS)
    _check_choice("reduction", reduction, REDUCTIONS)
    return _check_alpha(alpha)


def label_smoothed_cross_entropy(
    logits: Tensor,
    target: Tensor,
    alpha: float = 0.0,
    variant: str = "uniform",
    *,
    prior: Tensor | None = None,
    form: str = "ce",
    weight: Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
) -> Tensor:
    """Return the label-smoothed cross-entropy (or KL) of `logits` against class indices."""
    alpha = _check_common(alpha, variant, form, reduction)
    _check_logits(logits)
    _check_prior_use(variant, prior)
    prior_vec = None if prior is None else _check_prior(prior)
    weight_vec = None if weight is None else _as_vector("weight", weight)
    if not isinstance(target, Tensor):
        raise ValueError(f"Expected argument `target` to be a Tensor, but got {type(target)}")
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
        _check_prior_use(variant, prior)
        self.variant = variant
        self.form = form
        self.ignore_index = int(ignore_index)
        self.reduction = reduction
        self.register_buffer("prior", None if prior is None else _check_prior(prior))
        self.register_buffer("weight", None if weight is None else _as_vector("weight", weight))

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
    alpha = _check_alpha(alpha)
    _check_choice("variant", variant, VARIANTS)
    _check_prior_use(variant, prior)
    if variant == "binary":
        y = _check_target(target, 2, ignore_index=-(1 << 62), binary=True)
        return y.double() * (1.0 - alpha) + alpha / 2
    prior_vec = None if prior is None else _check_prior(prior)
    _check_length("prior", prior_vec, num_classes)
    y = _check_target(target, num_classes, ignore_index=-(1 << 62), binary=False).reshape(-1)
    a, _, s = _smoothing(variant, alpha, num_classes, prior_vec)
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
