"""Argument checks of `core.ml.losses`: torchmetrics-style ValueErrors naming what to change."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

PRIOR_TOL = 1e-4


def check_choice(name: str, value: object, choices: tuple[str, ...]) -> str:
    """Raise ValueError unless `value` is one of `choices`."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"Expected argument `{name}` to be one of {choices}, but got {value!r}")
    return value


def check_alpha(alpha: object) -> float:
    """Raise ValueError unless alpha is a real number in [0, 1)."""
    if isinstance(alpha, bool) or not isinstance(alpha, int | float):
        raise ValueError(f"Expected argument `alpha` to be a float in [0, 1), but got {alpha!r}")
    if not 0.0 <= float(alpha) < 1.0:
        raise ValueError(f"Expected argument `alpha` to be in [0, 1), but got {alpha}")
    return float(alpha)


def as_vector(name: str, value: Any) -> Tensor:
    """Convert a tensor or sequence to a finite 1-D float tensor, or raise ValueError."""
    try:
        vec = (value if isinstance(value, Tensor)
               else torch.as_tensor(value, dtype=torch.float64))
    except (TypeError, ValueError, RuntimeError) as err:
        msg = f"Expected argument `{name}` to be a 1-D tensor, but got {value!r}"
        raise ValueError(msg) from err
    if vec.ndim != 1 or not (vec.is_floating_point() or vec.dtype in (torch.int32, torch.int64)):
        raise ValueError(
            f"Expected argument `{name}` to be a 1-D float tensor, but got shape "
            f"{tuple(vec.shape)} and dtype {vec.dtype}"
        )
    vec = vec.detach().double() if vec.dtype != torch.float64 else vec.detach()
    if not bool(torch.isfinite(vec).all()) or bool((vec < 0).any()):
        raise ValueError(f"Expected argument `{name}` to have finite, non-negative entries")
    return vec


def check_prior(prior: Any) -> Tensor:
    """Return the prior as a float64 1-D distribution, or raise ValueError."""
    vec = as_vector("prior", prior)
    total = float(vec.sum())
    if abs(total - 1.0) > PRIOR_TOL:
        raise ValueError(f"Expected argument `prior` to sum to 1, but it sums to {total:.6g}")
    return vec


def check_length(name: str, vec: Tensor | None, k: int) -> None:
    """Raise ValueError unless `vec` (if given) has exactly k entries."""
    if vec is not None and vec.numel() != k:
        raise ValueError(f"Expected argument `{name}` to have {k} entries, but got {vec.numel()}")


def check_prior_use(variant: str, prior: Any) -> None:
    """`prior` is required by, and only accepted with, variant='prior'."""
    if variant == "prior" and prior is None:
        raise ValueError("Expected argument `prior` to be given when `variant` is 'prior'")
    if variant != "prior" and prior is not None:
        raise ValueError(f"Expected argument `prior` to be None for variant {variant!r}")


def check_target(target: Tensor, k: int, ignore_index: int, binary: bool) -> Tensor:
    """Return target as int64 after checking every entry is a class or ignore_index."""
    if not isinstance(target, Tensor):
        raise ValueError(f"Expected argument `target` to be a Tensor, but got {type(target)}")
    if target.is_floating_point():
        if not binary:
            raise ValueError(
                f"Expected argument `target` to hold class indices (integer dtype), but got "
                f"{target.dtype}"
            )
        if not bool((target == target.round()).all()):
            raise ValueError("Expected argument `target` to hold 0/1 labels for variant 'binary'")
    elif target.dtype == torch.bool or target.is_complex():
        raise ValueError(f"Expected argument `target` to have an integer dtype, got {target.dtype}")
    target = target.long()
    if target.numel():
        lo, hi = torch.aminmax(target)
        if int(lo) >= 0 and int(hi) < k:  # the common case in one pass
            return target
    bad = ((target < 0) | (target >= k)) & (target != ignore_index)
    if bool(bad.any()):
        value = int(target[bad][0])
        raise ValueError(
            f"Expected argument `target` to be in [0, {k}) or ignore_index={ignore_index}, "
            f"but got {value}"
        )
    return target


def check_logits(logits: Tensor) -> None:
    """Raise ValueError unless logits is a floating-point tensor."""
    if not isinstance(logits, Tensor) or not logits.is_floating_point():
        raise ValueError(f"Expected argument `logits` to be a float Tensor, but got {logits!r}")


def check_alphas(alphas: Any) -> Tensor:
    """A per-trial alpha vector (T,) float64, each in [0, 1), or raise ValueError."""
    vec = as_vector("alpha", alphas)
    if vec.numel() == 0 or bool((vec >= 1).any()):
        raise ValueError(f"Expected argument `alpha` to hold values in [0, 1), but got "
                         f"{vec.tolist()}")
    return vec
