"""core.ml.estimators for R rows of top-label pairs at once (the trials of a stacked sweep).

`estimators_rows(values, correct, order, n_bins)` gives, per row, what
`estimators.estimators_of` gives for that row alone (tests/core/ml/test_stacked_metrics.py
compares them): the binned estimators and both bootstrap intervals with the same arithmetic
in the same order, so the same numbers; smooth ECE to float rounding (below 1e-13 relative,
the same bandwidth σ), since its convolutions here are FFTs:

* the smooth-ECE fixed point runs the R bisections side by side: per grid size every row's
  grids are rounded and transformed once, and each σ is a product with the kernel's spectrum
  (cached per σ) and one inverse transform for all rows; σ = 1 is not evaluated below 10^7
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
import scipy.fft as sfft
from scipy.sparse import csr_matrix, diags
from torch import Tensor

from core.ml.estimators import (
    _DENSITY_EPS,
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
    grid_weights,
)

__all__ = ["bootstrap_rows", "ece_sweep_rows", "estimators_rows", "smooth_ece_rows"]

_MAX_SKIP_N = 10**7  # below this many examples smECE_1 < 1 holds in float (module docstring)


@lru_cache(maxsize=512)
def _kernel_spectrum(g: int, sigma: float, n_fft: int) -> np.ndarray:
    """The real FFT (length n_fft) of the reflected convolution's kernel at σ (read-only)."""
    spectrum = sfft.rfft(_kernel(g, sigma), n_fft)
    spectrum.flags.writeable = False
    return spectrum


class _Rows:
    """smECE_σ of R rows, each at its own σ, the convolutions by FFT.

    Per grid size the rows' grids are rounded (one bincount) and their reflected extensions
    transformed once; each σ then costs a product with its kernel's spectrum and one inverse
    transform. Entry j of `estimators._reflected_conv` is entry g - 1 + g//2 + j of the full
    linear convolution, which a circular one of length >= 3g - 2 gives unaliased.
    """

    def __init__(self, conf: np.ndarray, correct: np.ndarray) -> None:
        self.f, self.r = conf, conf - correct
        self.spectra: dict[int, tuple[int, np.ndarray]] = {}

    def spectrum(self, g: int) -> tuple[int, np.ndarray]:
        """(FFT length, spectra (2R, F): the residual grids' rows, then the ones grids')."""
        if g not in self.spectra:
            count, n = self.f.shape
            rows = np.repeat(np.arange(count), n)
            flat = self.f.ravel()
            grids = np.concatenate([_round_to_grid(flat, self.r.ravel(), g, rows, count),
                                    _round_to_grid(flat, np.ones(flat.size), g, rows, count)])
            ext = np.concatenate([grids[:, ::-1][:, :-1], grids, grids[:, ::-1][:, 1:]], axis=1)
            n_fft = sfft.next_fast_len(ext.shape[1], real=True)
            self.spectra[g] = (n_fft, sfft.rfft(ext, n_fft, axis=1))
        return self.spectra[g]

    def at(self, sigmas: np.ndarray) -> np.ndarray:
        """smECE at sigmas[i] for row i."""
        count, sig = sigmas.size, sigmas.tolist()
        out = np.empty(count)
        sizes = [_grid_size(s) for s in sig]
        for g in sorted(set(sizes)):
            idx = [i for i in range(count) if sizes[i] == g]
            n_fft, spec = self.spectrum(g)
            kernels = np.stack([_kernel_spectrum(g, sig[i], n_fft) for i in idx])
            start = g - 1 + g // 2
            conv = sfft.irfft(spec[idx + [i + count for i in idx]] * np.tile(kernels, (2, 1)),
                              n_fft, axis=1)[:, start:start + g]
            for j, i in enumerate(idx):
                t = np.linspace(0, 1, max(round(10 / sig[i]), 200))
                r = _interpolate(t, conv[j])
                d = _interpolate(t, conv[j + len(idx)]) + _DENSITY_EPS
                out[i] = np.abs(r).sum() / d.sum()
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


def _smoothing_map(g: int, sigma: float, cols: np.ndarray) -> np.ndarray:
    """`estimators._smoothing_columns(g, sigma, cols)` (sorted distinct cols), entry for entry.

    The same three kernel values per entry, read from a kernel padded with 2g zeros on each
    side, so that no index needs clipping (what fell outside before reads a zero now too).
    """
    padded = np.concatenate([np.zeros(2 * g), _kernel(g, sigma), np.zeros(2 * g)])
    t = np.linspace(0, 1, max(round(10 / sigma), 200))
    inds = (t * (g - 1)).astype(np.int64).clip(0, g - 2)
    residual = ((t - inds * (1 / (g - 1))) / (1 / (g - 1)))[:, None]
    half = g // 2

    def entries(x: np.ndarray) -> np.ndarray:
        diff, total = x - cols, x + cols  # (Tp, U)
        out = padded[diff + (2 * g + half)]
        mirrored = padded[total + (2 * g + half)]
        if cols[0] == 0:
            mirrored[:, 0] = 0.0
        out = out + mirrored
        mirrored = padded[total + (2 + half)]
        if cols[-1] == g - 1:
            mirrored[:, -1] = 0.0
        return out + mirrored

    x = inds[:, None]
    return entries(x) * (1 - residual) + entries(x + 1) * residual


def _bootstrap_smece_row(f: np.ndarray, res: np.ndarray, counts: np.ndarray,
                         counts_t: np.ndarray, sigma: float) -> np.ndarray:
    """`estimators._bootstrap_smece` for one row, the sparse products from `counts_t`."""
    g = _grid_size(sigma)
    if g > 2 * _grid_size(0.01):
        return _bootstrap_smece_fft(f, res, counts, sigma, g)
    n = f.size
    used, w = grid_weights(f, g)
    lmat = _smoothing_map(g, sigma, used)
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
