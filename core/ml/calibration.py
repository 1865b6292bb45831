"""Calibration metrics, temperature scaling and the penultimate-layer projection (SPEC §5.2).

Definitions (exact; N samples, K classes, M bins):

* top-label confidence ``c_i = max_k p_ik``; prediction ``argmax_k p_ik`` (first maximal index,
  as ``torch.argmax``); accuracy is the mean of ``[prediction == label]``.
* Bin edges are ``e_b = b / M`` *rounded to the dtype of the probabilities* (b = 0..M).
  Equal-width bin b (1-based) holds ``c`` with ``e_{b-1} < c <= e_b``; the first bin also holds
  ``c = 0``.  So a value equal to an edge computed in float (``torch.tensor(k / M)``) lands in
  the lower bin, ``1.0`` in the last bin and ``0.0`` in the first.
* ECE (Guo et al. 2017) ``= sum_b (n_b / N) |acc_b - conf_b|``; MCE is the maximum of
  ``|acc_b - conf_b|`` over non-empty bins.
* Adaptive ECE (equal-mass bins): the confidences are sorted stably (ties keep input order) and
  the sample at sorted position ``i`` (0-based) goes to group ``floor(i * M / N)``; the M groups
  then differ in size by at most one (when N < M only N groups of one are non-empty).
* Classwise ECE: the mean over classes k of the equal-width ECE of ``p_ik`` (as confidence)
  against ``[y_i == k]`` (as accuracy), over all N x K entries, with the same edges.
* Brier: mean over samples of ``sum_k (p_ik - [y_i == k])^2`` (not halved).
* NLL: mean of ``-log(max(p_{i,y_i}, 1e-12))``; the clamp caps one sample's term at ~27.63.
* Overconfidence: mean confidence - accuracy.  Mean entropy: mean of ``-sum_k p log p``
  (natural log, ``0 log 0 = 0``).
* Logit gap: ``z_y - mean_{k != y} z_k`` per sample; its optimum under uniform label smoothing is
  ``log((1 - a + a/K) / (a/K))`` (infinite at ``a = 0``, reported as null).

Probabilities must be a distribution per row: no NaN, no negative entry and every row summing to
1 within an absolute tolerance of 1e-3 (half precision is upcast to float32).

Implementation: one vectorised pass per batch, no Python loop over samples or bins.  Row-wise
quantities (confidence, prediction, p_y, row sums, squared norms) are whole-batch reductions; the
top-label histogram is three bincounts over N.  Classwise ECE needs all N x K entries: every entry
<= 1/M lies in bin 1, so that bin's count and probability mass per class follow from the column
sums, and only the entries > 1/M (at most about M per row) are compacted and bincounted into a
combined (class, bin) histogram, in row chunks together with the entropy.  Adaptive ECE sorts the
confidences (radix sort on their bit patterns).  Sums are accumulated in float64 across chunks and
batches, so `CalibrationMetrics` (streaming) gives the one-shot numbers up to float rounding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "CalibrationMetrics",
    "brier_score",
    "calibration_report",
    "classwise_calibration_error",
    "expected_calibration_error",
    "fit_temperature",
    "logit_gap",
    "maximum_calibration_error",
    "negative_log_likelihood",
    "optimal_logit_gap",
    "penultimate_projection",
    "reliability_bins",
    "to_jsonable",
]

_SUM_TOL = 1e-3  # absolute tolerance on row sums of the probabilities
_NLL_CLAMP = 1e-12  # p_{i,y_i} is clamped from below before the log
_CHUNK_ELEMS = 1 << 22  # entries per row chunk for (N, K)-sized temporaries (16 MB f32)
_BINNINGS = ("equal_width", "equal_mass")


# --------------------------------------------------------------------------------------------
# argument validation (torchmetrics-style messages, never assert)
# --------------------------------------------------------------------------------------------


def _check_n_bins(n_bins: Any) -> int:
    if isinstance(n_bins, bool) or not isinstance(n_bins, int | np.integer) or n_bins < 1:
        raise ValueError(f"Expected argument `n_bins` to be a positive integer, but got {n_bins!r}")
    return int(n_bins)


def _check_binning(binning: Any) -> str:
    if binning not in _BINNINGS:
        raise ValueError(
            f"Expected argument `binning` to be one of {_BINNINGS}, but got {binning!r}"
        )
    return str(binning)


def _check_alpha(alpha: Any) -> float | None:
    if alpha is None:
        return None
    if isinstance(alpha, bool) or not isinstance(alpha, int | float | np.floating | np.integer):
        raise ValueError(
            f"Expected argument `alpha` to be a float in [0, 1) or None, but got {alpha!r}"
        )
    if not 0.0 <= float(alpha) < 1.0:
        raise ValueError(f"Expected argument `alpha` to be in [0, 1), but got {alpha}")
    return float(alpha)


def _check_tensor(x: Any, name: str) -> Tensor:
    if not isinstance(x, Tensor):
        raise ValueError(
            f"Expected argument `{name}` to be a torch.Tensor, but got {type(x).__name__}"
        )
    return x.detach().cpu()  # metrics are computed on the CPU, outside autograd


def _check_labels(labels: Any, n: int, num_classes: int, name: str = "probs") -> Tensor:
    labels = _check_tensor(labels, "labels")
    if (
        labels.ndim != 1
        or labels.dtype == torch.bool
        or labels.is_floating_point()
        or labels.is_complex()
    ):
        raise ValueError(
            "Expected argument `labels` to be a 1D integer tensor of shape (N,), but got "
            f"shape {tuple(labels.shape)} and dtype {labels.dtype}"
        )
    if labels.shape[0] != n:
        raise ValueError(
            f"Expected argument `labels` to have shape ({n},) matching `{name}`, but got "
            f"shape {tuple(labels.shape)}"
        )
    if n == 0:
        raise ValueError(f"Expected non-empty input, but got `{name}` with N = 0 samples")
    lo, hi = (int(v) for v in torch.aminmax(labels))
    if lo < 0 or hi >= num_classes:
        raise ValueError(
            f"Expected argument `labels` to be in [0, {num_classes - 1}], "
            f"but got values in [{lo}, {hi}]"
        )
    return labels.long()


def _check_matrix(x: Any, name: str) -> Tensor:
    x = _check_tensor(x, name)
    if x.ndim != 2:
        raise ValueError(
            f"Expected argument `{name}` to be a 2D tensor of shape (N, K), "
            f"but got shape {tuple(x.shape)}"
        )
    if not x.is_floating_point():
        raise ValueError(
            f"Expected argument `{name}` to be a floating point tensor, but got {x.dtype}"
        )
    if x.shape[1] < 1:
        raise ValueError(
            f"Expected argument `{name}` to have at least one class, but got shape {tuple(x.shape)}"
        )
    return x


def _check_inputs(probs: Any, labels: Any) -> tuple[Tensor, Tensor]:
    probs = _check_matrix(probs, "probs")
    labels = _check_labels(labels, probs.shape[0], probs.shape[1])
    if probs.dtype not in (torch.float32, torch.float64):
        probs = probs.float()  # half precision is binned and summed in float32
    return probs.contiguous(), labels


def _check_distribution(p: Tensor) -> None:
    """Raise unless every row of the chunk `p` is a probability distribution (within tolerance)."""
    mn = float(p.min())
    if not mn >= 0.0:  # also catches NaN
        raise ValueError(
            "Expected argument `probs` to contain probabilities (non-negative, no NaN), but got a "
            f"minimum of {mn}"
        )
    worst = float((p.sum(dim=1) - 1.0).abs_().max())
    if not worst <= _SUM_TOL:
        raise ValueError(
            f"Expected argument `probs` to have rows summing to 1 (within {_SUM_TOL}), "
            f"but got a row off by {worst}"
        )


# --------------------------------------------------------------------------------------------
# binning helpers
# --------------------------------------------------------------------------------------------


@lru_cache(maxsize=64)
def _edges(n_bins: int, dtype: torch.dtype) -> Tensor:
    """Bin edges b/M computed by one division in `dtype` (the same operation `_bin_index` uses)."""
    return torch.arange(n_bins + 1, dtype=dtype) / n_bins


def _bin_index(x: Tensor, n_bins: int) -> Tensor:
    """Equal-width bin (0-based) of each value: e_b < x <= e_{b+1} with e_b = b/M in x's dtype.

    ceil(x*M) - 1 can be off by one next to an edge because x*M is rounded, so the candidate is
    corrected by comparing x with its two edges, computed as idx/M in the same dtype as `_edges`.
    All float arithmetic, no gathers.
    """
    idx = torch.ceil(x * n_bins).clamp_(1, n_bins).sub_(1)
    lo = idx / n_bins
    hi = (idx + 1) / n_bins
    idx += (x > hi).to(x.dtype) - (x <= lo).to(x.dtype)
    return idx.clamp_(0, n_bins - 1).long()


def _confidence_and_correct(p: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Top-label confidence, [argmax == y] (first maximal index wins) and p_{i,y_i}."""
    conf, pred = p.max(dim=1)  # one reduction; torch returns the first maximal index
    p_true = p.gather(1, y.unsqueeze(1)).squeeze(1)
    return conf, pred == y, p_true


