"""Post-hoc calibrators, fitted on the validation split only (SPEC §5.2).

Each `fit_<method>(val_logits, val_labels)` returns a `Calibrator`: its fitted parameters (or
size) and `probs(logits)`, the calibrated probabilities of any logits.

* ``temperature`` — one T > 0 minimising validation NLL (core.ml.calibration.fit_temperature).
* ``vector_scaling`` — z ↦ w ⊙ z + b (w, b ∈ R^K); ``matrix_scaling`` — z ↦ W z + b. Both
  minimise mean validation NLL + (λ/2)·(‖W − I‖² + ‖b‖²) with λ = L2_PENALTY (regularised
  towards "no change"), by L-BFGS in float64 from the identity.
* ``histogram_binning`` — one-vs-rest: for each class k, HIST_BINS equal-width bins of p_k on
  validation; a probability is replaced by its bin's frequency of [y = k] (an empty bin keeps
  the probability); rows renormalised (an all-zero row becomes uniform).
* ``isotonic`` — one-vs-rest isotonic regression of [y = k] on p_k (pool adjacent violators
  over the distinct p_k, ties averaged; prediction by linear interpolation between the fitted
  points, clipped at the ends: scikit-learn's IsotonicRegression(out_of_bounds="clip")), rows
  renormalised as above.
* ``platt`` — binary tasks only: P(y = 1) = σ(a·(z_1 − z_0) + b), unregularised logistic
  regression on the logit difference (Newton's method).

`posthoc_report` fits the chosen ones and reports each on test, plus a 2-fold cross-fitted
validation score (fit on one half of validation, score on the other) for choosing a
calibrator without touching test data.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import isotonic_regression
from torch import Tensor

from core.ml import calibration

__all__ = [
    "HIST_BINS",
    "L2_PENALTY",
    "POSTHOC_METHODS",
    "Calibrator",
    "fit_calibrator",
    "isotonic_fit",
    "posthoc_report",
]

L2_PENALTY = 1e-3
HIST_BINS = 15
CV_FOLDS = 2
CV_SEED = 0


@dataclass
class Calibrator:
    """A fitted calibrator: parameters (JSON-ready) and the map logits -> probabilities."""

    method: str
    params: dict[str, Any]
    probs: Callable[[Tensor], Tensor] = field(repr=False)


def _check(logits: Any, labels: Any) -> tuple[Tensor, Tensor]:
    if not isinstance(logits, Tensor) or logits.ndim != 2 or logits.shape[1] < 2:
        raise ValueError("Expected argument `logits` to be a 2D tensor with at least 2 "
                         f"classes, but got {getattr(logits, 'shape', type(logits).__name__)}")
    if not isinstance(labels, Tensor) or labels.shape != logits.shape[:1]:
        raise ValueError(f"Expected argument `labels` to have shape ({logits.shape[0]},), "
                         f"but got {getattr(labels, 'shape', labels)!r}")
    if labels.numel() == 0:
        raise ValueError("Expected argument `labels` to hold at least one example, but got 0")
    return logits.detach().double().cpu(), labels.detach().long().cpu()


def _temperature(z: Tensor, y: Tensor) -> Calibrator:
    t = float(calibration.fit_temperature(z, y))
    return Calibrator("temperature", {"temperature": t},
                      lambda x: torch.softmax(x.double() / t, dim=1))


NEWTON_MAX_CLASSES = 100  # vector scaling by Newton up to this many classes (2K parameters)


def _vector_objective(z: np.ndarray, onehot: np.ndarray, theta: np.ndarray
                      ) -> tuple[float, np.ndarray, np.ndarray]:
    """Penalised mean NLL of z ↦ w ⊙ z + b at theta = (w, b), its gradient and Hessian."""
    n, k = z.shape
    w, b = theta[:k], theta[k:]
    u = z * w + b
    u -= u.max(axis=1, keepdims=True)
    e = np.exp(u)
    total = e.sum(axis=1, keepdims=True)
    p = e / total
    loss = float(np.mean(np.log(total[:, 0]) - (u * onehot).sum(axis=1)))
    loss += 0.5 * L2_PENALTY * float(((w - 1.0) ** 2).sum() + (b**2).sum())
    gu = (p - onehot) / n
    grad = np.concatenate([(gu * z).sum(axis=0), gu.sum(axis=0)])
    grad += L2_PENALTY * np.concatenate([w - 1.0, b])
    a = p * z
    hess = np.empty((2 * k, 2 * k))
    hess[:k, :k] = np.diag((a * z).sum(axis=0)) - a.T @ a
    hess[:k, k:] = np.diag(a.sum(axis=0)) - a.T @ p
    hess[k:, :k] = hess[:k, k:].T
    hess[k:, k:] = np.diag(p.sum(axis=0)) - p.T @ p
    hess /= n
    hess[np.diag_indices(2 * k)] += L2_PENALTY
    return loss, grad, hess


def _vector_newton(z: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """(w, b) of vector scaling: damped Newton on the strictly convex penalised NLL.

    Starts from the identity and stops when the largest gradient entry is below 1e-12 (the
    L-BFGS fit of matrix scaling stops at 1e-10), so it is the same optimum.
    """
    zn, k = z.numpy(), z.shape[1]
    onehot = np.eye(k)[y.numpy()]
    theta = np.concatenate([np.ones(k), np.zeros(k)])
    loss, grad, hess = _vector_objective(zn, onehot, theta)
    for _ in range(100):
        if np.abs(grad).max() < 1e-12:
            break
        step = np.linalg.solve(hess, grad)
        scale = 1.0
        while True:  # backtrack until the loss does not increase (full steps near the end)
            cand = theta - scale * step
            new = _vector_objective(zn, onehot, cand)
            if new[0] <= loss or scale < 1e-10:
                break
            scale /= 2
        if np.abs(cand - theta).max() < 1e-15:
            break
        theta, (loss, grad, hess) = cand, new
    return torch.from_numpy(theta[:k].copy()), torch.from_numpy(theta[k:].copy())


def _affine(z: Tensor, y: Tensor, *, full: bool) -> Calibrator:
    """Vector (diagonal) or matrix scaling on the penalised validation NLL.

    Vector scaling with at most NEWTON_MAX_CLASSES classes by Newton's method, otherwise by
    L-BFGS.
    """
    if not full and z.shape[1] <= NEWTON_MAX_CLASSES:
        w_fit, b_fit = _vector_newton(z, y)
        return _affine_calibrator(w_fit, b_fit, full=False)
    k = z.shape[1]
    eye = torch.eye(k, dtype=torch.float64)
    w = (eye.clone() if full else torch.ones(k, dtype=torch.float64)).requires_grad_(True)
    b = torch.zeros(k, dtype=torch.float64, requires_grad=True)

    def transform(x: Tensor, w_: Tensor, b_: Tensor) -> Tensor:
        return (x @ w_.T if full else x * w_) + b_

    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=500, tolerance_grad=1e-10,
                            tolerance_change=1e-14, history_size=20,
                            line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        shift = w - (eye if full else 1.0)
        loss = F.cross_entropy(transform(z, w, b), y) + 0.5 * L2_PENALTY * (
            (shift**2).sum() + (b**2).sum())
        loss.backward()
        return loss

    opt.step(closure)
    return _affine_calibrator(w.detach().clone(), b.detach().clone(), full=full)


def _affine_calibrator(w_fit: Tensor, b_fit: Tensor, *, full: bool) -> Calibrator:
    """The Calibrator of fitted affine parameters."""
    def transform(x: Tensor, w_: Tensor, b_: Tensor) -> Tensor:
        return (x @ w_.T if full else x * w_) + b_

    b_fit = b_fit - b_fit.mean()  # softmax ignores a common shift: report the identifiable part
    name = "matrix_scaling" if full else "vector_scaling"
    params: dict[str, Any] = {"bias": b_fit.tolist(), "l2": L2_PENALTY}
    params["matrix" if full else "scale"] = w_fit.tolist()
    return Calibrator(name, params,
                      lambda x: torch.softmax(transform(x.double(), w_fit, b_fit), dim=1))


def _renormalise(p: np.ndarray) -> np.ndarray:
    total = p.sum(axis=1, keepdims=True)
    uniform = np.full_like(p, 1.0 / p.shape[1])
    return np.where(total > 0, p / np.where(total > 0, total, 1.0), uniform)


def _histogram(z: Tensor, y: Tensor) -> Calibrator:
    p = torch.softmax(z, dim=1).numpy()
    k = p.shape[1]
    onehot = np.eye(k)[y.numpy()]
    edges = np.arange(1, HIST_BINS) / HIST_BINS

    def bin_of(q: np.ndarray) -> np.ndarray:
        return np.searchsorted(edges, q, side="left")  # (lo, hi] bins, 0 in the first

    idx = bin_of(p) + HIST_BINS * np.arange(k)[None, :]
    count = np.bincount(idx.ravel(), minlength=k * HIST_BINS)
    hits = np.bincount(idx.ravel(), weights=onehot.ravel(), minlength=k * HIST_BINS)
    freq = np.where(count > 0, hits / np.maximum(count, 1), np.nan)

    def apply(x: Tensor) -> Tensor:
        q = torch.softmax(x.double(), dim=1).numpy()
        f = freq[bin_of(q) + HIST_BINS * np.arange(k)[None, :]]
        return torch.from_numpy(_renormalise(np.where(np.isnan(f), q, f)))

    return Calibrator("histogram_binning",
                      {"bins": HIST_BINS, "frequencies": np.nan_to_num(
                          freq.reshape(k, HIST_BINS), nan=-1).round(6).tolist()}, apply)


def isotonic_fit(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Non-decreasing least-squares fit of y on x: (distinct x, fitted values) by PAV."""
    ux, inverse = np.unique(x, return_inverse=True)
    weight = np.bincount(inverse).astype(np.float64)
    mean = np.bincount(inverse, weights=y) / weight
    return ux, isotonic_regression(mean, weights=weight, increasing=True).x


