"""The batched (T-trial) metric functions against their single-trial versions: equal numbers.

stacked_metrics, stacked_estimators, temperature.fit_temperatures, stacked_posthoc and
finish.finish_trials must give trial t exactly what the single-trial function gives for
trial t alone (same arithmetic in the same order), on random inputs with ties, several
T, N, K and bin counts; the one exception is smooth ECE itself (its convolutions by FFT
instead of directly: equal to float rounding, the same bandwidth).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch

from core.ml import estimators, posthoc
from core.ml.early_stopping import epoch_row, epoch_rows
from core.ml.evaluation import val_metrics
from core.ml.metric_helpers import sorted_order
from core.ml.metrics import calibration_report, expected_calibration_error
from core.ml.stacked_estimators import estimators_rows, smooth_ece_rows
from core.ml.stacked_metrics import calibration_reports, ece_rows, val_metrics_rows
from core.ml.stacked_posthoc import posthoc_reports
from core.ml.temperature import fit_temperature, fit_temperatures

SMOOTH_RTOL = 1e-13  # smooth ECE by FFT vs direct convolution (measured <= 3e-15)


def same(a: Any, b: Any, path: str = "") -> None:
    """Exact equality of nested results (NaN equal to NaN); smooth ECE within SMOOTH_RTOL."""
    if path.endswith(".smooth_ece") and isinstance(a, float):
        assert math.isclose(a, b, rel_tol=SMOOTH_RTOL), f"{path}: {a!r} vs {b!r}"
    elif isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b), path
        for k in a:
            same(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            same(x, y, f"{path}[{i}]")
    elif isinstance(a, float) and math.isnan(a):
        assert isinstance(b, float) and math.isnan(b), path
    else:
        assert type(a) is type(b) and a == b, f"{path}: {a!r} vs {b!r}"


def logits_of(t: int, n: int, k: int, seed: int, scale: float, ties: bool = False
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """(T, N, K) float32 logits of varied sharpness per trial and (N,) labels."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(t, n, k, generator=g) * scale * (0.3 + torch.rand(t, 1, 1, generator=g))
    if ties:  # repeated confidences, equal top logits (first index wins), bin-edge values
        z = (z * 2).round() / 2
    return z, torch.randint(0, k, (n,), generator=g)


# (T, N, K, seed, scale, ties)
CASES = [(1, 50, 3, 0, 1.0, False), (5, 269, 10, 1, 3.0, False), (3, 2500, 5, 2, 1.0, False),
         (4, 300, 4, 3, 2.0, True), (2, 7, 3, 4, 1.0, False), (3, 1, 2, 5, 1.0, False),
         (6, 120, 2, 6, 4.0, True)]


@pytest.mark.parametrize(("t", "n", "k", "seed", "scale", "ties"), CASES)
@pytest.mark.parametrize("n_bins", [15, 7, 1])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_calibration_reports_equal_calibration_report(t, n, k, seed, scale, ties, n_bins, dtype):
    z, y = logits_of(t, n, k, seed, scale, ties)
    probs = torch.softmax(z.double(), dim=2).to(dtype)
    alphas = [None if i % 3 == 0 else 0.1 * i for i in range(t)]
    with_logits = calibration_reports(probs, y, n_bins, logits=z, alphas=alphas)
    without = calibration_reports(probs, y, n_bins)
    for i in range(t):
        same(calibration_report(probs[i].clone(), y, n_bins, logits=z[i].clone(),
                                alpha=alphas[i]), with_logits[i])
        same(calibration_report(probs[i].clone(), y, n_bins), without[i])
    assert ece_rows(probs, y, n_bins) == [
        expected_calibration_error(probs[i], y, n_bins) for i in range(t)]


def test_calibration_reports_in_row_chunks():
    # N x K above CHUNK_ELEMS: each trial's entries in several chunks, as the single path
    z, y = logits_of(2, 4300, 1000, 7, 4.0)
    probs = torch.softmax(z.double(), dim=2).float()
    got = calibration_reports(probs, y, 15, logits=z, alphas=[0.1, 0.2])
    for i in range(2):
        same(calibration_report(probs[i].clone(), y, 15, logits=z[i].clone(),
                                alpha=[0.1, 0.2][i]), got[i])


def test_calibration_reports_check_their_arguments():
    z, y = logits_of(2, 20, 3, 8, 1.0)
    probs = torch.softmax(z, dim=2)
    with pytest.raises(ValueError, match="shape"):
        calibration_reports(probs[0], y)
    with pytest.raises(ValueError, match="rows summing to 1"):
        calibration_reports(probs * 1.1, y)
    with pytest.raises(ValueError, match="alphas"):
        calibration_reports(probs, y, alphas=[0.1])
    with pytest.raises(ValueError, match="labels"):
        calibration_reports(probs, y[:5])


