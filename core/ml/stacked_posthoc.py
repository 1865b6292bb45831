"""core.ml.posthoc for the T trials of a stack: validation and test logits (T, N, K), one label
vector each.

`posthoc_reports(...)[t]` is `posthoc.posthoc_report(...)` of trial t. Temperature scaling is
fitted for every trial in one search (`temperature.fit_temperatures`) and vector scaling's
calibrated probabilities are one batched softmax; the other calibrators are fitted per trial
(`posthoc.fit_calibrator`). The test reports of every method and trial are one
`stacked_metrics.calibration_reports` call, the cross-fitted scores one call per method.
A job's finish passes its `temperature_scaled` test reports in: the temperature method is the
same T on the same test logits, so its test block is that report, not a second computation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from core.ml import posthoc
from core.ml.stacked_metrics import calibration_reports, check_stacked, ece_rows
from core.ml.temperature import fit_temperatures

__all__ = ["posthoc_reports", "scores_rows"]


@dataclass
class _Fits:
    """One method fitted for every trial: parameters per trial, logits (T, M, K) -> probs."""

    params: list[dict[str, Any]]
    probs: Callable[[Tensor], Tensor]


def _fit_rows(method: str, z: Tensor, y: Tensor, temperatures: list[float] | None = None
              ) -> _Fits:
    """`posthoc.fit_calibrator(method, z[t], y)` for every trial t of z (T, N, K) float64."""
    if method == "temperature":
        temps = temperatures if temperatures is not None else fit_temperatures(z, y)
        div = torch.tensor(temps, dtype=torch.float64).view(-1, 1, 1)
        return _Fits([{"temperature": t} for t in temps],
                     lambda x: torch.softmax(x.double() / div, dim=2))
    if method == "vector_scaling" and z.shape[2] <= posthoc.NEWTON_MAX_CLASSES:
        fits = [posthoc._affine_calibrator(*posthoc._vector_newton(row, y), full=False)
                for row in z]
        scale = torch.tensor([f.params["scale"] for f in fits], dtype=torch.float64)
        bias = torch.tensor([f.params["bias"] for f in fits], dtype=torch.float64)
        return _Fits([f.params for f in fits], lambda x: torch.softmax(
            x.double() * scale.unsqueeze(1) + bias.unsqueeze(1), dim=2))
    cals = [posthoc.fit_calibrator(method, row, y) for row in z]
    return _Fits([c.params for c in cals], lambda x: torch.stack(
        [c.probs(row) for c, row in zip(cals, x, strict=True)]))


def scores_rows(probs: Tensor, labels: Tensor, n_bins: int) -> list[dict[str, float]]:
    """`posthoc._scores(probs[t], labels, n_bins)` per trial: validation NLL, accuracy, ECE."""
    logp = probs.double().clamp_min(1e-12).log()
    acc = (probs.argmax(2) == labels).double().mean(dim=1).tolist()
    ece = ece_rows(probs.float(), labels, n_bins)
    return [{"nll": float(F.nll_loss(lp, labels)), "accuracy": a, "ece": e}
            for lp, a, e in zip(logp, acc, ece, strict=True)]


def _cross_fitted_rows(method: str, z: Tensor, y: Tensor, n_bins: int
                       ) -> list[dict[str, float] | None]:
    """`posthoc._cross_fitted` per trial: each half fitted on the other, for all trials."""
    t, n, k = z.shape
    if n < 4:
        return [None] * t
    order = torch.randperm(n, generator=torch.Generator().manual_seed(posthoc.CV_SEED))
    folds = [order[: n // 2], order[n // 2:]]
    out = torch.empty(t, n, k, dtype=torch.float64)
    for i, held in enumerate(folds):
        train = folds[1 - i]
        out[:, held] = _fit_rows(method, z[:, train], y[train]).probs(z[:, held]).double()
    return list(scores_rows(out, y, n_bins))


def posthoc_reports(methods: list[str], val_logits: Tensor, val_labels: Tensor,
                    test_logits: Tensor, test_labels: Tensor, *, n_bins: int = 15,
                    alphas: Sequence[float | None] | None = None,
                    temperatures: list[float] | None = None,
                    temperature_tests: list[dict[str, Any]] | None = None
                    ) -> list[dict[str, Any]]:
    """The `posthoc` block of every trial; `temperatures`, if given, are the trials'
    `fit_temperature(val_logits[t], val_labels)` (the temperature method's fits), and
    `temperature_tests` their test reports already computed at those temperatures."""
    z, y = check_stacked(val_logits.detach().double(), val_labels, name="logits")
    x = test_logits.detach().double().cpu()
    t, _, k = z.shape
    if k < 2:
        raise ValueError("Expected argument `logits` to have at least 2 classes, "
                         f"but got shape {tuple(z.shape)}")
    blocks: list[dict[str, Any]] = [{"fitted_on": "validation split only",
                                     "val_cv": f"{posthoc.CV_FOLDS}-fold cross-fitted on "
                                               f"validation (seed {posthoc.CV_SEED})",
                                     "baseline_val": s, "methods": {}}
                                    for s in scores_rows(torch.softmax(z, dim=2), y, n_bins)]
    fitted = [m for m in methods if not (m == "platt" and k != 2)]
    alpha = list(alphas) if alphas is not None else [None] * t
    given = temperature_tests if temperatures is not None else None
    probs, params = [], []
    tests: dict[str, list[dict[str, Any]]] = {}
    for method in fitted:
        fits = _fit_rows(method, z, y, temperatures if method == "temperature" else None)
        params.append(fits.params)
        if method == "temperature" and given is not None:
            tests[method] = given
            continue
        p = fits.probs(x).float()
        probs.append(p / p.sum(dim=2, keepdim=True))
    reports = (calibration_reports(torch.cat(probs), test_labels, n_bins, alphas=alpha * len(probs))
               if probs else [])
    computed = [m for m in fitted if m not in tests]
    tests.update({m: reports[j * t:(j + 1) * t] for j, m in enumerate(computed)})
    for method in methods:
        if method not in fitted:
            for block in blocks:
                block["methods"][method] = {"skipped": "platt needs a binary task (2 classes)"}
            continue
        j = fitted.index(method)
        cv = _cross_fitted_rows(method, z, y, n_bins)
        for i, block in enumerate(blocks):
            block["methods"][method] = {"params": params[j][i], "test": tests[method][i],
                                        "val_cv": cv[i]}
    return blocks
