"""The metrics of the result's `test` block in one vectorised pass (see core.ml.calibration)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from core.ml import estimators
from core.ml.metric_helpers import (
    CHUNK_ELEMS,
    NLL_CLAMP,
    bin_edges,
    bin_index,
    check_alpha,
    check_binning,
    check_distribution,
    check_inputs,
    check_labels,
    check_matrix,
    check_n_bins,
    confidence_and_correct,
    sorted_order,
    to_jsonable,
)


@dataclass
class _State:
    """Running sums (float64 / int64) from which every metric is computed."""

    n_bins: int
    classwise: bool = True
    extras: bool = True  # NLL, Brier, entropy
    keep: bool = True  # keep confidences (adaptive ECE)
    num_classes: int | None = None
    n: int = 0
    n_correct: int = 0
    sum_conf: float = 0.0
    nll: float = 0.0
    brier: float = 0.0
    entropy: float = 0.0
    top_count: Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.int64))
    top_conf: Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.float64))
    top_acc: Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.int64))
    cw_count: Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.int64))
    cw_sum: Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.float64))
    cw_acc: Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.int64))
    col_sum: Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.float64))
    confs: list[Tensor] = field(default_factory=list)
    corrects: list[Tensor] = field(default_factory=list)
    gaps: list[Tensor] = field(default_factory=list)
    has_logits: bool | None = None
    _sorted: tuple[Tensor, Tensor, Tensor] | None = None

    def _init(self, num_classes: int) -> None:
        m = self.n_bins
        self.num_classes = num_classes
        self.top_count = torch.zeros(m, dtype=torch.int64)
        self.top_conf = torch.zeros(m, dtype=torch.float64)
        self.top_acc = torch.zeros(m, dtype=torch.int64)
        if self.classwise:
            self.cw_count = torch.zeros(num_classes * m, dtype=torch.int64)
            self.cw_sum = torch.zeros(num_classes * m, dtype=torch.float64)
            self.cw_acc = torch.zeros(num_classes * m, dtype=torch.int64)
            self.col_sum = torch.zeros(num_classes, dtype=torch.float64)

    def update(self, probs: Any, labels: Any, logits: Any = None) -> None:
        """Validate one batch and add it to the running sums (unchanged on error)."""
        probs, labels = check_inputs(probs, labels)
        k = probs.shape[1]
        if self.num_classes is not None and k != self.num_classes:
            raise ValueError(
                f"Expected argument `probs` to have {self.num_classes} classes "
                f"like earlier batches, but got {k}"
            )
        if logits is not None:
            logits = check_matrix(logits, "logits")
            if logits.shape != probs.shape:
                raise ValueError(
                    f"Expected argument `logits` to have the shape of `probs` "
                    f"{tuple(probs.shape)}, but got {tuple(logits.shape)}"
                )
        if self.has_logits is not None and self.has_logits != (logits is not None):
            raise ValueError("Expected argument `logits` to be given for every batch or for none")
        # the batch goes into a fresh state that is merged only once the whole batch validated,
        # so a bad batch changes nothing
        batch = _State(self.n_bins, self.classwise, self.extras, self.keep)
        batch._init(k)
        batch._process(probs, labels)
        if logits is not None:
            batch.gaps.append(_gap_per_sample(logits, labels))
        self._merge(batch)
        self.has_logits = logits is not None

    def _merge(self, other: _State) -> None:
        if self.num_classes is None:
            self._init(int(other.num_classes or 0))
        self.n += other.n
        self.n_correct += other.n_correct
        self.sum_conf += other.sum_conf
        self.nll += other.nll
        self.brier += other.brier
        self.entropy += other.entropy
        for name in ("top_count", "top_conf", "top_acc", "cw_count", "cw_sum", "cw_acc", "col_sum"):
            getattr(self, name).add_(getattr(other, name))
        self.confs += other.confs
        self.corrects += other.corrects
        self.gaps += other.gaps

    def _process(self, p: Tensor, y: Tensor) -> None:
        """Validate and accumulate one batch.

        Row-wise quantities come from whole-batch reductions (few, large parallel regions); only
        the work that needs an (N, K)-sized temporary (entropy, classwise binning) runs in row
        chunks of about `CHUNK_ELEMS` entries.
        """
        m, k = self.n_bins, p.shape[1]
        check_distribution(p)
        conf, correct, p_true = confidence_and_correct(p, y)
        b = bin_index(conf, m)
        self.top_count += torch.bincount(b, minlength=m)
        self.top_conf += torch.bincount(b, weights=conf.double(), minlength=m)
        self.top_acc += torch.bincount(b[correct], minlength=m)
        self.n += p.shape[0]
        self.n_correct += int(correct.sum())
        self.sum_conf += float(conf.sum(dtype=torch.float64))
        if self.keep:
            self.confs.append(conf)
            self.corrects.append(correct)
        if self.extras:
            self.nll -= float(p_true.double().clamp_min(NLL_CLAMP).log().sum())
            sq = torch.linalg.vector_norm(p, dim=1).double().square_()
            self.brier += float((sq - 2.0 * p_true.double() + 1.0).sum())
        if self.classwise:
            self.col_sum += p.sum(dim=0).double()
            self.cw_acc += torch.bincount(y * m + bin_index(p_true, m), minlength=k * m)
        if not (self.extras or self.classwise):
            return
        e1 = bin_edges(m, p.dtype)[1]
        tiny = torch.finfo(p.dtype).tiny  # 0 * log(tiny) = 0 implements 0 log 0 = 0
        rows = max(1, CHUNK_ELEMS // k)
        # scratch buffers reused by every chunk (fresh large allocations cost page faults)
        size = min(rows, p.shape[0]) * k
        buf_f = torch.empty(size if self.extras else 0, dtype=p.dtype)
        buf_b = torch.empty(size if self.classwise else 0, dtype=torch.bool)
        for s in range(0, p.shape[0], rows):
            flat = p[s : s + rows].reshape(-1)
            n = flat.shape[0]
            if self.extras:
                logs = torch.clamp_min(flat, tiny, out=buf_f[:n]).log_()
                self.entropy -= float(torch.dot(flat, logs))
            if self.classwise:
                # entries <= e_1 all fall in bin 0, which is derived from the column sums; only
                # the few larger ones (at most about M per row) are binned one by one
                pos = torch.gt(flat, e1, out=buf_b[:n]).nonzero().squeeze(1)
                vals = flat.index_select(0, pos)
                key = (pos % k) * m + bin_index(vals, m)
                self.cw_count += torch.bincount(key, minlength=k * m)
                self.cw_sum += torch.bincount(key, weights=vals.double(), minlength=k * m)

    # ---- results ----------------------------------------------------------------------------

    def _require(self) -> None:
        if self.n == 0:
            raise ValueError("Expected at least one non-empty batch before `compute`, but got none")

    def accuracy(self) -> float:
        """Fraction of samples whose argmax is the label."""
        self._require()
        return self.n_correct / self.n

    def ece(self) -> float:
        """Equal-width top-label ECE from the histogram."""
        self._require()
        return float((self.top_acc.double() - self.top_conf).abs().sum()) / self.n

    def mce(self) -> float:
        """Largest |accuracy - confidence| over non-empty bins."""
        self._require()
        nonempty = self.top_count > 0
        cnt = self.top_count[nonempty].double()
        gap = (self.top_acc[nonempty].double() - self.top_conf[nonempty]).abs() / cnt
        return float(gap.max())

    def sorted_confidences(self) -> tuple[Tensor, Tensor, Tensor]:
        """The kept confidences, their correctness and their stable ascending order (cached)."""
        if self._sorted is None or self._sorted[0].shape[0] != self.n:
            conf = torch.cat(self.confs)
            self._sorted = (conf, torch.cat(self.corrects), sorted_order(conf))
        return self._sorted

    def adaptive_ece(self) -> float:
        """Equal-mass ECE from the kept confidences."""
        self._require()
        conf, correct, order = self.sorted_confidences()
        n, m = conf.shape[0], self.n_bins
        group = torch.arange(n, dtype=torch.int64).mul_(m).div_(n, rounding_mode="floor")
        s_conf = torch.bincount(group, weights=conf[order].double(), minlength=m)
        s_acc = torch.bincount(group, weights=correct[order].double(), minlength=m)
        return float((s_acc - s_conf).abs().sum()) / n

    def classwise_ece(self) -> float:
        """Mean over classes of the classwise ECE (bin 1 derived from the column sums)."""
        self._require()
        k, m = int(self.num_classes or 0), self.n_bins
        s = self.cw_sum.view(k, m).clone()
        s[:, 0] = self.col_sum - s[:, 1:].sum(dim=1)
        per_class = (self.cw_acc.view(k, m).double() - s).abs().sum(dim=1) / self.n
        return float(per_class.mean())

    def bins(self) -> list[dict[str, Any]]:
        """Reliability bins as JSON-ready dicts."""
        self._require()
        m = self.n_bins
        out = []
        for b, (cnt, sc, sa) in enumerate(
            zip(self.top_count.tolist(), self.top_conf.tolist(), self.top_acc.tolist(), strict=True)
        ):
            out.append({"lo": b / m, "hi": (b + 1) / m, "count": int(cnt),
                        "confidence": sc / cnt if cnt else None,
                        "accuracy": sa / cnt if cnt else None})
        return out

    def gap_stats(self, alpha: float | None) -> dict[str, float | None]:
        """Mean, median and optimum of the logit gap (all None without logits)."""
        if not self.gaps or self.num_classes is None or self.num_classes < 2:
            return {"mean": None, "median": None, "optimum": None}
        g = torch.cat(self.gaps)
        opt = None if alpha is None or alpha == 0.0 else optimal_logit_gap(alpha, self.num_classes)
        return {
            "mean": float(g.mean()),
            "median": float(np.median(g.numpy())),
            "optimum": opt,
        }

    def report(self, alpha: float | None) -> dict[str, Any]:
        """The full JSON-ready report."""
        self._require()
        acc = self.accuracy()
        mean_conf = self.sum_conf / self.n
        out: dict[str, Any] = {
            "n": self.n,
            "accuracy": acc,
            "nll": self.nll / self.n,
            "brier": self.brier / self.n,
            "ece": self.ece(),
            "ece_adaptive": self.adaptive_ece(),
            "mce": self.mce(),
            "classwise_ece": self.classwise_ece(),
            "mean_confidence": mean_conf,
            "overconfidence": mean_conf - acc,
            "mean_entropy": self.entropy / self.n,
            "reliability": self.bins(),
            "logit_gap": self.gap_stats(alpha),
        }
        return to_jsonable(out)


def _gap_per_sample(logits: Tensor, labels: Tensor) -> Tensor:
    """z_y - mean_{k != y} z_k per sample, in float64."""
    k = logits.shape[1]
    if k < 2:
        raise ValueError(f"Expected argument `logits` to have at least 2 classes, but got {k}")
    z_y = logits.gather(1, labels.unsqueeze(1)).squeeze(1).double()
    total = logits.sum(dim=1, dtype=torch.float64)
    return (k * z_y - total) / (k - 1)


def _one_shot(
    probs: Any, labels: Any, n_bins: Any, *, classwise: bool, extras: bool, keep: bool
) -> _State:
    state = _State(check_n_bins(n_bins), classwise=classwise, extras=extras, keep=keep)
    state.update(probs, labels)
    return state


# --------------------------------------------------------------------------------------------
# public metrics
# --------------------------------------------------------------------------------------------


def calibration_report(
    probs: Tensor,
    labels: Tensor,
    n_bins: int = 15,
    logits: Tensor | None = None,
    alpha: float | None = None,
) -> dict[str, Any]:
    """Return the `test` block of the result document (SPEC §4), JSON-ready, plus `n`."""
    alpha = check_alpha(alpha)
    state = _State(check_n_bins(n_bins))
    state.update(probs, labels, logits)
    report = state.report(alpha)
    if not (isinstance(probs, Tensor) and probs.dtype in (torch.float32, torch.float64)):
        return {**report, **estimators.estimator_report(probs, labels, n_bins)}
    conf, correct, order = state.sorted_confidences()  # reused: the same values, sorted once
    return {**report, **estimators.estimators_of(conf, correct.double().numpy(), order.numpy(),
                                                 n_bins)}


def expected_calibration_error(
    probs: Tensor, labels: Tensor, n_bins: int = 15, binning: str = "equal_width"
) -> float:
    """Top-label ECE with equal-width (Guo et al. 2017) or equal-mass (adaptive) bins."""
    binning = check_binning(binning)
    adaptive = binning == "equal_mass"
    state = _one_shot(probs, labels, n_bins, classwise=False, extras=False, keep=adaptive)
    return state.adaptive_ece() if adaptive else state.ece()


def maximum_calibration_error(probs: Tensor, labels: Tensor, n_bins: int = 15) -> float:
    """Top-label MCE: the largest |accuracy - confidence| over non-empty equal-width bins."""
    return _one_shot(probs, labels, n_bins, classwise=False, extras=False, keep=False).mce()


def classwise_calibration_error(probs: Tensor, labels: Tensor, n_bins: int = 15) -> float:
    """Mean over classes of the equal-width ECE of p_k against [y == k], over all N x K entries."""
    return _one_shot(
        probs, labels, n_bins, classwise=True, extras=False, keep=False
    ).classwise_ece()


def brier_score(probs: Tensor, labels: Tensor) -> float:
    """Mean over samples of sum_k (p_k - [y == k])^2 (not halved)."""
    state = _one_shot(probs, labels, 1, classwise=False, extras=True, keep=False)
    return state.brier / state.n


def negative_log_likelihood(probs: Tensor, labels: Tensor) -> float:
    """Mean of -log p_{i,y_i}, with p clamped from below at 1e-12."""
    state = _one_shot(probs, labels, 1, classwise=False, extras=True, keep=False)
    return state.nll / state.n


def reliability_bins(probs: Tensor, labels: Tensor, n_bins: int = 15) -> list[dict[str, Any]]:
    """Per equal-width bin: lo, hi, count, mean confidence and accuracy (None when empty)."""
    return _one_shot(probs, labels, n_bins, classwise=False, extras=False, keep=False).bins()


def optimal_logit_gap(alpha: float, num_classes: int) -> float:
    """Logit gap minimising uniform label smoothing: log((1 - a + a/K) / (a/K)); inf at a = 0."""
    a = check_alpha(alpha)
    if a is None:
        raise ValueError("Expected argument `alpha` to be a float in [0, 1), but got None")
    if (
        isinstance(num_classes, bool)
        or not isinstance(num_classes, int | np.integer)
        or num_classes < 2
    ):
        raise ValueError(
            "Expected argument `num_classes` to be an integer larger than 1, "
            f"but got {num_classes!r}"
        )
    if a == 0.0:
        return math.inf
    off = a / int(num_classes)
    return math.log((1.0 - a + off) / off)


def logit_gap(
    logits: Tensor, labels: Tensor, alpha: float | None = None
) -> dict[str, float | None]:
    """Mean and median of z_y - mean_{k != y} z_k, and the optimum under smoothing `alpha`."""
    alpha = check_alpha(alpha)
    logits = check_matrix(logits, "logits")
    labels = check_labels(labels, logits.shape[0], logits.shape[1], name="logits")
    g = _gap_per_sample(logits, labels)
    opt = None if alpha is None or alpha == 0.0 else optimal_logit_gap(alpha, logits.shape[1])
    return {"mean": float(g.mean()), "median": float(np.median(g.numpy())), "optimum": opt}


class CalibrationMetrics:
    """Streaming calibration metrics: update(probs, labels, logits) per batch, then compute()."""

    def __init__(self, n_bins: int = 15, alpha: float | None = None) -> None:
        """Create an empty accumulator; `alpha` is the smoothing used for the optimum gap."""
        self.n_bins = check_n_bins(n_bins)
        self.alpha = check_alpha(alpha)
        self._state = _State(self.n_bins)

    def update(self, probs: Tensor, labels: Tensor, logits: Tensor | None = None) -> None:
        """Add one batch; a batch that fails validation leaves the state unchanged."""
        self._state.update(probs, labels, logits)

    def compute(self) -> dict[str, Any]:
        """Return the `calibration_report` dict over every batch since the last reset."""
        return self._state.report(self.alpha)

    def reset(self) -> None:
        """Forget every batch."""
        self._state = _State(self.n_bins)