def _isotonic(z: Tensor, y: Tensor) -> Calibrator:
    p = torch.softmax(z, dim=1).numpy()
    k = p.shape[1]
    fits = [isotonic_fit(p[:, c], (y.numpy() == c).astype(np.float64)) for c in range(k)]

    def apply(x: Tensor) -> Tensor:
        q = torch.softmax(x.double(), dim=1).numpy()
        out = np.stack([np.interp(q[:, c], *fits[c]) for c in range(k)], axis=1)
        return torch.from_numpy(_renormalise(out))

    return Calibrator("isotonic", {"points_per_class": [int(len(f[0])) for f in fits]}, apply)


def _logistic_nll(s: np.ndarray, t: np.ndarray, a: float, b: float) -> float:
    u = a * s + b
    return float(np.mean(np.logaddexp(0.0, u) - t * u))


def _platt(z: Tensor, y: Tensor) -> Calibrator:
    s = (z[:, 1] - z[:, 0]).numpy()
    t = (y.numpy() == 1).astype(np.float64)
    a, b = 0.0, 0.0
    for _ in range(200):  # Newton on the logistic NLL in (a, b), halving steps that do not help
        p = 0.5 * (1 + np.tanh(0.5 * (a * s + b)))  # a sigmoid that cannot overflow
        grad = np.array([np.dot(p - t, s), np.sum(p - t)])
        w = p * (1 - p)
        hess = np.array([[np.dot(w, s * s), np.dot(w, s)], [np.dot(w, s), w.sum()]])
        step = np.linalg.solve(hess + 1e-12 * np.eye(2), grad)
        current, scale = _logistic_nll(s, t, a, b), 1.0
        while scale > 1e-10 and _logistic_nll(s, t, a - scale * step[0],
                                              b - scale * step[1]) > current:
            scale /= 2
        a, b = a - scale * step[0], b - scale * step[1]
        if np.abs(scale * step).max() < 1e-12:
            break

    def apply(x: Tensor) -> Tensor:
        logit = a * (x[:, 1] - x[:, 0]).double() + b
        p1 = torch.sigmoid(logit)
        return torch.stack([1 - p1, p1], dim=1)

    return Calibrator("platt", {"a": float(a), "b": float(b)}, apply)


