"""core.ml.metrics for T trials at once: probabilities (T, N, K) that share one label vector.

`calibration_reports(probs, labels, …)[t]` is `metrics.calibration_report(probs[t], labels, …)`
and `ece_rows(probs, labels, n_bins)[t]` is `expected_calibration_error(probs[t], labels, n_bins)`,
number for number (tests/core/ml/test_stacked_metrics.py): elementwise work, the row-wise
reductions and the histograms (one bincount over trial-offset keys, which adds each bin's
values in the same order) run over all trials together; a float32 sum across rows (column
sums, the entropy's dot product) and a 1-D reduction long enough to be split between threads
are taken per trial, as the single-trial code takes them. The estimators come from
`core.ml.stacked_estimators`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from core.ml.metric_helpers import (
    CHUNK_ELEMS,
    NLL_CLAMP,
    bin_edges,
    bin_index,
    check_alpha,
    check_distribution,
    check_labels,
    check_n_bins,
    check_tensor,
    to_jsonable,
)
from core.ml.metrics import optimal_logit_gap
from core.ml.stacked_estimators import estimators_rows

__all__ = ["calibration_reports", "check_stacked", "ece_rows", "val_metrics_rows"]

_GRAIN = 32768  # torch splits a 1-D reduction between threads above this many elements


def check_stacked(probs: Any, labels: Any, name: str = "probs") -> tuple[Tensor, Tensor]:
    """(probs (T, N, K) float32/float64 contiguous on the CPU, labels (N,) int64), checked."""
    probs = check_tensor(probs, name)
    if probs.ndim != 3 or probs.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"Expected argument `{name}` to be a float32 or float64 tensor of "
                         f"shape (T, N, K), but got shape {tuple(probs.shape)} and dtype "
                         f"{probs.dtype}")
    if probs.shape[2] < 1:
        raise ValueError(f"Expected argument `{name}` to have at least one class, "
                         f"but got shape {tuple(probs.shape)}")
    labels = check_labels(labels, probs.shape[1], probs.shape[2], name=name)
    return probs.contiguous(), labels


def _row_sums(x: Tensor, dtype: torch.dtype | None = None) -> list[float]:
    """Each row's sum as `x[t].sum()` gives it (per row once torch would split the 1-D sum)."""
    if x.shape[1] <= _GRAIN:
        return x.sum(dim=1, dtype=dtype).tolist()
    return [float(row.sum(dtype=dtype)) for row in x]


