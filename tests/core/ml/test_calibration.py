"""Calibration metrics against torchmetrics / scikit-learn and hand-computed cases (SPEC §5.2)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from sklearn.metrics import brier_score_loss, log_loss
from torchmetrics.functional.classification import multiclass_calibration_error

from core.ml import calibration as C
from core.ml import metrics
from core.ml.calibration import (
    CalibrationMetrics,
    brier_score,
    calibration_report,
    classwise_calibration_error,
    expected_calibration_error,
    fit_temperature,
    logit_gap,
    maximum_calibration_error,
    negative_log_likelihood,
    optimal_logit_gap,
    penultimate_projection,
    reliability_bins,
    to_jsonable,
)

REPORT_KEYS = {
    "n",
    "smooth_ece",  # issue 13 estimators (tests/core/ml/test_estimators.py)
    "ece_debiased_l2",
    "ece_sweep",
    "ece_sweep_bins",
    "ci95",
    "accuracy",
    "nll",
    "brier",
    "ece",
    "ece_adaptive",
    "mce",
    "classwise_ece",
    "mean_confidence",
    "overconfidence",
    "mean_entropy",
    "reliability",
    "logit_gap",
}


def _random(n: int, k: int, seed: int, scale: float = 2.0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(n, k, generator=g, dtype=torch.float64) * scale).to(dtype)
    probs = torch.softmax(logits.double(), dim=1).to(dtype)
    labels = torch.randint(0, k, (n,), generator=g)
    return logits, probs, labels


def _away_from_edges(probs: torch.Tensor, labels: torch.Tensor, n_bins: int = 15):
    t = probs.double().amax(dim=1) * n_bins
    keep = (t - t.round()).abs() > 1e-3
    return probs[keep], labels[keep]


# ---------------------------------------------------------------- oracles: torchmetrics / sklearn


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n_bins", [15, 7])
def test_ece_and_mce_match_torchmetrics(dtype, n_bins):
    _, probs, labels = _random(20_000, 10, seed=1, dtype=dtype)
    probs, labels = _away_from_edges(probs, labels, n_bins)
    k = probs.shape[1]
    ref_ece = multiclass_calibration_error(probs, labels, num_classes=k, n_bins=n_bins, norm="l1")
    ref_mce = multiclass_calibration_error(probs, labels, num_classes=k, n_bins=n_bins, norm="max")
    assert expected_calibration_error(probs, labels, n_bins) == pytest.approx(
        float(ref_ece), abs=1e-6
    )
    assert maximum_calibration_error(probs, labels, n_bins) == pytest.approx(
        float(ref_mce), abs=1e-6
    )


def test_brier_and_nll_match_sklearn():
    _, probs, labels = _random(3000, 6, seed=2, dtype=torch.float64)
    y, p = labels.numpy(), probs.numpy()
    onehot = np.eye(6)[y]
    assert brier_score(probs, labels) == pytest.approx(((p - onehot) ** 2).sum(1).mean(), rel=1e-12)
    sk_brier = brier_score_loss(y, p, labels=list(range(6)), scale_by_half=False)
    assert brier_score(probs, labels) == pytest.approx(sk_brier, rel=1e-10)
    ref_nll = log_loss(y, p, labels=list(range(6)))
    assert negative_log_likelihood(probs, labels) == pytest.approx(ref_nll, rel=1e-10)


def test_nll_clamps_zero_probability():
    probs = torch.tensor([[1.0, 0.0], [0.5, 0.5]])
    labels = torch.tensor([1, 0])
    assert negative_log_likelihood(probs, labels) == pytest.approx(
        (-math.log(1e-12) + math.log(2)) / 2
    )


# ---------------------------------------------------------------- bin edges (hand-computed)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_bin_index_at_float_edges(dtype):
    m = 15
    ks = list(range(m + 1))
    c = torch.tensor([k / m for k in ks], dtype=dtype)
    assert C.bin_index(c, m).tolist() == [max(k - 1, 0) for k in ks]
    above = torch.nextafter(c[:-1], torch.tensor(2.0, dtype=dtype))  # just above edge k
    assert C.bin_index(above, m).tolist() == [min(k, m - 1) for k in ks[:-1]]
    below = torch.nextafter(c[1:], torch.tensor(-1.0, dtype=dtype))  # just below edge k
    assert C.bin_index(below, m).tolist() == [k - 1 for k in ks[1:]]


@pytest.mark.parametrize("n_bins", [1, 3, 10, 20, 100])
def test_bin_index_matches_bucketize_on_edges(n_bins):
    for dtype in (torch.float32, torch.float64):
        grid = torch.tensor([b / n_bins for b in range(n_bins + 1)], dtype=dtype)
        x = torch.cat([grid, torch.nextafter(grid, 2 * torch.ones_like(grid)).clamp(max=1)])
        x = torch.cat([x, torch.rand(1000, dtype=dtype)])
        ref = torch.bucketize(x, grid[1:-1], right=False)  # e_{b} < x <= e_{b+1}
        assert torch.equal(C.bin_index(x, n_bins), ref)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_ece_by_hand_at_edges_and_ties(dtype):
    uniform = [1 / 15] * 15  # c = 1/15 exactly -> first bin; tie, argmax = class 0
    onehot3 = [0.0] * 15
    onehot3[3] = 1.0  # c = 1.0 -> last bin
    onehot2 = [0.0] * 15
    onehot2[2] = 1.0
    two = [2 / 15] * 7 + [1 / 15] + [0.0] * 7  # c = 2/15 -> second bin; 7-way tie, argmax 0
    probs = torch.tensor([uniform, onehot3, onehot2, two, two], dtype=dtype)
    labels = torch.tensor([0, 3, 5, 0, 1])
    # bin 1: 1 sample, acc 1, conf 1/15; bin 2: acc 1/2, conf 2/15; bin 15: acc 1/2, conf 1
    expected = ((1 - 1 / 15) + 2 * (0.5 - 2 / 15) + 2 * 0.5) / 5
    assert expected_calibration_error(probs, labels) == pytest.approx(expected, abs=1e-6)
    assert maximum_calibration_error(probs, labels) == pytest.approx(14 / 15, abs=1e-6)
    bins = reliability_bins(probs, labels)
    assert [b["count"] for b in bins] == [1, 2] + [0] * 12 + [2]
    assert bins[1]["accuracy"] == 0.5 and bins[1]["confidence"] == pytest.approx(2 / 15, abs=1e-7)
    assert bins[5]["confidence"] is None and bins[5]["accuracy"] is None
    assert bins[0]["lo"] == 0.0 and bins[-1]["hi"] == 1.0
    rep = calibration_report(probs, labels)
    assert rep["accuracy"] == pytest.approx(3 / 5)  # rows 1, 2 and 4 are right


def test_adaptive_ece_by_hand():
    conf = [0.9, 0.6, 0.7, 0.55, 0.8]
    probs = torch.tensor([[c, 1 - c] for c in conf], dtype=torch.float64)
    labels = torch.tensor([0, 1, 0, 0, 1])  # correct: 1, 0, 1, 1, 0
    # sorted: 0.55(1) 0.6(0) 0.7(1) | 0.8(0) 0.9(1); groups floor(i*2/5) = sizes 3, 2
    expected = (abs(2 - 1.85) + abs(1 - 1.7)) / 5
    got = expected_calibration_error(probs, labels, n_bins=2, binning="equal_mass")
    assert got == pytest.approx(expected, abs=1e-12)
    assert expected_calibration_error(probs, labels, n_bins=5, binning="equal_mass") == (
        pytest.approx(sum(abs(int(c) - p) for c, p in zip([1, 0, 1, 1, 0], conf, strict=True)) / 5)
    )


def test_classwise_ece_by_hand():
    probs = torch.tensor([[0.75, 0.25], [0.25, 0.75], [0.5, 0.5], [1.0, 0.0]])
    labels = torch.tensor([0, 0, 1, 0])
    # class 0: bin1 {.25(1), .5(0)} -> |1-.75|; bin2 {.75(1), 1.0(1)} -> |2-1.75|  => 0.5/4
    # class 1: bin1 {.25(0), .5(1), 0.0(0)} -> |1-.75|; bin2 {.75(0)} -> .75       => 1.0/4
    assert classwise_calibration_error(probs, labels, n_bins=2) == pytest.approx(0.1875)


@pytest.mark.parametrize(("dtype", "rel"), [(torch.float32, 1e-6), (torch.float64, 1e-12)])
def test_classwise_ece_matches_dense_reference(dtype, rel):
    _, probs, labels = _random(2000, 7, seed=3, scale=1.5, dtype=dtype)
    m = 15
    ref = 0.0
    for k in range(7):
        bins = C.bin_index(probs[:, k], m)
        acc = (labels == k).double()
        s_p = torch.bincount(bins, weights=probs[:, k].double(), minlength=m)
        s_a = torch.bincount(bins, weights=acc, minlength=m)
        ref += float((s_a - s_p).abs().sum()) / 2000
    assert classwise_calibration_error(probs, labels) == pytest.approx(ref / 7, rel=rel)


# ---------------------------------------------------------------- report, streaming, JSON


def test_report_keys_values_and_json():
    logits, probs, labels = _random(500, 5, seed=4)
    rep = calibration_report(probs, labels, logits=logits, alpha=0.1)
    assert set(rep) == REPORT_KEYS
    json.dumps(rep, allow_nan=False)
    assert rep["n"] == 500
    assert rep["overconfidence"] == pytest.approx(rep["mean_confidence"] - rep["accuracy"])
    p = probs.double()
    ent = float(-(p * p.log()).sum(1).mean())
    assert rep["mean_entropy"] == pytest.approx(ent, rel=1e-5)
    assert rep["ece"] == pytest.approx(expected_calibration_error(probs, labels))
    assert rep["ece_adaptive"] == pytest.approx(
        expected_calibration_error(probs, labels, binning="equal_mass")
    )
    assert rep["logit_gap"]["optimum"] == pytest.approx(math.log((0.9 + 0.02) / 0.02))
    assert len(rep["reliability"]) == 15
    assert sum(b["count"] for b in rep["reliability"]) == 500
    no_logits = calibration_report(probs, labels, alpha=0.1)
    assert no_logits["logit_gap"] == {"mean": None, "median": None, "optimum": None}
    zero = calibration_report(probs, labels, logits=logits, alpha=0.0)
    assert zero["logit_gap"]["optimum"] is None


def test_logit_gap_values():
    logits = torch.tensor([[3.0, 1.0, -1.0], [0.0, 2.0, 4.0], [1.0, 1.0, 1.0]])
    labels = torch.tensor([0, 1, 2])
    # gaps: 3 - 0 = 3; 2 - 2 = 0; 1 - 1 = 0
    out = logit_gap(logits, labels, alpha=0.3)
    assert out["mean"] == pytest.approx(1.0) and out["median"] == pytest.approx(0.0)
    assert out["optimum"] == pytest.approx(math.log((0.7 + 0.1) / 0.1))
    assert optimal_logit_gap(0.0, 10) == math.inf
    assert logit_gap(logits, labels)["optimum"] is None


def test_streaming_equals_one_shot_and_dtypes_agree():
    logits, probs, labels = _random(3001, 8, seed=5)
    extra = ("smooth_ece", "ece_debiased_l2", "ece_sweep", "ece_sweep_bins", "ci95")

    def base(report: dict) -> dict:  # the streaming metric has no issue-13 estimators
        return {k: v for k, v in report.items() if k not in extra}

    one = base(calibration_report(probs, labels, logits=logits, alpha=0.1))
    metric = CalibrationMetrics(alpha=0.1)
    for a, b in [(0, 1000), (1000, 1001), (1001, 3001)]:
        metric.update(probs[a:b], labels[a:b], logits[a:b])
    streamed = metric.compute()
    _assert_reports_close(one, streamed, rel=1e-6)  # float32 sums inside a chunk
    metric.reset()
    metric.update(probs, labels, logits)
    _assert_reports_close(one, metric.compute(), rel=1e-12)
    p64, z64 = probs.double(), logits.double()
    p64 = p64 / p64.sum(dim=1, keepdim=True)
    _assert_reports_close(one, base(calibration_report(p64, labels, logits=z64, alpha=0.1)),
                          rel=1e-5)


def _assert_reports_close(a: dict, b: dict, rel: float) -> None:
    assert set(a) == set(b)
    for key in a:
        if key == "ci95":  # issue-13 bootstrap intervals: [lo, hi] pairs
            for f in ("ece", "smooth_ece"):
                assert a[key][f] == pytest.approx(b[key][f], rel=rel, abs=1e-12)
            continue
        if key == "reliability":
            for x, y in zip(a[key], b[key], strict=True):
                assert x["count"] == y["count"]
                for f in ("confidence", "accuracy"):
                    assert (x[f] is None) == (y[f] is None)
                    if x[f] is not None:
                        assert x[f] == pytest.approx(y[f], rel=rel, abs=1e-12)
        elif key == "logit_gap":
            for f in a[key]:
                if a[key][f] is None:
                    assert b[key][f] is None
                else:
                    assert a[key][f] == pytest.approx(b[key][f], rel=rel)
        else:
            assert a[key] == pytest.approx(b[key], rel=rel, abs=1e-12), key


def test_chunked_pass_equals_single_chunk(monkeypatch):
    logits, probs, labels = _random(999, 12, seed=6)
    one = calibration_report(probs, labels, logits=logits)
    monkeypatch.setattr(metrics, "CHUNK_ELEMS", 12 * 37)
    _assert_reports_close(one, calibration_report(probs, labels, logits=logits), rel=1e-6)
    p64 = probs.double() / probs.double().sum(dim=1, keepdim=True)
    one64 = calibration_report(p64, labels, logits=logits)
    monkeypatch.setattr(metrics, "CHUNK_ELEMS", 1 << 20)
    _assert_reports_close(one64, calibration_report(p64, labels, logits=logits), rel=1e-12)


def test_to_jsonable():
    data = {"a": float("nan"), "b": [1, float("inf"), torch.tensor(2.5)], 3: np.float32(1.5)}
    assert to_jsonable(data) == {"a": None, "b": [1, None, 2.5], "3": 1.5}
    assert to_jsonable(torch.tensor([1.0, float("-inf")])) == [1.0, None]
    assert to_jsonable((True, None, "x", np.int64(4))) == [True, None, "x", 4]


# ---------------------------------------------------------------- temperature scaling


def test_fit_temperature_recovers_three_and_reduces_ece():
    g = torch.Generator().manual_seed(7)
    z = torch.randn(6000, 10, generator=g, dtype=torch.float64) * 1.5
    labels = torch.multinomial(torch.softmax(z, dim=1), 1, generator=g).squeeze(1)
    hot = 3.0 * z
    t = fit_temperature(hot, labels)
    assert abs(t - 3.0) / 3.0 < 0.10
    before = expected_calibration_error(torch.softmax(hot, dim=1), labels)
    after = expected_calibration_error(torch.softmax(hot / t, dim=1), labels)
    assert after < before

    # NLL at the fitted T is a local minimum
    def nll(temp: float) -> float:
        return negative_log_likelihood(torch.softmax(hot / temp, dim=1), labels)

    assert nll(t) <= min(nll(t * 1.01), nll(t / 1.01))
    assert fit_temperature(hot.float(), labels) == pytest.approx(t, rel=1e-3)


def test_fit_temperature_degenerate_inputs():
    labels = torch.tensor([0, 1, 2])
    assert fit_temperature(torch.zeros(3, 3), labels) == 1.0
    assert fit_temperature(torch.full((3, 3), float("nan")), labels) == 1.0
    assert fit_temperature(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long)) == 1.0
    assert fit_temperature(torch.randn(3, 1), torch.zeros(3, dtype=torch.long)) == 1.0
    # separable data pushes T towards 0: clamped, finite, positive
    t = fit_temperature(torch.eye(3) * 5.0, labels)
    assert math.isfinite(t) and 0.0 < t < 1.0
    with pytest.raises(ValueError, match="`labels`"):
        fit_temperature(torch.randn(3, 3), torch.tensor([0, 1, 3]))


# ---------------------------------------------------------------- penultimate projection


def test_projection_equilateral_and_orthonormal():
    g = torch.Generator().manual_seed(8)
    d = 6
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    offset = torch.randn(d, generator=g, dtype=torch.float64)
    templates = 2.0 * q[:3] + offset  # equidistant: |t_i - t_j| = 2 sqrt(2)
    basis, coords = penultimate_projection(templates, templates)
    assert torch.allclose(basis @ basis.T, torch.eye(2, dtype=torch.float64), atol=1e-12)
    dist = torch.cdist(coords, coords)
    side = 2.0 * math.sqrt(2.0)
    for i, j in [(0, 1), (0, 2), (1, 2)]:
        assert float(dist[i, j]) == pytest.approx(side, rel=1e-12)
    assert coords[0].abs().max() < 1e-12  # t1 is the origin
    # in-plane part reconstructs, the rest is orthogonal to the plane
    x = torch.randn(50, d, generator=g, dtype=torch.float64)
    _, c = penultimate_projection(x, templates)
    resid = (x - templates[0]) - c @ basis
    assert (resid @ basis.T).abs().max() < 1e-10
    b32, c32 = penultimate_projection(x.float(), templates.float())
    assert c32.dtype == torch.float32 and torch.allclose(c32.double(), c, atol=1e-4)


def test_projection_rejects_bad_templates():
    with pytest.raises(ValueError, match="shape \\(3, D\\)"):
        penultimate_projection(torch.randn(4, 5), torch.randn(2, 5))
    with pytest.raises(ValueError, match="collinear"):
        t = torch.tensor([[0.0, 0.0], [1.0, 1.0], [2.0, 2.0]])
        penultimate_projection(torch.randn(4, 2), t)
    with pytest.raises(ValueError, match="`features`"):
        penultimate_projection(torch.randn(4, 3), torch.randn(3, 5))


# ---------------------------------------------------------------- bad arguments


GOOD_P = torch.tensor([[0.7, 0.3], [0.4, 0.6]])
GOOD_Y = torch.tensor([0, 1])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_bins": 0}, "Expected argument `n_bins` to be a positive integer, but got 0"),
        ({"n_bins": 2.5}, "`n_bins` to be a positive integer, but got 2.5"),
        ({"n_bins": True}, "`n_bins` to be a positive integer"),
        ({"probs": torch.tensor([[1.2, -0.2], [0.5, 0.5]])}, "non-negative"),
        ({"probs": torch.tensor([[0.7, 0.7], [0.5, 0.5]])}, "rows summing to 1"),
        ({"probs": torch.tensor([[float("nan"), 1.0], [0.5, 0.5]])}, "no NaN"),
        (
            {"labels": torch.tensor([0, 2])},
            r"`labels` to be in \[0, 1\], but got values in \[0, 2\]",
        ),
        ({"labels": torch.tensor([-1, 0])}, "`labels` to be in"),
        ({"labels": torch.tensor([0, 1, 1])}, "`labels` to have shape \\(2,\\)"),
        ({"labels": torch.tensor([0.0, 1.0])}, "integer tensor"),
        ({"probs": torch.tensor([0.5, 0.5])}, "2D tensor"),
        ({"probs": torch.tensor([[1, 0], [0, 1]])}, "floating point"),
        ({"probs": torch.zeros(0, 2), "labels": torch.zeros(0, dtype=torch.long)}, "non-empty"),
        ({"probs": [[0.5, 0.5]]}, "torch.Tensor"),
        ({"logits": torch.zeros(3, 2)}, "`logits` to have the shape"),
        ({"alpha": 1.0}, r"`alpha` to be in \[0, 1\), but got 1.0"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    args = {"probs": GOOD_P, "labels": GOOD_Y, "n_bins": 15, "logits": None, "alpha": None} | kwargs
    with pytest.raises(ValueError, match=match):
        calibration_report(**args)


def test_bad_arguments_of_single_metrics():
    with pytest.raises(ValueError, match="`binning` to be one of"):
        expected_calibration_error(GOOD_P, GOOD_Y, binning="quantile")
    for fn in (expected_calibration_error, maximum_calibration_error, classwise_calibration_error):
        with pytest.raises(ValueError, match="`n_bins`"):
            fn(GOOD_P, GOOD_Y, n_bins=-3)
    for fn2 in (brier_score, negative_log_likelihood):
        with pytest.raises(ValueError, match="`labels`"):
            fn2(GOOD_P, torch.tensor([0, 5]))
    with pytest.raises(ValueError, match="`num_classes`"):
        optimal_logit_gap(0.1, 1)
    with pytest.raises(ValueError, match="`n_bins`"):
        CalibrationMetrics(n_bins=0)


def test_streaming_bad_batch_leaves_state_unchanged():
    metric = CalibrationMetrics()
    with pytest.raises(ValueError, match="at least one non-empty batch"):
        metric.compute()
    metric.update(GOOD_P, GOOD_Y)
    before = metric.compute()
    bad = torch.tensor([[0.5, 0.5], [0.9, 0.3]])
    with pytest.raises(ValueError, match="rows summing to 1"):
        metric.update(torch.cat([GOOD_P] * 3 + [bad]), torch.cat([GOOD_Y] * 4))
    with pytest.raises(ValueError, match="2 classes"):
        metric.update(torch.full((2, 3), 1 / 3), GOOD_Y)
    with pytest.raises(ValueError, match="every batch or for none"):
        metric.update(GOOD_P, GOOD_Y, logits=torch.zeros(2, 2))
    assert metric.compute() == before


def test_inputs_that_require_grad_are_accepted():
    z = torch.randn(40, 4, requires_grad=True)
    labels = torch.randint(0, 4, (40,))
    rep = calibration_report(torch.softmax(z, dim=1), labels, logits=z, alpha=0.1)
    json.dumps(rep, allow_nan=False)
    assert math.isfinite(fit_temperature(z, labels))
    assert penultimate_projection(z[:, :3], torch.eye(3))[1].shape == (40, 2)
