"""Test-time perturbations of the clean test split (Ovadia et al. 2019) and their evaluation.

Images are perturbed in raw pixel space (the standardised test rows are mapped back with the
training mean/std, perturbed, and standardised again), so "zero fill" is a zero pixel:

- translate: every image moves `intensity` pixels up, down, left or right (one direction per
  image, seeded), pixels shifted in are 0;
- rotate: by 15 * intensity degrees about the centre, the sign per image seeded (bilinear, 0 fill);
- gaussian_noise: N(0, σ²) per pixel, σ = (0.08, 0.12, 0.18, 0.26, 0.38)[i-1] × the training
  pixel range (ImageNet-C's severities, which are fractions of a [0, 1] range);
- blur: a Gaussian filter of σ = 0.25 * (intensity + 1) pixels (0 beyond the border);
- contrast: each image pulled towards its own mean by the factor (0.4, 0.3, 0.2, 0.1, 0.05)[i-1].

Tabular rows are perturbed in standardised space, where one unit is one training std:

- gaussian_noise: N(0, σ²) per feature with σ = 0.2 * intensity standard deviations;
- feature_dropout: max(1, round(0.1 * intensity * F)) features per row (seeded) set to the training
  mean (0 once standardised).

Intensity 0 is the identity for every perturbation. Each (perturbation, intensity) draws from
its own stream seeded by (evaluation.seed, perturbation, intensity), so results are
deterministic and do not depend on which other shifts a job lists. Every applied
perturbation is echoed with its exact parameters.
"""

from __future__ import annotations

import importlib
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from core.ml import calibration
from core.ml.data import to_view, view_for_arch
from core.ml.errors import SpecError
from core.ml.train import evaluate
from core.spec import IMAGE_SHIFTS, SHIFT_NAMES, TABULAR_SHIFTS

__all__ = [
    "apply_shift",
    "evaluate_shifts",
    "shift_incompatibility",
    "shift_block",
    "shift_metrics",
    "translate",
]

NOISE_FRACTION = (0.08, 0.12, 0.18, 0.26, 0.38)
CONTRAST_FACTOR = (0.4, 0.3, 0.2, 0.1, 0.05)
DIRECTIONS = {"up": (-1, 0), "down": (1, 0), "left": (0, -1), "right": (0, 1)}


def shift_incompatibility(name: str, image_shape: tuple[int, int] | None) -> str | None:
    """Why perturbation `name` does not fit data of this shape (None when it fits)."""
    fits = IMAGE_SHIFTS if image_shape is not None else TABULAR_SHIFTS
    if name in fits:
        return None
    kind = "image" if image_shape is not None else "tabular (non-image)"
    return (f"shift {name!r} does not apply to {kind} data; shifts that fit this dataset: "
            f"{', '.join(fits)}")


