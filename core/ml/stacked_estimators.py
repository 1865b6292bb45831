"""core.ml.estimators for R rows of top-label pairs at once (the trials of a stacked sweep).

`estimators_rows(values, correct, order, n_bins)` gives, per row, what
`estimators.estimators_of` gives for that row alone: the same arithmetic in the same order,
so the same numbers (tests/core/ml/test_stacked_metrics.py compares them). What is shared:

* the smooth-ECE fixed point runs the R bisections side by side (one grid rounding for all
  rows per grid size, kernels cached per (grid, σ)); σ = 1 is not evaluated below 10^7
  examples: |r̂| ≤ d̂ pointwise and the density sum carries + 1e-4 per point, so smECE_1 < 1
  even after float rounding, and relplot's first check is false;
* the bootstrap draws are the same for every row (same n, seed), so the binned ECE of all rows
  and resamples is one sparse product with the cached, transposed draw counts (no per-call
  copy of the (1000, n) matrix); smooth ECE at each row's σ multiplies those counts by that
  row's smoothing map;
* ECE sweep grows the bin count for all rows together; the percentiles are one call.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any

import numpy as np
from scipy.signal import fftconvolve
from scipy.sparse import csr_matrix, diags
from torch import Tensor

from core.ml.estimators import (
    _DENSITY_EPS,
    _DIRECT_CONV_MAX,
    BOOTSTRAP_MAX_EXAMPLES,
    BOOTSTRAP_RESAMPLES,
    BOOTSTRAP_SEED,
    _bootstrap_smece_fft,
    _debiased_l2,
    _grid_size,
    _interpolate,
    _kernel,
    _resamples,
    _round_to_grid,
    _smoothing_columns,
)

__all__ = ["bootstrap_rows", "ece_sweep_rows", "estimators_rows", "smooth_ece_rows"]

_MAX_SKIP_N = 10**7  # below this many examples smECE_1 < 1 holds in float (module docstring)


@lru_cache(maxsize=256)
def _cached_kernel(g: int, sigma: float) -> np.ndarray:
    """The reflected convolution's kernel (read-only, shared)."""
    ker = _kernel(g, sigma)
    ker.flags.writeable = False
    return ker