_FITTERS: dict[str, Callable[[Tensor, Tensor], Calibrator]] = {
    "temperature": _temperature,
    "vector_scaling": lambda z, y: _affine(z, y, full=False),
    "matrix_scaling": lambda z, y: _affine(z, y, full=True),
    "histogram_binning": _histogram,
    "isotonic": _isotonic,
    "platt": _platt,
}
POSTHOC_METHODS = tuple(_FITTERS)


def fit_calibrator(method: str, val_logits: Tensor, val_labels: Tensor) -> Calibrator:
    """Fit one post-hoc calibrator on validation logits and labels."""
    if method not in _FITTERS:
        raise ValueError(f"Expected argument `method` to be one of {POSTHOC_METHODS}, "
                         f"but got {method!r}")
    z, y = _check(val_logits, val_labels)
    if method == "platt" and z.shape[1] != 2:
        raise ValueError(f"Expected 2 classes for method 'platt', but got {z.shape[1]}")
    return _FITTERS[method](z, y)


def _scores(probs: Tensor, labels: Tensor, n_bins: int) -> dict[str, float]:
    p = probs.double().clamp_min(1e-12)
    return {"nll": float(F.nll_loss(p.log(), labels)),
            "accuracy": float((probs.argmax(1) == labels).double().mean()),
            "ece": float(calibration.expected_calibration_error(probs.float(), labels, n_bins))}


