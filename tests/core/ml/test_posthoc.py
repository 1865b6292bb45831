"""Post-hoc calibrators (core/ml/posthoc.py): oracles, ECE direction, no use of test data."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression

from core.ml import posthoc
from core.ml.calibration import expected_calibration_error

METHODS = ("temperature", "vector_scaling", "matrix_scaling", "histogram_binning", "isotonic")


def synthetic(n: int, k: int, seed: int, miscal: float):
    """Calibrated logits z (labels drawn from softmax(z)), returned scaled by `miscal`."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, k, generator=g, dtype=torch.float64) * 2.0
    y = torch.multinomial(torch.softmax(z, 1), 1, generator=g).squeeze(1)
    return z * miscal, y


def ece(p, y):
    return expected_calibration_error(p.float(), y)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("miscal", [3.0, 0.3])  # over- and under-confident
def test_calibrator_lowers_test_ece(method, miscal):
    zv, yv = synthetic(3000, 4, 0, miscal)
    zt, yt = synthetic(3000, 4, 1, miscal)
    before = ece(torch.softmax(zt, 1), yt)
    fitted = posthoc.fit_calibrator(method, zv, yv)
    after = ece(fitted.probs(zt), yt)
    assert before > 0.08
    assert after < 0.5 * before


@pytest.mark.parametrize("method", [*METHODS, "platt"])
def test_fit_never_reads_test_labels(method):
    k = 2 if method == "platt" else 4
    zv, yv = synthetic(500, k, 2, 2.0)
    zt, yt = synthetic(400, k, 3, 2.0)
    poisoned = (yt + 1) % k
    a = posthoc.posthoc_report([method], zv, yv, zt, yt)["methods"][method]
    b = posthoc.posthoc_report([method], zv, yv, zt, poisoned)["methods"][method]
    assert a["params"] == b["params"]  # the fit is the same
    assert a["val_cv"] == b["val_cv"]
    assert a["test"]["accuracy"] + b["test"]["accuracy"] <= 1.0 + 1e-9 or k > 2


def test_isotonic_equals_sklearn():
    rng = np.random.default_rng(0)
    x = np.round(rng.random(400), 2)  # ties
    y = (rng.random(400) < x**2).astype(float)
    ux, fit = posthoc.isotonic_fit(x, y)
    ref = IsotonicRegression(out_of_bounds="clip").fit(x, y)
    grid = np.linspace(-0.1, 1.1, 1000)
    assert np.allclose(np.interp(grid, ux, fit), ref.predict(grid), atol=1e-12)


def test_isotonic_calibrator_is_normalised_one_vs_rest_sklearn():
    zv, yv = synthetic(600, 3, 4, 2.5)
    zt, _ = synthetic(200, 3, 5, 2.5)
    pv, pt = torch.softmax(zv, 1).numpy(), torch.softmax(zt, 1).numpy()
    cols = [IsotonicRegression(out_of_bounds="clip").fit(pv[:, c], (yv.numpy() == c) * 1.0)
            .predict(pt[:, c]) for c in range(3)]
    raw = np.stack(cols, 1)
    ref = raw / raw.sum(1, keepdims=True)
    ours = posthoc.fit_calibrator("isotonic", zv, yv).probs(zt).numpy()
    ok = raw.sum(1) > 0
    assert np.allclose(ours[ok], ref[ok], atol=1e-12)


def test_platt_equals_unregularised_sklearn_logistic_regression():
    zv, yv = synthetic(800, 2, 6, 3.0)
    s = (zv[:, 1] - zv[:, 0]).numpy().reshape(-1, 1)
    ref = LogisticRegression(C=1e12, tol=1e-12, max_iter=10000).fit(s, yv.numpy())
    fitted = posthoc.fit_calibrator("platt", zv, yv)
    assert fitted.params["a"] == pytest.approx(ref.coef_[0, 0], rel=1e-5)
    assert fitted.params["b"] == pytest.approx(ref.intercept_[0], abs=1e-5)


@pytest.mark.parametrize("method", ["temperature", "vector_scaling", "matrix_scaling"])
def test_scalers_are_nll_optimal(method):
    zv, yv = synthetic(1500, 3, 7, 2.5)
    fitted = posthoc.fit_calibrator(method, zv, yv)
    best = F.nll_loss(torch.log(fitted.probs(zv)), yv).item()
    g = torch.Generator().manual_seed(0)
    for _ in range(20):  # any nearby affine map of the same family scores no better
        if method == "temperature":
            t = fitted.params["temperature"] * float(1 + 0.02 * torch.randn(1, generator=g))
            nll = F.cross_entropy(zv / t, yv).item()
        else:
            key = "matrix" if method == "matrix_scaling" else "scale"
            w = torch.tensor(fitted.params[key]) + 0.02 * torch.randn(
                *torch.tensor(fitted.params[key]).shape, generator=g, dtype=torch.float64)
            b = torch.tensor(fitted.params["bias"]) + 0.02 * torch.randn(3, generator=g,
                                                                        dtype=torch.float64)
            out = (zv @ w.T if method == "matrix_scaling" else zv * w) + b
            nll = F.cross_entropy(out, yv).item()
        assert nll >= best - 1e-3 * 0.5 * 0.001 - 1e-12  # up to the L2 term's size
    # the scalers contain temperature scaling: at least as good on validation, up to the L2
    t = posthoc.fit_calibrator("temperature", zv, yv)
    assert best <= F.nll_loss(torch.log(t.probs(zv)), yv).item() + 1e-3


def test_errors_and_skips():
    zv, yv = synthetic(100, 3, 8, 1.0)
    with pytest.raises(ValueError, match="Expected 2 classes for method 'platt', but got 3"):
        posthoc.fit_calibrator("platt", zv, yv)
    with pytest.raises(ValueError, match="Expected argument `method` to be one of"):
        posthoc.fit_calibrator("beta", zv, yv)
    block = posthoc.posthoc_report(["platt", "temperature"], zv, yv, zv, yv)
    assert "skipped" in block["methods"]["platt"]
    assert block["methods"]["temperature"]["test"]["n"] == 100