class _Stacked:
    """metrics._State's sums and results for every trial of (T, N, K) probabilities."""

    def __init__(self, p: Tensor, y: Tensor, n_bins: int, full: bool = True) -> None:
        self.p, self.y, self.m, self.full = p, y, n_bins, full
        t, n, k = p.shape
        check_distribution(p.view(t * n, k))
        self.conf, pred = p.max(dim=2)
        self.correct = pred == y
        self.p_true = p.gather(2, y.expand(t, n).unsqueeze(2)).squeeze(2)
        offsets = torch.arange(t).unsqueeze(1) * n_bins
        key = (bin_index(self.conf, n_bins) + offsets).view(-1)
        size = t * n_bins
        self.top_count = torch.bincount(key, minlength=size).view(t, n_bins)
        self.top_conf = torch.bincount(key, weights=self.conf.double().view(-1),
                                       minlength=size).view(t, n_bins)
        self.top_acc = torch.bincount(key[self.correct.view(-1)], minlength=size).view(t, n_bins)

    def ece(self) -> list[float]:
        """Equal-width top-label ECE per trial."""
        n = self.p.shape[1]
        return [s / n for s in (self.top_acc.double() - self.top_conf).abs().sum(dim=1).tolist()]

    def mce(self) -> list[float]:
        """Largest |accuracy - confidence| over each trial's non-empty bins."""
        cnt = self.top_count.double()
        gap = (self.top_acc.double() - self.top_conf).abs() / cnt.clamp_min(1.0)
        return gap.masked_fill(self.top_count == 0, -torch.inf).amax(dim=1).tolist()

    def sorted_order(self) -> Tensor:
        """Each trial's stable ascending order of its confidences (`sorted_order` per row)."""
        keys = (self.conf.contiguous().view(torch.int64) if self.conf.dtype == torch.float64
                else self.conf.float().contiguous().view(torch.int32))
        keys = torch.where(keys < 0, torch.zeros_like(keys), keys)
        return torch.argsort(keys, dim=1, stable=True)

    def adaptive_ece(self, order: Tensor) -> list[float]:
        """Equal-mass ECE per trial."""
        t, n = self.conf.shape
        m = self.m
        group = torch.arange(n, dtype=torch.int64).mul_(m).div_(n, rounding_mode="floor")
        key = (group + torch.arange(t).unsqueeze(1) * m).view(-1)
        s_conf = torch.bincount(key, weights=self.conf.gather(1, order).double().view(-1),
                                minlength=t * m)
        s_acc = torch.bincount(key, weights=self.correct.gather(1, order).double().view(-1),
                               minlength=t * m)
        return [s / n for s in (s_acc - s_conf).view(t, m).abs().sum(dim=1).tolist()]

    def entropy(self) -> list[float]:
        """Each trial's entropy sum, as metrics._State._process takes it: float32 dot products
        over row chunks of a fresh copy (MKL's dot depends on where its operands start)."""
        p = self.p
        n, k = p.shape[1:]
        tiny = torch.finfo(p.dtype).tiny
        rows = max(1, CHUNK_ELEMS // k)
        out = []
        for trial in p:
            x, total = trial.clone(), 0.0
            for s in range(0, n, rows):
                flat = x[s:s + rows].reshape(-1)
                total -= float(torch.dot(flat, torch.clamp_min(flat, tiny).log_()))
            out.append(total)
        return out

    def classwise(self) -> tuple[Tensor, Tensor]:
        """The classwise histograms (probability sums, hits) of every trial.

        Row chunks as in metrics._State._process: a trial's N x K entries form one chunk
        (several trials per chunk) unless they exceed CHUNK_ELEMS, so every bin adds the same
        values in the same order.
        """
        p, m = self.p, self.m
        t, n, k = p.shape
        e1 = bin_edges(m, p.dtype)[1]
        cw_sum = torch.zeros(t * k * m, dtype=torch.float64)
        rows = max(1, CHUNK_ELEMS // k)
        per = max(1, rows // n) if n <= rows else 1  # trials per chunk
        for t0 in range(0, t, per):
            for s in range(0, n, rows):
                block = p[t0:t0 + per, s:s + rows]
                flat = block.reshape(-1)
                pos = torch.gt(flat, e1).nonzero().squeeze(1)
                vals = flat.index_select(0, pos)
                trial = t0 + pos // (block.shape[1] * k)
                key = trial * (k * m) + (pos % k) * m + bin_index(vals, m)
                cw_sum += torch.bincount(key, weights=vals.double(), minlength=t * k * m)
        hits_key = (bin_index(self.p_true, m) + self.y * m
                    + torch.arange(t).unsqueeze(1) * (k * m)).view(-1)
        return cw_sum, torch.bincount(hits_key, minlength=t * k * m)

    def classwise_ece(self, cw_sum: Tensor, cw_acc: Tensor) -> list[float]:
        """Mean over classes of the classwise ECE, per trial (bin 1 from the column sums)."""
        t, n, k = self.p.shape
        s = cw_sum.view(t, k, self.m).clone()
        col_sum = torch.stack([self.p[i].sum(dim=0).double() for i in range(t)])
        s[:, :, 0] = col_sum - s[:, :, 1:].sum(dim=2)
        per_class = (cw_acc.view(t, k, self.m).double() - s).abs().sum(dim=2) / n
        return per_class.mean(dim=1).tolist()

    def sums(self) -> dict[str, list[float]]:
        """Per trial: correct count, confidence sum, NLL sum and Brier sum."""
        pt = self.p_true.double()
        sq = torch.linalg.vector_norm(self.p, dim=2).double().square_()
        return {"n_correct": self.correct.sum(dim=1).tolist(),
                "sum_conf": _row_sums(self.conf, torch.float64),
                "nll": _row_sums(pt.clamp_min(NLL_CLAMP).log()),
                "brier": _row_sums(sq - 2.0 * pt + 1.0)}

    def bins(self, i: int) -> list[dict[str, Any]]:
        """Trial i's reliability bins as JSON-ready dicts (metrics._State.bins)."""
        m = self.m
        return [{"lo": b / m, "hi": (b + 1) / m, "count": int(cnt),
                 "confidence": sc / cnt if cnt else None, "accuracy": sa / cnt if cnt else None}
                for b, (cnt, sc, sa) in enumerate(zip(self.top_count[i].tolist(),
                                                      self.top_conf[i].tolist(),
                                                      self.top_acc[i].tolist(), strict=True))]


def _gap_stats(logits: Tensor | None, labels: Tensor, alphas: list[float | None]
               ) -> list[dict[str, float | None]]:
    """metrics._State.gap_stats per trial from (T, N, K) logits (all None without logits)."""
    t = len(alphas)
    if logits is not None and logits.shape[2] < 2:
        raise ValueError(f"Expected argument `logits` to have at least 2 classes, but got "
                         f"{logits.shape[2]}")
    if logits is None:
        return [{"mean": None, "median": None, "optimum": None} for _ in range(t)]
    k = logits.shape[2]
    z_y = logits.gather(2, labels.expand(t, -1).unsqueeze(2)).squeeze(2).double()
    gap = (k * z_y - logits.sum(dim=2, dtype=torch.float64)) / (k - 1)
    means = (gap.mean(dim=1).tolist() if gap.shape[1] <= _GRAIN
             else [float(row.mean()) for row in gap])
    medians = np.median(gap.numpy(), axis=1).tolist()
    return [{"mean": mean, "median": med,
             "optimum": None if a is None or a == 0.0 else optimal_logit_gap(a, k)}
            for mean, med, a in zip(means, medians, alphas, strict=True)]


def calibration_reports(probs: Tensor, labels: Tensor, n_bins: int = 15,
                        logits: Tensor | None = None,
                        alphas: Sequence[float | None] | None = None) -> list[dict[str, Any]]:
    """`metrics.calibration_report(probs[t], labels, n_bins, logits[t], alphas[t])` per trial."""
    n_bins = check_n_bins(n_bins)
    probs, labels = check_stacked(probs, labels)
    t, n, k = probs.shape
    alpha = [check_alpha(a) for a in (alphas if alphas is not None else [None] * t)]
    if len(alpha) != t:
        raise ValueError(f"Expected {t} alphas (one per trial), but got {len(alpha)}")
    if logits is not None:
        logits = check_tensor(logits, "logits")
        if logits.shape != probs.shape or not logits.is_floating_point():
            raise ValueError(f"Expected argument `logits` to be a floating point tensor of "
                             f"the shape of `probs` {tuple(probs.shape)}, but got "
                             f"{tuple(logits.shape)}")
    st = _Stacked(probs, labels, n_bins)
    sums = st.sums()
    entropy = st.entropy()
    cw_sum, cw_acc = st.classwise()
    order = st.sorted_order()
    ece, mce, adaptive = st.ece(), st.mce(), st.adaptive_ece(order)
    classwise = st.classwise_ece(cw_sum, cw_acc)
    gaps = _gap_stats(logits, labels, alpha)
    estimators = estimators_rows(st.conf, st.correct.double().numpy(), order.numpy(), n_bins)
    reports = []
    for i in range(t):
        acc = sums["n_correct"][i] / n
        mean_conf = sums["sum_conf"][i] / n
        report = {"n": n, "accuracy": acc, "nll": -sums["nll"][i] / n,
                  "brier": sums["brier"][i] / n, "ece": ece[i], "ece_adaptive": adaptive[i],
                  "mce": mce[i], "classwise_ece": classwise[i], "mean_confidence": mean_conf,
                  "overconfidence": mean_conf - acc, "mean_entropy": entropy[i] / n,
                  "reliability": st.bins(i), "logit_gap": gaps[i]}
        reports.append({**to_jsonable(report), **estimators[i]})
    return reports


def ece_rows(probs: Tensor, labels: Tensor, n_bins: int = 15) -> list[float]:
    """`metrics.expected_calibration_error(probs[t], labels, n_bins)` per trial."""
    n_bins = check_n_bins(n_bins)
    probs, labels = check_stacked(probs, labels)
    return _Stacked(probs, labels, n_bins).ece()


def val_metrics_rows(logits: Tensor, labels: Tensor, n_bins: int = 15) -> list[dict[str, float]]:
    """`evaluation.val_metrics(logits[t], labels, n_bins)` per trial of (T, N, K) class logits."""
    logp = F.log_softmax(logits.double(), dim=2)
    acc = (logits.argmax(2) == labels).double().mean(dim=1).tolist()
    ece = ece_rows(logp.exp().float(), labels, n_bins)
    return [{"val_nll": float(F.nll_loss(lp, labels)), "val_accuracy": a, "val_ece": e}
            for lp, a, e in zip(logp, acc, ece, strict=True)]