def translate(images: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """Move (N, H, W) images dy pixels down and dx pixels right; pixels shifted in are 0."""
    n, h, w = images.shape
    out = np.zeros_like(images)
    if abs(dy) >= h or abs(dx) >= w:
        return out
    src_r = slice(max(0, -dy), h - max(0, dy))
    dst_r = slice(max(0, dy), h - max(0, -dy))
    src_c = slice(max(0, -dx), w - max(0, dx))
    dst_c = slice(max(0, dx), w - max(0, -dx))
    out[:, dst_r, dst_c] = images[:, src_r, src_c]
    return out


def _rng(seed: int, name: str, intensity: int) -> np.random.Generator:
    return np.random.default_rng([seed, SHIFT_NAMES.index(name), intensity])


def _check(name: str, intensity: int, image_shape: tuple[int, int] | None) -> None:
    if name not in SHIFT_NAMES:
        raise SpecError(f"unknown shift {name!r}; choose one of {', '.join(SHIFT_NAMES)}")
    if isinstance(intensity, bool) or not isinstance(intensity, int) or not 0 <= intensity <= 5:
        raise SpecError(f"Expected argument `intensity` to be an integer in 0..5, but got "
                        f"{intensity!r}")
    reason = shift_incompatibility(name, image_shape)
    if reason:
        raise SpecError(reason)


def _image_shift(imgs: np.ndarray, name: str, i: int, rng: np.random.Generator,
                 pixel_range: float) -> tuple[np.ndarray, dict[str, Any]]:
    """Perturb raw (N, H, W) images at intensity i >= 1; return them and what was applied."""
    from scipy import ndimage

    n = len(imgs)
    if name == "translate":
        picks = rng.integers(0, len(DIRECTIONS), size=n)
        out = np.empty_like(imgs)
        counts = {}
        for j, (label, (dy, dx)) in enumerate(DIRECTIONS.items()):
            rows = picks == j
            out[rows] = translate(imgs[rows], dy * i, dx * i)
            counts[label] = int(rows.sum())
        return out, {"pixels": i, "fill": 0.0, "direction_counts": counts}
    if name == "rotate":
        signs = rng.choice([-1, 1], size=n)
        out = np.stack([ndimage.rotate(img, 15.0 * i * s, reshape=False, order=1, mode="constant",
                                       cval=0.0) for img, s in zip(imgs, signs, strict=True)])
        return out.astype(imgs.dtype), {"degrees": 15 * i, "fill": 0.0, "order": "bilinear",
                                        "clockwise": int((signs < 0).sum()),
                                        "counterclockwise": int((signs > 0).sum())}
    if name == "gaussian_noise":
        sigma = NOISE_FRACTION[i - 1] * pixel_range
        out = imgs + rng.normal(0.0, sigma, size=imgs.shape)
        return out.astype(imgs.dtype), {"sigma": sigma, "sigma_fraction_of_range":
                                        NOISE_FRACTION[i - 1], "pixel_range": pixel_range}
    if name == "blur":
        sigma = 0.25 * (i + 1)
        out = np.stack([ndimage.gaussian_filter(img, sigma, mode="constant", cval=0.0)
                        for img in imgs])
        return out.astype(imgs.dtype), {"sigma_pixels": sigma, "border": 0.0}
    factor = CONTRAST_FACTOR[i - 1]  # contrast
    mean = imgs.mean(axis=(1, 2), keepdims=True)
    return ((imgs - mean) * factor + mean).astype(imgs.dtype), {"factor": factor,
                                                               "about": "each image's mean"}


def _tabular_shift(x: np.ndarray, name: str, i: int, rng: np.random.Generator
                   ) -> tuple[np.ndarray, dict[str, Any]]:
    """Perturb standardised (N, F) rows at intensity i >= 1; return them and what was applied."""
    n, f = x.shape
    if name == "gaussian_noise":
        sigma = 0.2 * i
        return (x + rng.normal(0.0, sigma, size=x.shape)).astype(x.dtype), {"sigma_std": sigma}
    fraction = round(0.1 * i, 10)  # feature_dropout
    k = min(f, max(1, round(fraction * f)))
    out = x.copy()
    if k:
        cols = np.argsort(rng.random((n, f)), axis=1)[:, :k]
        np.put_along_axis(out, cols, 0.0, axis=1)
    return out, {"fraction": fraction, "features_per_row": k, "fill": "training mean"}


def apply_shift(x: np.ndarray, name: str, intensity: int, *, image_shape: tuple[int, int] | None,
                seed: int = 0, pixel_range: float = 1.0) -> tuple[np.ndarray, dict[str, Any]]:
    """Perturb flat (N, F) rows (raw pixels for images, standardised for tabular data).

    Returns (perturbed copy, what was applied: name, intensity and the exact parameters).
    """
    _check(name, intensity, image_shape)
    applied: dict[str, Any] = {"name": name, "intensity": intensity, "seed": seed}
    if intensity == 0:
        return x.copy(), applied
    rng = _rng(seed, name, intensity)
    if image_shape is None:
        out, params = _tabular_shift(x, name, intensity, rng)
        return out, {**applied, **params}
    imgs = x.reshape(len(x), *image_shape)
    out, params = _image_shift(imgs, name, intensity, rng, pixel_range)
    return out.reshape(x.shape), {**applied, **params}


def _smooth_ece() -> Any:
    """smooth ECE from core.ml.estimators when that module provides it, else None."""
    try:
        return getattr(importlib.import_module("core.ml.estimators"), "smooth_ece", None)
    except ImportError:
        return None


def shift_metrics(logits: torch.Tensor, labels: torch.Tensor, n_bins: int) -> dict[str, float]:
    """Accuracy, NLL, ECE, smooth ECE (where available) and mean confidence from class logits."""
    logp = F.log_softmax(logits.double(), dim=1)
    probs = logp.exp()
    out = {
        "accuracy": float((logits.argmax(1) == labels).double().mean()),
        "nll": float(F.nll_loss(logp, labels)),
        "ece": float(calibration.expected_calibration_error(probs.float(), labels, n_bins)),
    }
    smooth = _smooth_ece()
    if smooth is not None:
        out["smooth_ece"] = float(smooth(probs.float(), labels))
    out["mean_confidence"] = float(probs.max(1).values.mean())
    return out


def evaluate_shifts(model: torch.nn.Module, prep: Any, *, temperature: float, n_bins: int
                    ) -> dict[str, Any]:
    """The `shift` block: per perturbation and intensity, metrics before and after T-scaling."""
    ev = prep.spec.get("evaluation") or {}
    seed, shifts = int(ev.get("seed", 0)), ev.get("shifts") or []
    data, image_shape = prep.data, prep.image_shape
    view = view_for_arch(prep.mcfg["arch"])
    device = next(model.parameters()).device
    labels = prep.yte
    raw_test = data.X_test * data.std + data.mean if image_shape is not None else data.X_test
    pixel_range = 1.0
    if image_shape is not None:
        raw_train = data.X_train * data.std + data.mean
        pixel_range = float(raw_train.max() - raw_train.min()) or 1.0

    def measure(x_flat: np.ndarray, *, raw: bool = True) -> dict[str, Any]:
        if raw and image_shape is not None:
            x_flat = ((x_flat - data.mean) / data.std).astype(np.float32)
        xt = torch.from_numpy(np.ascontiguousarray(to_view(x_flat, view, image_shape)))
        logits, _, _ = evaluate(model, xt.to(device), labels)
        return {"before": shift_metrics(logits, labels, n_bins),
                "after": shift_metrics(logits / temperature, labels, n_bins)}

    perturbations = []
    for item in shifts:
        rows = []
        for intensity in item.get("intensities") or [1, 2, 3, 4, 5]:
            x, applied = apply_shift(raw_test, item["name"], int(intensity),
                                     image_shape=image_shape, seed=seed, pixel_range=pixel_range)
            rows.append({"intensity": int(intensity), "applied": applied, **measure(x)})
        perturbations.append({"name": item["name"], "intensities": rows})
    return {"seed": seed, "temperature": temperature, "n": int(len(labels)),
            "temperature_fitted_on": "clean validation split",
            "clean": measure(data.X_test, raw=False),
            "perturbations": perturbations}


def shift_block(prep: Any, model: torch.nn.Module, scaled: dict[str, Any] | None,
                val_logits: torch.Tensor, val_labels: torch.Tensor) -> dict[str, Any] | None:
    """The result's `shift` block (T fitted on clean validation), or None without shifts."""
    if not (prep.spec.get("evaluation") or {}).get("shifts"):
        return None
    T = scaled["temperature"] if scaled else float(calibration.fit_temperature(val_logits,
                                                                               val_labels))
    return evaluate_shifts(model, prep, temperature=T, n_bins=prep.cfg.n_bins)