def _smece_row(res_grid: np.ndarray, ones_grid: np.ndarray, sigma: float) -> float:
    """smECE_σ of one row from its grids: `estimators._smece_from_grids` for one row."""
    g = res_grid.size
    ker = _cached_kernel(g, sigma)
    t = np.linspace(0, 1, max(round(10 / sigma), 200))
    both = np.stack([res_grid, ones_grid])
    ext = np.concatenate([both[:, ::-1][:, :-1], both, both[:, ::-1][:, 1:]], axis=1)
    if g <= _DIRECT_CONV_MAX:  # direct, only the G outputs kept
        conv = np.stack([np.convolve(e[g // 2: g // 2 + 2 * g - 1], ker, "valid") for e in ext])
    else:  # by FFT, one grid at a time as estimators._reflected_conv takes it
        conv = np.concatenate([fftconvolve(e[None, :], ker[None, :], mode="valid", axes=1)
                               [:, g // 2: g // 2 + g] for e in ext])
    r = _interpolate(t, conv[:1])
    d = _interpolate(t, conv[1:]) + _DENSITY_EPS
    return float(np.abs(r).sum(axis=1)[0] / d.sum(axis=1)[0])


class _Rows:
    """smECE_σ of R rows, each at its own σ; grids rounded once per grid size for all rows."""

    def __init__(self, conf: np.ndarray, correct: np.ndarray) -> None:
        self.f, self.r = conf, conf - correct
        self.grids: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def grid(self, g: int) -> tuple[np.ndarray, np.ndarray]:
        """(residual grids, ones grids) of every row at grid size g."""
        if g not in self.grids:
            rows_n, n = self.f.shape
            rows = np.repeat(np.arange(rows_n), n)
            flat = self.f.ravel()
            self.grids[g] = (_round_to_grid(flat, self.r.ravel(), g, rows, rows_n),
                             _round_to_grid(flat, np.ones(flat.size), g, rows, rows_n))
        return self.grids[g]

    def at(self, sigmas: np.ndarray) -> np.ndarray:
        """smECE at sigmas[i] for row i."""
        out = np.empty(sigmas.size)
        for i, sigma in enumerate(sigmas.tolist()):
            res_grid, ones_grid = self.grid(_grid_size(sigma))
            out[i] = _smece_row(res_grid[i], ones_grid[i], sigma)
        return out


def smooth_ece_rows(conf: np.ndarray, correct: np.ndarray, eps: float = 0.001
                    ) -> tuple[np.ndarray, np.ndarray]:
    """(smECE, σ) per row: relplot's search_param(check, start=1, refine=10) for each row."""
    rows = _Rows(conf, correct)
    count = conf.shape[0]
    start, end = np.ones(count), np.zeros(count)
    at_start = np.full(count, np.nan)  # smECE at `start` once start has moved below 1
    if conf.shape[1] >= _MAX_SKIP_N:  # check(1.0) computed: a row where it holds keeps σ = 1
        at_one = rows.at(start)
        end = np.where(at_one > 1.0, 1.0, end)  # every mid then checks true: start stays 1
    for _ in range(10):
        mid = (start + end) / 2
        value = rows.at(mid)
        ok = (mid < eps) | (mid < value)
        end = np.where(ok, mid, end)
        at_start = np.where(ok, at_start, value)
        start = np.where(ok, start, mid)
    unmoved = np.flatnonzero(np.isnan(at_start))
    if unmoved.size:
        sub = _Rows(conf[unmoved], correct[unmoved])
        at_start[unmoved] = sub.at(start[unmoved])
    return at_start, start


def ece_sweep_rows(conf: np.ndarray, correct: np.ndarray, order: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray]:
    """(ECE_sweep, bin count) per row: `estimators._ece_sweep` for every row together."""
    count, n = conf.shape
    if n == 0:
        return np.full(count, math.nan), np.zeros(count, dtype=np.int64)
    zeros = np.zeros((count, 1))
    pc = np.concatenate([zeros, np.cumsum(np.take_along_axis(conf, order, 1), 1)], 1).T.copy()
    pa = np.concatenate([zeros, np.cumsum(np.take_along_axis(correct, order, 1), 1)], 1).T.copy()
    best = np.ones(count, dtype=np.int64)
    live = np.arange(count)
    for b in range(2, n + 1):
        starts = -((-np.arange(b + 1) * n) // b)  # as estimators._equal_mass_stats
        counts = np.diff(starts).astype(np.float64)
        acc_sum = np.diff(pa[starts][:, live], axis=0)
        broke = np.any(np.diff(acc_sum / counts[:, None], axis=0) < 0, axis=0)
        best[live[~broke]] = b
        live = live[~broke]
        if live.size == 0:
            break
    ece = np.empty(count)
    for b in np.unique(best).tolist():
        rows = np.flatnonzero(best == b)
        starts = -((-np.arange(b + 1) * n) // b)
        gap = np.diff(pa[starts][:, rows], axis=0) - np.diff(pc[starts][:, rows], axis=0)
        ece[rows] = np.abs(gap).T.copy().sum(axis=1) / n
    return ece, best


@lru_cache(maxsize=2)
def _counts_t(n_all: int, resamples: int, seed: int, max_examples: int) -> np.ndarray:
    """The transposed (n, R) draw counts of `estimators._resamples`, C-contiguous, shared."""
    counts_t = np.ascontiguousarray(_resamples(n_all, resamples, seed, max_examples)[1].T)
    counts_t.flags.writeable = False
    return counts_t


def _bootstrap_smece_row(f: np.ndarray, res: np.ndarray, counts: np.ndarray,
                         counts_t: np.ndarray, sigma: float) -> np.ndarray:
    """`estimators._bootstrap_smece` for one row, the sparse products from `counts_t`."""
    g = _grid_size(sigma)
    if g > 2 * _grid_size(0.01):
        return _bootstrap_smece_fft(f, res, counts, sigma, g)
    n = f.size
    scaled = f * (g - 1)
    bins = scaled.astype(np.int64).clip(0, g - 2)
    frac = scaled - bins
    used, pos = np.unique(np.concatenate([bins, bins + 1]), return_inverse=True)
    w = csr_matrix((np.concatenate([1 - frac, frac]),
                    (np.tile(np.arange(n), 2), pos)), shape=(n, used.size))
    lmat = _smoothing_columns(g, sigma, used)
    if used.size < n:  # counts @ S computed as (S^T @ counts^T)^T, as scipy does
        r = ((diags(res) @ w).T @ counts_t).T @ lmat.T
        d = (w.T @ counts_t).T @ lmat.sum(axis=0)
    else:
        curves = np.asarray(w @ lmat.T)
        r = counts @ (curves * res[:, None])
        d = counts @ curves.sum(axis=1)
    return np.abs(r).sum(axis=1) / (d + _DENSITY_EPS * lmat.shape[0])


def _percentiles(samples: np.ndarray) -> list[list[float]]:
    """[2.5, 97.5] percentiles of each row."""
    lo, hi = np.percentile(samples, [2.5, 97.5], axis=1)
    return [[float(a), float(b)] for a, b in zip(lo.tolist(), hi.tolist(), strict=True)]


def bootstrap_rows(values: Tensor, conf: np.ndarray, correct: np.ndarray, n_bins: int,
                   sigmas: np.ndarray | None) -> list[dict[str, Any]]:
    """`estimators._bootstrap` of every row (the default resamples, seed and subsample)."""
    count, n_all = conf.shape
    resamples, seed, max_examples = BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED, BOOTSTRAP_MAX_EXAMPLES
    outs: list[dict[str, Any]] = [
        {"ece": None, "smooth_ece": None, "resamples": resamples, "seed": seed, "level": 0.95,
         "n": min(n_all, max_examples)} for _ in range(count)]
    if n_all == 0:
        return outs
    keep, counts = _resamples(n_all, resamples, seed, max_examples)
    counts_t = _counts_t(n_all, resamples, seed, max_examples)
    edges = (np.arange(1, n_bins, dtype=np.float64) / n_bins).astype(values.numpy().dtype)
    sub = values.numpy() if keep.size == n_all else values.numpy()[:, keep]
    bins = np.searchsorted(edges, sub, side="left")  # torch.bucketize(sub, edges)
    f, res = conf[:, keep], conf[:, keep] - correct[:, keep]
    n = keep.size
    cols = (np.arange(count)[:, None] * n_bins + bins).ravel()
    by_bin_t = csr_matrix((res.ravel(), (cols, np.tile(np.arange(n), count))),
                          shape=(count * n_bins, n))
    per_bin = (by_bin_t @ counts_t).reshape(count, n_bins, resamples)
    eces = _percentiles(np.abs(per_bin).sum(axis=1) / n)
    if sigmas is None or n_all > max_examples:
        sigmas = smooth_ece_rows(f, correct[:, keep])[1]
    smooth = np.stack([_bootstrap_smece_row(f[i], res[i], counts, counts_t, float(sigmas[i]))
                       for i in range(count)])
    for out, ece, sm, sigma in zip(outs, eces, _percentiles(smooth), sigmas.tolist(),
                                   strict=True):
        out.update(ece=ece, smooth_ece=sm, smooth_ece_sigma=sigma)
    return outs


def estimators_rows(values: Tensor, correct: np.ndarray, order: np.ndarray, n_bins: int = 15
                    ) -> list[dict[str, Any]]:
    """`estimators.estimators_of` of every row: confidences (R, n) in the probabilities' dtype,
    correctness (R, n) float64 and each row's stable ascending order."""
    conf = values.double().numpy()
    count, n = conf.shape
    if n:
        smooth, sigmas = smooth_ece_rows(conf, correct)
    else:
        smooth, sigmas = np.full(count, math.nan), None
    sweep, sweep_bins = ece_sweep_rows(conf, correct, order)
    ci95 = bootstrap_rows(values, conf, correct, n_bins, sigmas)
    return [{
        "smooth_ece": float(smooth[i]),
        "ece_debiased_l2": _debiased_l2(conf[i], correct[i], conf[i][order[i]], 15),
        "ece_sweep": float(sweep[i]),
        "ece_sweep_bins": int(sweep_bins[i]),
        "ci95": ci95[i],
    } for i in range(count)]
