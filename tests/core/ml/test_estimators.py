"""Calibration-error estimators (core/ml/estimators.py) against their oracle packages."""

from __future__ import annotations

import calibration as kumar  # the `uncertainty-calibration` package
import numpy as np
import pytest
import relplot
import torch

from core.ml import estimators
from core.ml.calibration import calibration_report, expected_calibration_error


def _probs(n: int, k: int, seed: int, scale: float, agree: float = 0.7):
    g = torch.Generator().manual_seed(seed)
    p = torch.softmax(torch.randn(n, k, generator=g, dtype=torch.float64) * scale, 1)
    noise = torch.randint(0, k, (n,), generator=g)
    y = torch.where(torch.rand(n, generator=g) < agree, p.argmax(1), noise)
    return p, y


CASES = [(50, 3, 0, 1.0), (300, 10, 1, 3.0), (2000, 5, 2, 1.0), (5000, 3, 3, 6.0),
         (20000, 10, 4, 0.3), (3000, 2, 5, 8.0)]


@pytest.mark.parametrize(("n", "k", "seed", "scale"), CASES)
def test_smooth_ece_equals_relplot(n, k, seed, scale):
    p, y = _probs(n, k, seed, scale)
    conf, correct = estimators.top_label(p, y)
    assert estimators.smooth_ece(p, y) == pytest.approx(relplot.smECE(conf, correct), abs=1e-6)


def test_smooth_ece_small_bandwidth_branch():
    # a nearly calibrated large sample drives σ below 0.01 (grids above 2000 points)
    g = torch.Generator().manual_seed(7)
    conf = torch.rand(40000, generator=g, dtype=torch.float64) * 0.5 + 0.5
    correct = (torch.rand(40000, generator=g, dtype=torch.float64) < conf).long()
    p = torch.stack([conf, 1 - conf], 1)
    y = 1 - correct  # class 0 is the prediction, right with probability conf
    ours = estimators._SmoothECE(*estimators.top_label(p, y)).fixed_point()
    ref, sigma = relplot.smECE(*estimators.top_label(p, y), return_width=True)
    assert sigma < 0.01
    assert ours == pytest.approx((ref, sigma), abs=1e-6)


@pytest.mark.parametrize(("n", "k", "seed", "scale"), CASES)
def test_debiased_l2_equals_kumar(n, k, seed, scale):
    p, y = _probs(n, k, seed, scale)
    ref = kumar.lower_bound_scaling_ce(p.numpy(), y.numpy(), p=2, debias=True, num_bins=15,
                                       mode="top-label")
    assert estimators.ece_debiased_l2(p, y) == pytest.approx(ref, abs=1e-9)


