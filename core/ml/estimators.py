"""Estimators of calibration error beyond binned ECE (SPEC §5.2), on top-label pairs.

With confidence c_i = max_k p_ik and correct_i = [argmax_k p_ik == y_i]:

* ``smooth_ece`` — Błasiok & Nakkiran 2024 as the `relplot` package computes ``smECE``: the
  residuals c − correct and the ones are rounded linearly onto a grid of
  ``max(2000, round(20/σ)) // 2 + 1`` points, convolved with a Gaussian reflected at 0 and 1,
  read at ``max(round(10/σ), 200)`` points t, and smECE_σ = Σ_t |r̂(t)| / Σ_t (d̂(t) + 1e-4);
  σ is found by relplot's bisection (10 halvings from 1) for the fixed point σ = smECE_σ.
* ``ece_debiased_l2`` — Kumar et al. 2019 (`calibration.lower_bound_scaling_ce(p=2,
  debias=True, num_bins=15, mode="top-label")`): equal-mass bins (np.array_split of the sorted
  confidences, edges at midpoints), per bin (conf_b − acc_b)² − acc_b(1 − acc_b)/(n_b − 1)
  (bins of fewer than 2 dropped), weighted by n_b/N, clipped at 0, square root.
* ``ece_sweep`` — Roelofs et al. 2022: equal-mass bins (as ece_adaptive: sorted position i goes
  to bin floor(i·b/N)); b grows from 1 while the bin accuracies stay non-decreasing, and the
  last such b is used for the L1 ECE.
* ``ci95`` — percentile bootstrap over examples (1000 resamples, seed 0, all in one vectorised
  pass) of the equal-width ECE and of smooth ECE (its bandwidth held at the full sample's σ).
  Above BOOTSTRAP_MAX_EXAMPLES examples a seeded subsample of that size is resampled, which
  gives the (wider, conservative) interval of an estimate from that many examples.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any

import numpy as np
import torch
from scipy.signal import fftconvolve
from scipy.sparse import csr_matrix, diags
from torch import Tensor

__all__ = ["BOOTSTRAP_MAX_EXAMPLES", "bootstrap_intervals", "ece_debiased_l2", "ece_sweep",
           "estimator_report", "estimators_of", "smooth_ece", "top_label"]

BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_SEED = 0
BOOTSTRAP_MAX_EXAMPLES = 2000
_FFT_CHUNK_CELLS = 1 << 20  # grid cells of the resamples smoothed at once (8 MB a grid)
_DENSITY_EPS = 1e-4  # relplot's BaseKernelMixin.smooth eps
_DIRECT_CONV_MAX = 4000  # grids above this convolve by FFT (equal to ~1e-12)


def top_label(probs: Tensor, labels: Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(confidence float64, correct float64) numpy arrays of the top-label pairs."""
    if not isinstance(probs, Tensor) or probs.ndim != 2:
        raise ValueError(f"Expected argument `probs` to be a 2D tensor, but got "
                         f"{getattr(probs, 'shape', type(probs).__name__)}")
    if not isinstance(labels, Tensor) or labels.shape != probs.shape[:1]:
        raise ValueError(f"Expected argument `labels` to have shape ({probs.shape[0]},), "
                         f"but got {getattr(labels, 'shape', labels)!r}")
    conf, pred = probs.detach().cpu().max(dim=1)
    correct = (pred == labels.detach().cpu()).double()
    return conf.double().numpy(), correct.numpy()


# ------------------------------------------------------------------------------- smooth ECE


def _grid_size(sigma: float) -> int:
    return max(2000, round(20 / sigma)) // 2 + 1


def _round_to_grid(f: np.ndarray, values: np.ndarray, g: int, rows: np.ndarray | None = None,
                   n_rows: int = 1) -> np.ndarray:
    """relplot.kernels.smooth_round_to_grid, for one row or for `rows` (one per value)."""
    scaled = f * (g - 1)
    bins = scaled.astype(np.int64).clip(0, g - 2)
    frac = scaled - bins
    base = bins if rows is None else rows * g + bins
    out = np.bincount(base, weights=(1 - frac) * values, minlength=n_rows * g)
    out += np.bincount(base + 1, weights=frac * values, minlength=n_rows * g)
    return out.reshape(n_rows, g)