def _pairs(probs: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    conf, pred = probs.max(dim=2)
    order = torch.stack([sorted_order(row) for row in conf]).numpy()
    return conf, (pred == y).double().numpy(), order


@pytest.mark.parametrize(("t", "n", "k", "seed", "scale", "ties"), CASES)
@pytest.mark.parametrize("n_bins", [15, 4])
def test_estimators_rows_equal_estimators_of(t, n, k, seed, scale, ties, n_bins):
    z, y = logits_of(t, n, k, seed, scale, ties)
    conf, correct, order = _pairs(torch.softmax(z.double(), dim=2).float(), y)
    got = estimators_rows(conf, correct, order, n_bins)
    for i in range(t):
        same(estimators.estimators_of(conf[i].clone(), correct[i].copy(), order[i].copy(),
                                      n_bins), got[i])


def test_smooth_ece_rows_small_bandwidth_rows():
    # nearly calibrated large samples: σ below 0.01, finer grids, as in test_estimators
    g = torch.Generator().manual_seed(7)
    conf = torch.rand(2, 40000, generator=g, dtype=torch.float64) * 0.5 + 0.5
    correct = (torch.rand(2, 40000, generator=g, dtype=torch.float64) < conf).double()
    smooth, sigma = smooth_ece_rows(conf.numpy(), correct.numpy())
    for i in range(2):
        ref, ref_sigma = estimators._SmoothECE(conf[i].numpy(), correct[i].numpy()).fixed_point()
        assert float(sigma[i]) == ref_sigma
        assert math.isclose(float(smooth[i]), ref, rel_tol=SMOOTH_RTOL)
    assert sigma.max() < 0.01


def test_smooth_ece_rows_fine_grids():
    # σ below 0.0025: grids above 4000 points (convolved by FFT in estimators as well)
    from core.ml.stacked_estimators import _Rows

    rng = np.random.default_rng(0)
    conf = rng.random((2, 3000))
    correct = (rng.random((2, 3000)) < conf).astype(np.float64)
    sigmas = np.array([0.002, 0.0015])
    ref = [estimators._SmoothECE(conf[i], correct[i]).at(float(sigmas[i])) for i in range(2)]
    assert _Rows(conf, correct).at(sigmas).tolist() == pytest.approx(ref, rel=SMOOTH_RTOL)


@pytest.mark.parametrize(("t", "n", "k", "seed", "scale", "ties"),
                         [*CASES, (3, 40, 4, 9, 0.0, False)])
def test_fit_temperatures_equal_fit_temperature(t, n, k, seed, scale, ties):
    z, y = logits_of(t, n, k, seed, scale * 3, ties)
    if t >= 3:
        z[1] = 0.0  # no spread: 1.0
        z[2, 0, 0] = math.inf  # not finite: 1.0
    assert fit_temperatures(z, y) == [fit_temperature(z[i], y) for i in range(t)]


@pytest.mark.parametrize(("t", "n", "k", "seed"), [(1, 60, 3, 0), (4, 269, 10, 1), (3, 400, 2, 2),
                                                  (2, 3, 3, 3)])
def test_posthoc_reports_equal_posthoc_report(t, n, k, seed):
    zv, yv = logits_of(t, n, k, seed, 3.0)
    zt, yt = logits_of(t, n + 5, k, seed + 100, 3.0)
    methods = [m for m in posthoc.POSTHOC_METHODS if k <= 3 or m != "matrix_scaling"]  # L-BFGS
    alphas = [0.1 * i for i in range(t)]
    got = posthoc_reports(methods, zv, yv, zt, yt, n_bins=15, alphas=alphas)
    for i in range(t):
        same(posthoc.posthoc_report(methods, zv[i], yv, zt[i], yt, n_bins=15, alpha=alphas[i]),
             got[i])
    temps = [fit_temperature(zv[i], yv) for i in range(t)]
    given = posthoc_reports(["temperature"], zv, yv, zt, yt, alphas=alphas, temperatures=temps)
    same([b["methods"]["temperature"] for b in got], [b["methods"]["temperature"] for b in given])


@pytest.mark.parametrize(("t", "n", "k", "seed", "scale", "ties"), CASES)
def test_val_metrics_rows_and_epoch_rows_equal_the_single_ones(t, n, k, seed, scale, ties):
    z, y = logits_of(t, n, k, seed, scale, ties)
    assert val_metrics_rows(z, y, 15) == [val_metrics(z[i], y, 15) for i in range(t)]
    losses = [0.5 + i for i in range(t)]
    if t >= 3:
        z[1, 0, 0] = math.nan
        losses[2] = math.inf
    rows = epoch_rows(4, losses, z, y, 15)
    for i in range(t):
        if t >= 3 and i in (1, 2):
            assert rows[i] is None
        else:
            assert rows[i] == epoch_row(4, losses[i], z[i], y, 15)


def test_finish_trials_equal_finish_experiment():
    from core.ml.experiment import prepare_experiment
    from core.ml.finish import finish_experiment, finish_trials
    from core.ml.train import fit
    from core.spec import JobSpec

    trained = []
    for alpha in (0.0, 0.1, 0.3):
        spec = JobSpec.model_validate({
            "dataset": {"source": "builtin", "name": "digits"},
            "model": {"arch": "mlp", "hidden": [16]}, "loss": {"alpha": alpha},
            "training": {"epochs": 2, "device": "cpu"},
            "calibration": {"posthoc": ["temperature", "vector_scaling", "histogram_binning",
                                        "isotonic"]}}).resolved()
        prep = prepare_experiment(spec)
        torch.manual_seed(prep.cfg.seed)
        model = prep.build()
        trained.append((prep, model, fit(model, prep.Xtr, prep.ytr, prep.Xva, prep.yva,
                                         prep.cfg)))
    together = finish_trials(*map(list, zip(*trained, strict=True)))
    for out, (prep, model, fitted) in zip(together, trained, strict=True):
        alone = finish_experiment(prep, model, fitted)
        same(alone.result, out.result)
        assert alone.artifacts == out.artifacts