def sweep_by_hand(conf: np.ndarray, correct: np.ndarray) -> tuple[float, int]:
    """Roelofs et al.'s ECE_sweep with explicit bins (loops, no prefix sums)."""
    order = np.argsort(conf, kind="stable")
    c, a = conf[order], correct[order]
    n = len(c)

    def bins(b):
        groups = [[] for _ in range(b)]
        for i in range(n):
            groups[i * b // n].append(i)
        return groups

    best = 1
    for b in range(2, n + 1):
        accs = [a[g].mean() for g in bins(b)]
        if any(accs[j + 1] < accs[j] for j in range(b - 1)):
            break
        best = b
    ece = sum(len(g) / n * abs(a[g].mean() - c[g].mean()) for g in bins(best))
    return ece, best


@pytest.mark.parametrize(("n", "k", "seed", "scale"), CASES[:4])
def test_ece_sweep_equals_direct_reimplementation(n, k, seed, scale):
    p, y = _probs(n, k, seed, scale, agree=0.9)
    ece, b = estimators.ece_sweep(p, y)
    ref_ece, ref_b = sweep_by_hand(*estimators.top_label(p, y))
    assert b == ref_b and ece == pytest.approx(ref_ece, abs=1e-12)


def test_ece_sweep_hand_cases():
    # confidences 0.6, 0.7, 0.8, 0.9; bin of sorted position i with b bins is floor(i*b/4).
    # correct 0, 1, 1, 1: b=2 -> 0.5, 1; b=3 -> [0.6, 0.7] 0.5, [0.8] 1, [0.9] 1; b=4 -> 0, 1,
    # 1, 1: all monotone, so 4 bins and ECE = mean |a - c|
    conf = torch.tensor([0.6, 0.7, 0.8, 0.9], dtype=torch.float64)
    p = torch.stack([conf, 1 - conf], 1)
    y = torch.tensor([1, 0, 0, 0])
    ece, b = estimators.ece_sweep(p, y)
    assert b == 4 and ece == pytest.approx((0.6 + 0.3 + 0.2 + 0.1) / 4)
    # correct 1, 0, 1, 1: b=3 -> 0.5, 1, 1 monotone; b=4 -> 1, 0, ... not: 3 bins
    y2 = torch.tensor([0, 1, 0, 0])
    ece2, b2 = estimators.ece_sweep(p, y2)
    assert b2 == 3 and ece2 == pytest.approx(0.5 * 0.15 + 0.25 * 0.2 + 0.25 * 0.1)


def test_bootstrap_intervals_are_seeded_and_cover_the_estimate():
    p, y = _probs(600, 5, 11, 2.0)
    a = estimators.bootstrap_intervals(p, y)
    assert a == estimators.bootstrap_intervals(p, y)
    assert a != estimators.bootstrap_intervals(p, y, seed=1)
    ece = expected_calibration_error(p, y)
    smooth = estimators.smooth_ece(p, y)
    assert a["ece"][0] < ece < a["ece"][1]
    assert a["smooth_ece"][0] < smooth < a["smooth_ece"][1]
    assert a["resamples"] == 1000 and a["n"] == 600


def test_bootstrap_matches_a_loop_over_resamples():
    p, y = _probs(120, 4, 12, 2.0)
    out = estimators.bootstrap_intervals(p, y, resamples=50, seed=3)
    rng = np.random.default_rng(3)
    idx = rng.integers(0, 120, size=(50, 120))
    eces = [expected_calibration_error(p[torch.from_numpy(i)].float(), y[torch.from_numpy(i)])
            for i in idx]
    sigma = out["smooth_ece_sigma"]
    conf, correct = estimators.top_label(p, y)
    smooth = [estimators._SmoothECE(conf[i], correct[i]).at(sigma) for i in idx]
    assert out["ece"] == pytest.approx(list(np.percentile(eces, [2.5, 97.5])), abs=1e-6)
    assert out["smooth_ece"] == pytest.approx(list(np.percentile(smooth, [2.5, 97.5])), abs=1e-9)


def test_tiny_bandwidth_bootstrap_is_chunked_without_changing_it(monkeypatch):
    rng = np.random.default_rng(5)
    n, sigma = 300, 0.0005  # a grid of 20,001 cells: the FFT path, in chunks of resamples
    f = rng.uniform(0.05, 0.15, n)
    res = f - (rng.uniform(size=n) < 0.1)
    counts = rng.integers(0, 3, size=(40, n)).astype(np.float64)
    g = estimators._grid_size(sigma)
    whole = estimators._smece_fft_rows(f, res, counts, sigma, g)
    monkeypatch.setattr(estimators, "_FFT_CHUNK_CELLS", 3 * g)  # chunks of 3 resamples
    chunked = estimators._bootstrap_smece(f, res, counts, sigma)
    np.testing.assert_allclose(chunked, whole, rtol=1e-12, atol=0)
    one = [estimators._smece_fft_rows(f, res, counts[i:i + 1], sigma, g)[0] for i in (0, 39)]
    np.testing.assert_allclose([chunked[0], chunked[39]], one, rtol=1e-12, atol=0)


def test_every_test_block_has_the_new_estimators():
    p, y = _probs(400, 6, 13, 2.0)
    report = calibration_report(p.float(), y)
    for key in ("smooth_ece", "ece_debiased_l2", "ece_sweep", "ece_sweep_bins", "ci95"):
        assert key in report
    assert report["smooth_ece"] == pytest.approx(estimators.smooth_ece(p.float(), y))