def _sorted_order(conf: Tensor) -> Tensor:
    """Stable ascending order of non-negative confidences (radix sort on the IEEE bit patterns)."""
    if conf.dtype == torch.float64:
        keys = conf.contiguous().view(torch.int64)
    else:
        keys = conf.float().contiguous().view(torch.int32)
    # -0.0 has the sign bit set; treat it as 0
    keys = torch.where(keys < 0, torch.zeros_like(keys), keys)
    return torch.argsort(keys, stable=True)


# --------------------------------------------------------------------------------------------
# the accumulator shared by every metric and by CalibrationMetrics
# --------------------------------------------------------------------------------------------


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
        probs, labels = _check_inputs(probs, labels)
        k = probs.shape[1]
        if self.num_classes is not None and k != self.num_classes:
            raise ValueError(
                f"Expected argument `probs` to have {self.num_classes} classes "
                f"like earlier batches, but got {k}"
            )
        if logits is not None:
            logits = _check_matrix(logits, "logits")
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
        chunks of about `_CHUNK_ELEMS` entries.
        """
        m, k = self.n_bins, p.shape[1]
        _check_distribution(p)
        conf, correct, p_true = _confidence_and_correct(p, y)
        b = _bin_index(conf, m)
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
            self.nll -= float(p_true.double().clamp_min(_NLL_CLAMP).log().sum())
            sq = torch.linalg.vector_norm(p, dim=1).double().square_()
            self.brier += float((sq - 2.0 * p_true.double() + 1.0).sum())
        if self.classwise:
            self.col_sum += p.sum(dim=0).double()
            self.cw_acc += torch.bincount(y * m + _bin_index(p_true, m), minlength=k * m)
        if not (self.extras or self.classwise):
            return
        e1 = _edges(m, p.dtype)[1]
        tiny = torch.finfo(p.dtype).tiny  # 0 * log(tiny) = 0 implements 0 log 0 = 0
        rows = max(1, _CHUNK_ELEMS // k)
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
                key = (pos % k) * m + _bin_index(vals, m)
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

    def adaptive_ece(self) -> float:
        """Equal-mass ECE from the kept confidences."""
        self._require()
        conf = torch.cat(self.confs)
        correct = torch.cat(self.corrects)
        n, m = conf.shape[0], self.n_bins
        order = _sorted_order(conf)
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
            out.append(
                {
                    "lo": b / m,
                    "hi": (b + 1) / m,
                    "count": int(cnt),
                    "confidence": sc / cnt if cnt else None,
                    "accuracy": sa / cnt if cnt else None,
                }
            )
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
    state = _State(_check_n_bins(n_bins), classwise=classwise, extras=extras, keep=keep)
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
    alpha = _check_alpha(alpha)
    state = _State(_check_n_bins(n_bins))
    state.update(probs, labels, logits)
    return state.report(alpha)


def expected_calibration_error(
    probs: Tensor, labels: Tensor, n_bins: int = 15, binning: str = "equal_width"
) -> float:
    """Top-label ECE with equal-width (Guo et al. 2017) or equal-mass (adaptive) bins."""
    binning = _check_binning(binning)
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
    a = _check_alpha(alpha)
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
    alpha = _check_alpha(alpha)
    logits = _check_matrix(logits, "logits")
    labels = _check_labels(labels, logits.shape[0], logits.shape[1], name="logits")
    g = _gap_per_sample(logits, labels)
    opt = None if alpha is None or alpha == 0.0 else optimal_logit_gap(alpha, logits.shape[1])
    return {"mean": float(g.mean()), "median": float(np.median(g.numpy())), "optimum": opt}


class CalibrationMetrics:
    """Streaming calibration metrics: update(probs, labels, logits) per batch, then compute()."""

    def __init__(self, n_bins: int = 15, alpha: float | None = None) -> None:
        """Create an empty accumulator; `alpha` is the smoothing used for the optimum gap."""
        self.n_bins = _check_n_bins(n_bins)
        self.alpha = _check_alpha(alpha)
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


# --------------------------------------------------------------------------------------------
# temperature scaling
# --------------------------------------------------------------------------------------------


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
    logits = _check_tensor(logits, "logits")
    if logits.ndim != 2 or not logits.is_floating_point():
        raise ValueError(
            "Expected argument `logits` to be a 2D floating point tensor, "
            f"but got shape {tuple(logits.shape)} and dtype {logits.dtype}"
        )
    n, k = logits.shape
    if n == 0 or k < 2:
        if _check_tensor(labels, "labels").shape[0] != n:
            raise ValueError(
                f"Expected argument `labels` to have shape ({n},), but got {tuple(labels.shape)}"
            )
        return 1.0
    labels = _check_labels(labels, n, k, name="logits")
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


# --------------------------------------------------------------------------------------------
# penultimate projection (Müller et al. 2019)
# --------------------------------------------------------------------------------------------


def penultimate_projection(features: Tensor, templates: Tensor) -> tuple[Tensor, Tensor]:
    """Project features (N, D) on the plane of 3 templates (3, D): basis (2, D), coords (N, 2)."""
    features = _check_tensor(features, "features")
    templates = _check_tensor(templates, "templates")
    if templates.ndim != 2 or templates.shape[0] != 3 or not templates.is_floating_point():
        raise ValueError(
            "Expected argument `templates` to be a floating point tensor of shape (3, D), but got "
            f"shape {tuple(templates.shape)}"
        )
    if (
        features.ndim != 2
        or features.shape[1] != templates.shape[1]
        or not features.is_floating_point()
    ):
        raise ValueError(
            "Expected argument `features` to be a floating point tensor of shape "
            f"(N, {templates.shape[1]}), but got shape {tuple(features.shape)}"
        )
    t = templates.double()
    u = t[1] - t[0]
    w = t[2] - t[0]
    nu = torch.linalg.vector_norm(u)
    scale = float(torch.linalg.vector_norm(t, dim=1).max()) or 1.0
    if float(nu) <= 1e-12 * scale:
        raise ValueError(
            "Expected argument `templates` to span a plane, but the first two coincide"
        )
    e1 = u / nu
    w = w - (w @ e1) * e1
    w = w - (w @ e1) * e1  # second Gram-Schmidt pass for numerical orthogonality
    nw = torch.linalg.vector_norm(w)
    if float(nw) <= 1e-12 * scale:
        raise ValueError(
            "Expected argument `templates` to span a plane, but the three are collinear"
        )
    basis = torch.stack([e1, w / nw])
    coords = (features.double() - t[0]) @ basis.T
    dtype = torch.promote_types(features.dtype, templates.dtype)
    return basis.to(dtype), coords.to(dtype)


# --------------------------------------------------------------------------------------------
# JSON
# --------------------------------------------------------------------------------------------


def to_jsonable(x: Any) -> Any:
    """Convert tensors, numpy values and nested containers to JSON-safe Python; NaN/inf -> None."""
    if isinstance(x, Tensor):
        x = x.detach().cpu().tolist()
    elif isinstance(x, np.ndarray):
        x = x.tolist()
    elif isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, bool) or x is None or isinstance(x, str):
        return x
    if isinstance(x, int):
        return int(x)
    if isinstance(x, float):
        return float(x) if math.isfinite(x) else None
    if isinstance(x, dict):
        return {str(k): to_jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple | set | frozenset):
        return [to_jsonable(v) for v in x]
    raise ValueError(f"Expected a JSON-convertible value, but got {type(x).__name__}")
