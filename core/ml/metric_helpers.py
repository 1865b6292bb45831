"""Shared helpers of the calibration metrics: argument checks, bin edges, JSON conversion."""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any

import numpy as np
import torch
from torch import Tensor

SUM_TOL = 1e-3  # absolute tolerance on row sums of the probabilities
NLL_CLAMP = 1e-12  # p_{i,y_i} is clamped from below before the log
CHUNK_ELEMS = 1 << 22  # entries per row chunk for (N, K)-sized temporaries (16 MB f32)
BINNINGS = ("equal_width", "equal_mass")


# --------------------------------------------------------------------------------------------
# argument validation (torchmetrics-style messages, never assert)
# --------------------------------------------------------------------------------------------


def check_n_bins(n_bins: Any) -> int:
    if isinstance(n_bins, bool) or not isinstance(n_bins, int | np.integer) or n_bins < 1:
        raise ValueError(f"Expected argument `n_bins` to be a positive integer, but got {n_bins!r}")
    return int(n_bins)


def check_binning(binning: Any) -> str:
    if binning not in BINNINGS:
        raise ValueError(
            f"Expected argument `binning` to be one of {BINNINGS}, but got {binning!r}"
        )
    return str(binning)


def check_alpha(alpha: Any) -> float | None:
    if alpha is None:
        return None
    if isinstance(alpha, bool) or not isinstance(alpha, int | float | np.floating | np.integer):
        raise ValueError(
            f"Expected argument `alpha` to be a float in [0, 1) or None, but got {alpha!r}"
        )
    if not 0.0 <= float(alpha) < 1.0:
        raise ValueError(f"Expected argument `alpha` to be in [0, 1), but got {alpha}")
    return float(alpha)


def check_tensor(x: Any, name: str) -> Tensor:
    if not isinstance(x, Tensor):
        raise ValueError(
            f"Expected argument `{name}` to be a torch.Tensor, but got {type(x).__name__}"
        )
    return x.detach().cpu()  # metrics are computed on the CPU, outside autograd


def check_labels(labels: Any, n: int, num_classes: int, name: str = "probs") -> Tensor:
    labels = check_tensor(labels, "labels")
    if (
        labels.ndim != 1
        or labels.dtype == torch.bool
        or labels.is_floating_point()
        or labels.is_complex()
    ):
        raise ValueError(
            "Expected argument `labels` to be a 1D integer tensor of shape (N,), but got "
            f"shape {tuple(labels.shape)} and dtype {labels.dtype}"
        )
    if labels.shape[0] != n:
        raise ValueError(
            f"Expected argument `labels` to have shape ({n},) matching `{name}`, but got "
            f"shape {tuple(labels.shape)}"
        )
    if n == 0:
        raise ValueError(f"Expected non-empty input, but got `{name}` with N = 0 samples")
    lo, hi = (int(v) for v in torch.aminmax(labels))
    if lo < 0 or hi >= num_classes:
        raise ValueError(
            f"Expected argument `labels` to be in [0, {num_classes - 1}], "
            f"but got values in [{lo}, {hi}]"
        )
    return labels.long()


def check_matrix(x: Any, name: str) -> Tensor:
    x = check_tensor(x, name)
    if x.ndim != 2:
        raise ValueError(
            f"Expected argument `{name}` to be a 2D tensor of shape (N, K), "
            f"but got shape {tuple(x.shape)}"
        )
    if not x.is_floating_point():
        raise ValueError(
            f"Expected argument `{name}` to be a floating point tensor, but got {x.dtype}"
        )
    if x.shape[1] < 1:
        raise ValueError(
            f"Expected argument `{name}` to have at least one class, but got shape {tuple(x.shape)}"
        )
    return x


def check_inputs(probs: Any, labels: Any) -> tuple[Tensor, Tensor]:
    probs = check_matrix(probs, "probs")
    labels = check_labels(labels, probs.shape[0], probs.shape[1])
    if probs.dtype not in (torch.float32, torch.float64):
        probs = probs.float()  # half precision is binned and summed in float32
    return probs.contiguous(), labels


def check_distribution(p: Tensor) -> None:
    """Raise unless every row of the chunk `p` is a probability distribution (within tolerance)."""
    mn = float(p.min())
    if not mn >= 0.0:  # also catches NaN
        raise ValueError(
            "Expected argument `probs` to contain probabilities (non-negative, no NaN), but got a "
            f"minimum of {mn}"
        )
    worst = float((p.sum(dim=1) - 1.0).abs_().max())
    if not worst <= SUM_TOL:
        raise ValueError(
            f"Expected argument `probs` to have rows summing to 1 (within {SUM_TOL}), "
            f"but got a row off by {worst}"
        )


# --------------------------------------------------------------------------------------------
# binning helpers
# --------------------------------------------------------------------------------------------


@lru_cache(maxsize=64)
def bin_edges(n_bins: int, dtype: torch.dtype) -> Tensor:
    """Bin edges b/M computed by one division in `dtype` (the same operation `bin_index` uses)."""
    return torch.arange(n_bins + 1, dtype=dtype) / n_bins


def bin_index(x: Tensor, n_bins: int) -> Tensor:
    """Equal-width bin (0-based) of each value: e_b < x <= e_{b+1} with e_b = b/M in x's dtype.

    ceil(x*M) - 1 can be off by one next to an edge because x*M is rounded, so the candidate is
    corrected by comparing x with its two edges, computed as idx/M in the same dtype as `bin_edges`.
    All float arithmetic, no gathers.
    """
    idx = torch.ceil(x * n_bins).clamp_(1, n_bins).sub_(1)
    lo = idx / n_bins
    hi = (idx + 1) / n_bins
    idx += (x > hi).to(x.dtype) - (x <= lo).to(x.dtype)
    return idx.clamp_(0, n_bins - 1).long()


def confidence_and_correct(p: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Top-label confidence, [argmax == y] (first maximal index wins) and p_{i,y_i}."""
    conf, pred = p.max(dim=1)  # one reduction; torch returns the first maximal index
    p_true = p.gather(1, y.unsqueeze(1)).squeeze(1)
    return conf, pred == y, p_true


def sorted_order(conf: Tensor) -> Tensor:
    """Stable ascending order of non-negative confidences (radix sort on the IEEE bit patterns)."""
    if conf.dtype == torch.float64:
        keys = conf.contiguous().view(torch.int64)
    else:
        keys = conf.float().contiguous().view(torch.int32)
    # -0.0 has the sign bit set; treat it as 0
    keys = torch.where(keys < 0, torch.zeros_like(keys), keys)
    return torch.argsort(keys, stable=True)


# --------------------------------------------------------------------------------------------
# the accumulator shared by every metric and by CalibrationMetrics
# --------------------------------------------------------------------------------------------




def to_jsonable(x: Any) -> Any:
    """Convert tensors, numpy values and nested containers to JSON-safe Python; NaN/inf -> None."""
    if isinstance(x, Tensor):
        x = x.detach().cpu().tolist()
    elif isinstance(x, np.ndarray):
        x = x.tolist()
    elif isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, bool) or x is None or isinstance(x, str):
        return x
    if isinstance(x, int):
        return int(x)
    if isinstance(x, float):
        return float(x) if math.isfinite(x) else None
    if isinstance(x, dict):
        return {str(k): to_jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple | set | frozenset):
        return [to_jsonable(v) for v in x]
    raise ValueError(f"Expected a JSON-convertible value, but got {type(x).__name__}")