def _cross_fitted(method: str, z: Tensor, y: Tensor, n_bins: int) -> dict[str, float] | None:
    """Validation scores of `method` fitted on one half and applied to the other (2 folds)."""
    n = len(y)
    if n < 4:
        return None
    order = torch.randperm(n, generator=torch.Generator().manual_seed(CV_SEED))
    folds = [order[: n // 2], order[n // 2:]]
    out = torch.empty(n, z.shape[1], dtype=torch.float64)
    for i, held in enumerate(folds):
        fitted = fit_calibrator(method, z[folds[1 - i]], y[folds[1 - i]])
        out[held] = fitted.probs(z[held]).double()
    return _scores(out, y, n_bins)


def posthoc_report(methods: list[str], val_logits: Tensor, val_labels: Tensor,
                   test_logits: Tensor, test_labels: Tensor, *, n_bins: int = 15,
                   alpha: float | None = None) -> dict[str, Any]:
    """The result's `posthoc` block: per method its parameters, test metrics and CV score."""
    z, y = _check(val_logits, val_labels)
    block: dict[str, Any] = {
        "fitted_on": "validation split only",
        "val_cv": f"{CV_FOLDS}-fold cross-fitted on validation (seed {CV_SEED})",
        "baseline_val": _scores(torch.softmax(z, dim=1), y, n_bins),
        "methods": {},
    }
    for method in methods:
        if method == "platt" and z.shape[1] != 2:
            block["methods"][method] = {"skipped": "platt needs a binary task (2 classes)"}
            continue
        fitted = fit_calibrator(method, z, y)
        probs = fitted.probs(test_logits.detach().double().cpu()).float()
        probs = probs / probs.sum(dim=1, keepdim=True)
        block["methods"][method] = {
            "params": fitted.params,
            "test": calibration.calibration_report(probs, test_labels, n_bins, alpha=alpha),
            "val_cv": _cross_fitted(method, z, y, n_bins),
        }
    return block
