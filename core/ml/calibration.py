"""Calibration: the public face of core.ml.metrics, temperature and projection (SPEC §5.2).

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

from core.ml.metric_helpers import bin_index, to_jsonable
from core.ml.metrics import (
    CalibrationMetrics,
    brier_score,
    calibration_report,
    classwise_calibration_error,
    expected_calibration_error,
    logit_gap,
    maximum_calibration_error,
    negative_log_likelihood,
    optimal_logit_gap,
    reliability_bins,
)
from core.ml.projection import penultimate_projection
from core.ml.temperature import fit_temperature

__all__ = [
    "CalibrationMetrics",
    "bin_index",
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