def _kernel(g: int, sigma: float) -> np.ndarray:
    t = np.linspace(0, 1, g)
    return np.exp(-(t - 0.5) * (t - 0.5) / (2 * sigma**2)) / (np.sqrt(2 * np.pi) * sigma)


def _reflected_conv(values: np.ndarray, sigma: float) -> np.ndarray:
    """relplot's ReflectedGaussianKernel.convolve on each row of `values` (rows, G)."""
    g = values.shape[1]
    ker = _kernel(g, sigma)
    ext = np.concatenate([values[:, ::-1][:, :-1], values, values[:, ::-1][:, 1:]], axis=1)
    if g <= _DIRECT_CONV_MAX and len(values) == 1:
        # only the G outputs kept below: each "valid" output is its own dot product, so
        # convolving just the part of ext they read gives the same values at half the cost
        return np.convolve(ext[0, g // 2: g // 2 + 2 * g - 1], ker, "valid")[None, :]
    full = fftconvolve(ext, ker[None, :], mode="valid", axes=1)
    return full[:, g // 2: g // 2 + g]


def _interpolate(t: np.ndarray, y: np.ndarray) -> np.ndarray:
    """relplot.kernels.interpolate along the last axis of y."""
    g = y.shape[-1]
    inds = (t * (g - 1)).astype(np.int64).clip(0, g - 2)
    residual = (t - inds * (1 / (g - 1))) / (1 / (g - 1))
    return y[..., inds] * (1 - residual) + y[..., inds + 1] * residual


def _smece_from_grids(res_grid: np.ndarray, ones_grid: np.ndarray, sigma: float) -> np.ndarray:
    """smECE_σ per row from the grid-rounded residuals and ones."""
    t = np.linspace(0, 1, max(round(10 / sigma), 200))
    r = _interpolate(t, _reflected_conv(res_grid, sigma))
    d = _interpolate(t, _reflected_conv(ones_grid, sigma)) + _DENSITY_EPS
    return np.abs(r).sum(axis=1) / d.sum(axis=1)


def _conv_entries(x: np.ndarray, s: np.ndarray, g: int, ker: np.ndarray) -> np.ndarray:
    """Entries [x, s] of the reflected convolution's (G, G) matrix, broadcast over x and s.

    Row x of the convolution is sum_u ext[x + G//2 + u] * ker[G-1-u], where ext (3G - 2
    long) is the grid reflected at both ends; grid index s sits at ext positions G-1-s
    (s >= 1), G-1+s and 3G-3-s (s <= G-2), so an entry sums at most three kernel values.
    The kernel is read from a zero-padded copy, so a u outside [0, G) contributes 0.
    """
    padded = np.concatenate([np.zeros(g), ker, np.zeros(g)])
    last = padded.size - 1
    base = x + (2 * g - 1 + g // 2)  # padded index of ker[G-1-u] is base - m
    out = padded[np.clip(base - (g - 1 + s), 0, last)]
    out = out + np.where(s >= 1, padded[np.clip(base - (g - 1 - s), 0, last)], 0.0)
    return out + np.where(s <= g - 2, padded[np.clip(base - (3 * g - 3 - s), 0, last)], 0.0)


def _smoothing_columns(g: int, sigma: float, cols: np.ndarray) -> np.ndarray:
    """Columns `cols` of the linear map grid values (G,) -> smoothed values at the t points.

    The map is the reflected convolution read by linear interpolation at the t points, so
    each entry mixes two rows of the convolution matrix (`_conv_entries`).
    """
    ker = _kernel(g, sigma)
    t = np.linspace(0, 1, max(round(10 / sigma), 200))
    inds = (t * (g - 1)).astype(np.int64).clip(0, g - 2)
    residual = ((t - inds * (1 / (g - 1))) / (1 / (g - 1)))[:, None]
    c = cols[None, :]
    return (_conv_entries(inds[:, None], c, g, ker) * (1 - residual)
            + _conv_entries(inds[:, None] + 1, c, g, ker) * residual)


def grid_weights(f: np.ndarray, g: int) -> tuple[np.ndarray, csr_matrix]:
    """The grid points in use and the (n, used) sparse map of each example's two grid weights."""
    n, scaled = f.size, f * (g - 1)
    bins = scaled.astype(np.int64).clip(0, g - 2)
    frac = scaled - bins
    used, pos = np.unique(np.concatenate([bins, bins + 1]), return_inverse=True)
    w = csr_matrix((np.concatenate([1 - frac, frac]),
                    (np.tile(np.arange(n), 2), pos)), shape=(n, used.size))
    return used, w


def _bootstrap_smece(f: np.ndarray, res: np.ndarray, counts: np.ndarray, sigma: float
                     ) -> np.ndarray:
    """smECE at a fixed σ of every resample; `counts` (R, n): how often each example is drawn.

    A resample's grids are linear in its counts (W: example j's two grid entries), and so
    are the smoothed values at the t points (L: the smoothing map's columns at the grid
    points in use), so residual curves are counts @ diag(res) W L^T and density sums
    counts @ W L^T 1, multiplied in whichever order is smaller. Equal to rounding each
    resample onto the grid and smoothing it, up to float rounding.
    """
    g = _grid_size(sigma)
    if g > 2 * _grid_size(0.01):  # a tiny σ: smooth each resample's grids by FFT instead
        return _bootstrap_smece_fft(f, res, counts, sigma, g)
    n = f.size
    used, w = grid_weights(f, g)
    lmat = _smoothing_columns(g, sigma, used)  # (T, U)
    if used.size < n:  # grids per resample first: (R, U) @ (U, T)
        r = (counts @ (diags(res) @ w)) @ lmat.T
        d = (counts @ w) @ lmat.sum(axis=0)
    else:  # each example's smoothed curve first: (R, n) @ (n, T)
        curves = np.asarray(w @ lmat.T)
        r = counts @ (curves * res[:, None])
        d = counts @ curves.sum(axis=1)
    return np.abs(r).sum(axis=1) / (d + _DENSITY_EPS * lmat.shape[0])


def _bootstrap_smece_fft(f: np.ndarray, res: np.ndarray, counts: np.ndarray, sigma: float,
                         g: int) -> np.ndarray:
    """_bootstrap_smece for a grid too fine for the linear map: grids per resample, by FFT,
    in chunks of resamples (a tiny σ's grids, all at once, would be hundreds of MB)."""
    step = max(1, _FFT_CHUNK_CELLS // g)
    return np.concatenate([_smece_fft_rows(f, res, counts[i:i + step], sigma, g)
                           for i in range(0, len(counts), step)])


def _smece_fft_rows(f: np.ndarray, res: np.ndarray, counts: np.ndarray, sigma: float,
                    g: int) -> np.ndarray:
    """smECE at σ of each resample (row of `counts`), rounded onto grids and smoothed by FFT."""
    resamples, n = counts.shape
    rows = np.repeat(np.arange(resamples), n)
    w = counts.ravel()
    ff = np.tile(f, resamples)
    res_grid = _round_to_grid(ff, np.tile(res, resamples) * w, g, rows, resamples)
    ones_grid = _round_to_grid(ff, w.astype(np.float64), g, rows, resamples)
    return _smece_from_grids(res_grid, ones_grid, sigma)


class _SmoothECE:
    """smECE_σ of one sample for any σ, reusing the grid rounding per grid size."""

    def __init__(self, conf: np.ndarray, correct: np.ndarray) -> None:
        self.f, self.r = conf, conf - correct
        self.grids: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self.values: dict[float, float] = {}

    def at(self, sigma: float) -> float:
        """smECE_σ (each σ computed once)."""
        if sigma in self.values:
            return self.values[sigma]
        g = _grid_size(sigma)
        if g not in self.grids:
            self.grids[g] = (_round_to_grid(self.f, self.r, g),
                             _round_to_grid(self.f, np.ones_like(self.f), g))
        value = self.values[sigma] = float(_smece_from_grids(*self.grids[g], sigma)[0])
        return value

    def fixed_point(self, eps: float = 0.001) -> tuple[float, float]:
        """(smECE, σ) with relplot's search_param(check, start=1, refine=10)."""
        def check(sigma: float) -> bool:
            return sigma < eps or sigma < self.at(sigma)

        if check(1.0):
            return self.at(1.0), 1.0
        start, end = 1.0, 0.0
        for _ in range(10):
            mid = (start + end) / 2
            if check(mid):
                end = mid
            else:
                start = mid
        return self.at(start), start


def smooth_ece(probs: Tensor, labels: Tensor) -> float:
    """Smooth ECE (relplot.smECE) of the top-label (confidence, correct) pairs."""
    conf, correct = top_label(probs, labels)
    if conf.size == 0:
        return math.nan
    return _SmoothECE(conf, correct).fixed_point()[0]


# ------------------------------------------------------------------------------- binned


def ece_debiased_l2(probs: Tensor, labels: Tensor, n_bins: int = 15) -> float:
    """Kumar et al.'s debiased top-label L2 calibration error over equal-mass bins."""
    conf, correct = top_label(probs, labels)
    return _debiased_l2(conf, correct, np.sort(conf), n_bins)


def _debiased_l2(conf: np.ndarray, correct: np.ndarray, s: np.ndarray, n_bins: int) -> float:
    """ece_debiased_l2 from the pairs and the sorted confidences `s`."""
    n = conf.size
    if n == 0:
        return math.nan
    m = min(int(n_bins), n)
    sizes = np.full(m, n // m) + (np.arange(m) < n % m)
    ends = np.cumsum(sizes)[:-1]
    edges = np.unique(np.append((s[ends - 1] + s[ends]) / 2.0, 1.0))
    idx = np.searchsorted(edges, conf, side="left")
    count = np.bincount(idx, minlength=len(edges)).astype(np.float64)
    conf_sum = np.bincount(idx, weights=conf, minlength=len(edges))
    acc_sum = np.bincount(idx, weights=correct, minlength=len(edges))
    ok = count >= 2
    c, mean_conf, mean_acc = count[ok], conf_sum[ok] / count[ok], acc_sum[ok] / count[ok]
    terms = (mean_conf - mean_acc) ** 2 - mean_acc * (1 - mean_acc) / (c - 1)
    return float(max(float(np.dot(c / n, terms)), 0.0) ** 0.5)


def _equal_mass_stats(prefix_conf: np.ndarray, prefix_acc: np.ndarray, n: int, b: int
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Counts, confidence sums and accuracy sums of b equal-mass bins (sorted positions)."""
    starts = -((-np.arange(b + 1) * n) // b)  # ceil(j * n / b): first position of bin j
    counts = np.diff(starts).astype(np.float64)
    return counts, np.diff(prefix_conf[starts]), np.diff(prefix_acc[starts])


def ece_sweep(probs: Tensor, labels: Tensor) -> tuple[float, int]:
    """(ECE_sweep, its bin count): the most equal-mass bins with monotone accuracies."""
    conf, correct = top_label(probs, labels)
    return _ece_sweep(conf, correct, np.argsort(conf, kind="stable"))


def _ece_sweep(conf: np.ndarray, correct: np.ndarray, order: np.ndarray) -> tuple[float, int]:
    """ece_sweep from the pairs and their stable sort order."""
    n = conf.size
    if n == 0:
        return math.nan, 0
    prefix_conf = np.concatenate([[0.0], np.cumsum(conf[order])])
    prefix_acc = np.concatenate([[0.0], np.cumsum(correct[order])])
    best = 1
    for b in range(2, n + 1):
        counts, _, acc_sum = _equal_mass_stats(prefix_conf, prefix_acc, n, b)
        if np.any(np.diff(acc_sum / counts) < 0):
            break
        best = b
    counts, conf_sum, acc_sum = _equal_mass_stats(prefix_conf, prefix_acc, n, best)
    return float(np.abs(acc_sum - conf_sum).sum() / n), best


# ------------------------------------------------------------------------------- bootstrap


def _percentiles(samples: np.ndarray) -> list[float]:
    lo, hi = np.percentile(samples, [2.5, 97.5])
    return [float(lo), float(hi)]


def bootstrap_intervals(probs: Tensor, labels: Tensor, n_bins: int = 15, *,
                        resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED,
                        max_examples: int = BOOTSTRAP_MAX_EXAMPLES) -> dict[str, Any]:
    """Percentile 95 % intervals of ECE and smooth ECE from resampling examples."""
    conf32 = probs.detach().cpu().max(dim=1).values
    conf, correct = top_label(probs, labels)
    return _bootstrap(conf32, conf, correct, n_bins, resamples, seed, max_examples)


@lru_cache(maxsize=2)  # at most 2 x 16 MB (n = 2000): a job or sweep reuses one
def _resamples(n_all: int, resamples: int, seed: int, max_examples: int
               ) -> tuple[np.ndarray, np.ndarray]:
    """The kept examples and the (R, n) draw counts of each: the same for every call with
    these sizes, so every test block of a job (and of every trial) resamples alike."""
    rng = np.random.default_rng(seed)
    keep = np.sort(rng.permutation(n_all)[:max_examples]) if n_all > max_examples \
        else np.arange(n_all)
    n = keep.size
    idx = rng.integers(0, n, size=(resamples, n))
    rows = np.repeat(np.arange(resamples), n)
    counts = np.bincount(rows * n + idx.ravel(), minlength=resamples * n)
    counts = counts.reshape(resamples, n).astype(np.float64)
    keep.flags.writeable = counts.flags.writeable = False  # shared between calls
    return keep, counts


def _bootstrap(conf32: Tensor, conf: np.ndarray, correct: np.ndarray, n_bins: int,
               resamples: int, seed: int, max_examples: int, sigma: float | None = None
               ) -> dict[str, Any]:
    """bootstrap_intervals from the confidences (probs dtype and float64) and correctness.

    `sigma`, the full sample's smooth-ECE bandwidth, is used as given when no subsample is
    drawn (it is the same fixed point); otherwise it is searched on the subsample.
    """
    n_all = conf.size
    out: dict[str, Any] = {"ece": None, "smooth_ece": None, "resamples": resamples,
                           "seed": seed, "level": 0.95, "n": min(n_all, max_examples)}
    if n_all == 0:
        return out
    keep, counts = _resamples(n_all, resamples, seed, max_examples)
    edges = (torch.arange(1, n_bins, dtype=torch.float64) / n_bins).to(conf32.dtype)
    sub = conf32 if keep.size == n_all else conf32[torch.from_numpy(keep.copy())]
    bins = torch.bucketize(sub, edges).numpy()
    f, res = conf[keep], conf[keep] - correct[keep]
    n = keep.size
    by_bin = csr_matrix((res, (np.arange(n), bins)), shape=(n, n_bins))
    out["ece"] = _percentiles(np.abs(counts @ by_bin).sum(axis=1) / n)
    if sigma is None or n_all > max_examples:
        sigma = _SmoothECE(f, correct[keep]).fixed_point()[1]
    out["smooth_ece"] = _percentiles(_bootstrap_smece(f, res, counts, sigma))
    out["smooth_ece_sigma"] = sigma
    return out


def estimator_report(probs: Tensor, labels: Tensor, n_bins: int = 15) -> dict[str, Any]:
    """The estimators' entries of a test block: smooth_ece, ece_debiased_l2, ece_sweep, ci95."""
    if not isinstance(probs, Tensor) or probs.ndim != 2:
        top_label(probs, labels)  # raises the argument error
    values, pred = probs.detach().cpu().max(dim=1)  # one pass over (N, K)
    if not isinstance(labels, Tensor) or labels.shape != probs.shape[:1]:
        top_label(probs, labels)
    correct = (pred == labels.detach().cpu()).double().numpy()
    return estimators_of(values, correct, None, n_bins)


def estimators_of(values: Tensor, correct: np.ndarray, order: np.ndarray | None,
                  n_bins: int = 15) -> dict[str, Any]:
    """estimator_report from the top-label confidences (in the probabilities' dtype), the
    correctness (float64) and, if known, the confidences' stable ascending order."""
    conf = values.double().numpy()
    if order is None:
        order = np.argsort(conf, kind="stable")
    smooth, sigma = _SmoothECE(conf, correct).fixed_point() if conf.size else (math.nan, None)
    sweep, sweep_bins = _ece_sweep(conf, correct, order)
    return {
        "smooth_ece": smooth,
        "ece_debiased_l2": _debiased_l2(conf, correct, conf[order], 15),
        "ece_sweep": sweep,
        "ece_sweep_bins": sweep_bins,
        "ci95": _bootstrap(values, conf, correct, n_bins, BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED,
                           BOOTSTRAP_MAX_EXAMPLES, sigma),
    }
