"""The fused kernel of `core.ml.losses`: chunked log-softmax, loss and gradient in one pass.

`make_plan` precomputes the per-row and per-class quantities of one (N, K) problem with a
scalar alpha; `fused` runs it (loss, and the pre-scaled gradient written into a buffer);
`FusedSmoothedCE` is the autograd.Function around it. See `core.ml.losses` for the maths.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

_CHUNK_ELEMS_CPU = 1 << 21  # 8 MiB of float32 per chunk: in L3, few parallel regions
_CHUNK_ELEMS_CUDA = 1 << 24
_SMALL_K = 16  # below this torch's row-wise log-softmax is slow: `_chunk_small_k` avoids it
_SMALL_K_ROW_TEMPS = 6  # per-row vectors `_chunk_small_k` holds at once (max, sums, loss...)
# a logit range below which exp(z - max z) of every entry stays a normal float (e**-87 is
# float32's smallest): one shift for a whole chunk loses no precision (`_row_shift`)
_SHIFT_RANGE = {torch.float32: 60.0, torch.float64: 500.0}
_TEMP_FRACTION = 0.1  # chunk temporaries may use at most this fraction of one logits buffer
_log_softmax_out = torch.ops.aten._log_softmax.out

# --------------------------------------------------------------------------- smoothing


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Half types accumulate in float32; float64 stays float64."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def smoothing(
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


def class_entropy(a: float, s: Tensor, weight: Tensor | None) -> Tensor:
    """H_c = -sum_k w_k q_k log q_k of the soft target for every class c (float64, O(K))."""
    w = torch.ones_like(s) if weight is None else weight
    xs = torch.special.xlogy(s, s)
    qc = a + s
    return -((w * xs).sum() - w * xs + w * torch.special.xlogy(qc, qc))


# --------------------------------------------------------------------------- fused kernel


@dataclass
class Plan:
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


def _rows_per_chunk(n: int, k: int, logits: Tensor, temp_elem_bytes: float) -> int:
    """Rows per chunk: cache-sized, and temporaries kept under a fraction of the logits."""
    budget = _CHUNK_ELEMS_CUDA if logits.is_cuda else _CHUNK_ELEMS_CPU
    rows = max(1, budget // k)
    if temp_elem_bytes:
        cap = int(_TEMP_FRACTION * n * logits.element_size() / temp_elem_bytes)
        rows = min(rows, max(1, cap))
    return min(rows, max(n, 1))


def _chunk_targets(
    plan: Plan, r0: int, r1: int, grad: bool
) -> tuple[Tensor | None, Tensor | None]:
    """Per-row weights w_y and the values -a * scale * w_y scattered at y, for rows r0:r1."""
    wy = None if plan.wy is None else plan.wy[r0:r1]
    if not grad:
        return wy, None
    neg = plan.scale * -plan.a
    vals = neg.expand(r1 - r0) if wy is None else wy * neg
    return wy, vals


def _row_loss_rowwise(bc: Tensor, yc: Tensor, wy: Tensor | None, plan: Plan, out: Tensor) -> None:
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
                          plan: Plan) -> None:
    """Turn log-softmax rows in place into scale * (c softmax - a w_y onehot - w s)."""
    if wy is not None:
        bc.add_(torch.log((wy * plan.a + plan.c_sum) * plan.scale).unsqueeze(1))
    elif plan.reduction == "mean":
        bc.add_(torch.log(plan.scale))
    bc.exp_()
    _subtract_smoothing(bc, plan)
    if vals is not None:
        bc.scatter_add_(1, yc.unsqueeze(1), vals.unsqueeze(1))


def _subtract_smoothing(bc: Tensor, plan: Plan) -> None:
    """Subtract scale * w * s from every row of a chunk."""
    if plan.ws is not None:
        bc.sub_(plan.ws * plan.scale)
    elif plan.s:
        bc.sub_(plan.scale * plan.s)


class _Sink:
    """Collects per-row losses chunk by chunk: kept for reduction='none', else summed."""

    def __init__(self, n: int, plan: Plan, device: torch.device) -> None:
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


def _chunk_rowwise(z: Tensor, buf: Tensor | None, loss: _Sink, plan: Plan) -> None:
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


def _row_shift(zc: Tensor, cdtype: torch.dtype) -> Tensor:
    """What `_chunk_small_k` subtracts from each row before exp (log-softmax is invariant).

    Each row's max costs a slow strided pass when rows are short; on the CPU one contiguous
    pass finds the chunk's range, and when it is narrow enough that no row's exp underflows,
    the chunk's max serves every row. NaN or infinite logits fail the test: row maxima.
    """
    if zc.device.type == "cpu" and zc.numel():
        lo, hi = torch.aminmax(zc)
        if float(hi - lo) < _SHIFT_RANGE[cdtype]:
            return hi.to(cdtype)
    return zc.amax(1, keepdim=True)


def _chunk_small_k(z: Tensor, buf: Tensor | None, loss: _Sink, plan: Plan) -> None:
    """Fused loss (and gradient) for K < _SMALL_K in the row layout, without log_softmax.

    Torch's row-wise log-softmax is slow for short rows, so z' = z - max is written into the
    chunk, exponentiated in place, and the row sums are matrix-vector products.
    """
    n, k = z.shape
    direct = buf is not None and buf.dtype == plan.cdtype
    cd_bytes = torch.empty((), dtype=plan.cdtype).element_size()
    temp_bytes = (0 if direct else cd_bytes) + _SMALL_K_ROW_TEMPS * cd_bytes / k
    rows = _rows_per_chunk(n, k, z, temp_bytes)
    temp = torch.empty((0 if direct else rows, k), dtype=plan.cdtype, device=z.device)
    ones = torch.ones(k, dtype=plan.cdtype, device=z.device)
    for r0 in range(0, n, rows):
        r1 = min(n, r0 + rows)
        zc = z[r0:r1]
        bc = buf[r0:r1] if direct and buf is not None else temp[: r1 - r0]
        shift = _row_shift(zc, plan.cdtype)
        if zc.dtype == plan.cdtype:
            torch.sub(zc, shift, out=bc)
        else:
            bc.copy_(zc)
            bc.sub_(shift)
        yc = plan.target[r0:r1].unsqueeze(1)
        wy, vals = _chunk_targets(plan, r0, r1, buf is not None)
        out = loss.chunk(r0, r1)
        if plan.ws is not None:  # out = -a w_y z'_y - sum_k ws_k z'_k + c log S
            torch.mv(bc, plan.ws, out=out)
            out.neg_()
        elif plan.s:
            torch.mv(bc, ones, out=out)
            out.mul_(-plan.s)
        else:
            out.zero_()
        zy = bc.gather(1, yc).squeeze(1)
        c = None if wy is None else wy * plan.a + plan.c_sum
        if wy is not None:
            zy.mul_(wy)
        out.sub_(zy, alpha=plan.a)
        bc.exp_()
        log_s = torch.mv(bc, ones).log_()
        out.add_(log_s if c is None else log_s * c)
        loss.done(out, r0, r1)
        if buf is None:
            continue
        factor = log_s.neg_().exp_().mul_(plan.scale)
        bc.mul_((factor if c is None else factor * c).unsqueeze(1))
        _subtract_smoothing(bc, plan)
        if vals is not None:
            bc.scatter_add_(1, yc, vals.unsqueeze(1))
        if not direct:
            buf[r0:r1].copy_(bc)


def fused(z: Tensor, plan: Plan, with_grad: bool, *, buf: Tensor | None = None
          ) -> tuple[Tensor, Tensor | None]:
    """Reduced loss (compute dtype) and, if asked, the pre-scaled gradient (into `buf` if given)."""
    n, k = z.shape
    sink = _Sink(n, plan, z.device)
    if with_grad and buf is None:
        buf = torch.empty_like(z, memory_format=torch.contiguous_format)
    if n:
        kernel = _chunk_small_k if k < _SMALL_K else _chunk_rowwise
        kernel(z, buf, sink, plan)
    if plan.ignored is not None and buf is not None:
        buf.index_fill_(0, plan.ignored, 0.0)
    return sink.result(), buf


class FusedSmoothedCE(torch.autograd.Function):
    """Loss and gradient in one chunked pass; backward rescales the stored gradient in place."""

    @staticmethod
    def forward(ctx: Any, z: Tensor, plan: Plan) -> Tensor:  # type: ignore[override]
        """Compute the reduced loss and keep the pre-scaled gradient for backward."""
        loss, buf = fused(z, plan, with_grad=True)
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
            buf = fused(z, ctx.plan, with_grad=True)[1]
        if ctx.plan.reduction == "none":
            buf.mul_(grad_out.unsqueeze(1).to(buf.dtype))
        elif grad_out.is_cuda or float(grad_out) != 1.0:
            buf.mul_(grad_out.to(buf.dtype))
        return buf, None


def _scale_stacked(buf: Tensor, grad_out: Tensor, reduction: str) -> None:
    """Multiply the (T, B, K) gradient by grad_out: (T,) per trial, or (T, B) per row."""
    g = grad_out.to(buf.dtype)
    buf.mul_(g.unsqueeze(2) if reduction == "none" else g.view(-1, 1, 1))


class StackedFusedSmoothedCE(torch.autograd.Function):
    """Stacked logits (T, B, K), one plan per trial: every trial runs the kernel of a lone call.

    Trial t reads z[t] and writes its gradient into slice t of one (T, B, K) buffer, so each
    trial's value and gradient are those of `label_smoothed_cross_entropy(z[t], ...)`.
    """

    @staticmethod
    def forward(ctx: Any, z: Tensor, plans: list[Plan]) -> Tensor:  # type: ignore[override]
        """Per-trial reduced losses (T,) or per-row losses (T, B); keep the gradient."""
        buf = torch.empty_like(z, memory_format=torch.contiguous_format)
        out = torch.stack([fused(z[t], plan, True, buf=buf[t])[0] for t, plan in
                           enumerate(plans)])
        ctx.plans, ctx.buf = plans, buf
        ctx.save_for_backward(z)
        return out.to(z.dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        """Scale the stored gradient per trial (recompute if it was already used)."""
        buf, ctx.buf = ctx.buf, None
        if buf is None:
            (z,) = ctx.saved_tensors
            buf = torch.empty_like(z, memory_format=torch.contiguous_format)
            for t, plan in enumerate(ctx.plans):
                fused(z[t], plan, True, buf=buf[t])
        _scale_stacked(buf, grad_out, ctx.plans[0].reduction)
        return buf, None


def _ignored_rows(target: Tensor, ignore_index: int) -> Tensor | None:
    """The (N,) mask of rows whose target is `ignore_index`, or None when no row is."""
    if not target.numel():
        return None
    lo, hi = torch.aminmax(target)
    if not int(lo) <= ignore_index <= int(hi):  # one pass settles the common case
        return None
    mask = target == ignore_index
    return mask if bool(mask.any()) else None


def make_plan(target: Tensor, k: int, alpha: float, variant: str, prior: Tensor | None,
               form: str, weight: Tensor | None, ignore_index: int, reduction: str,
               dtype: torch.dtype, device: torch.device) -> Plan:
    """Precompute the per-row and per-class quantities of the fused kernel."""
    cdtype = compute_dtype(dtype)
    a, s_scalar, s_vec = smoothing(variant, alpha, k, prior)
    mask = _ignored_rows(target, ignore_index)
    tgt = target if mask is None else target.masked_fill(mask, 0)
    ignored = None if mask is None else mask.nonzero().squeeze(1)
    w64 = None if weight is None else weight.to(device=device, dtype=torch.float64)
    wy = None if w64 is None else w64[tgt].to(cdtype)
    ws64 = s_vec.to(device) if w64 is None else w64 * s_vec.to(device)
    use_vec = w64 is not None or s_scalar is None
    if w64 is None:
        denominator = (torch.tensor(float(target.numel()), device=device) if mask is None
                       else (~mask).sum()).to(cdtype)
    else:
        wy64 = w64[tgt]
        denominator = (wy64 if mask is None else torch.where(mask, 0.0, wy64)).sum().to(cdtype)
    scale = 1.0 / denominator if reduction == "mean" else torch.ones((), dtype=cdtype,
                                                                      device=device)
    row_offset = None
    if form == "kl":
        row_offset = class_entropy(a, s_vec.to(device), w64)[tgt].to(cdtype)
    return Plan(
        target=tgt, ignored=ignored, ignored_mask=mask, a=a,
        s=None if use_vec else s_scalar,
        ws=ws64.to(cdtype) if use_vec else None, wy=wy, c_sum=float(ws64.sum()),
        scale=scale, row_offset=row_offset, reduction=reduction, cdtype=cdtype,
        denominator=denominator,
    )
