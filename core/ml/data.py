"""Datasets, seeded stratified splits, standardisation, label noise, views and augmentation.

Data flow: `load_dataset` -> `prepare_data` (split, standardise on train only, label
noise on train only) -> `to_view` per architecture (flat / image / sequence).
The torch-free pieces (metadata, compatibility, upload parsing) live in
`core.ml.upload` and are re-exported here; the API imports `core.ml.upload` only.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from core.ml.arch_compat import arch_incompatibility, compatible_archs, view_of_arch
from core.ml.builtin_datasets import BUILTIN_DATASETS
from core.ml.errors import InvalidDatasetError, SpecError
from core.ml.upload import dataset_sha256, validate_arrays

__all__ = [
    "BUILTIN_DATASETS",
    "InvalidDatasetError",
    "PreparedData",
    "SpecError",
    "add_label_noise",
    "arch_incompatibility",
    "class_names_for",
    "compatible_archs",
    "load_dataset",
    "prepare_data",
    "shift_augment",
    "split_indices",
    "standardize",
    "subsample_train",
    "to_view",
    "view_for_arch",
]

_LOADERS = {
    "digits": "load_digits",
    "iris": "load_iris",
    "wine": "load_wine",
    "breast_cancer": "load_breast_cancer",
}


def _load_builtin(name: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Load a scikit-learn bundled dataset (no network); read-only arrays, loaded once."""
    if name not in _LOADERS:
        raise SpecError(
            f"unknown builtin dataset {name!r}; choose one of {', '.join(sorted(_LOADERS))}"
        )
    X, y, names = _load_builtin_cached(name)
    return X, y, list(names)


@functools.lru_cache(maxsize=len(_LOADERS))
def _load_builtin_cached(name: str) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    # Parsing the bundled CSV costs ~15 ms, and a job needs the set twice (data, class names).
    import sklearn.datasets

    bunch = getattr(sklearn.datasets, _LOADERS[name])()
    X, y = np.asarray(bunch.data), np.asarray(bunch.target)
    X.flags.writeable = False  # shared by every job of this process
    y.flags.writeable = False
    return X, y, tuple(str(c) for c in bunch.target_names)


def _make_synthetic(d: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian-cluster classification data (sklearn make_classification, one cluster per class)."""
    from sklearn.datasets import make_classification

    classes, features = int(d.get("classes", 3)), int(d.get("features", 20))
    samples = int(d.get("samples", 1000))
    if classes < 2 or features < 1:
        raise SpecError("dataset.classes must be >= 2 and dataset.features >= 1")
    if classes > 2**features:
        raise SpecError(
            f"dataset.classes={classes} needs at least {int(np.ceil(np.log2(classes)))} features; "
            f"raise dataset.features"
        )
    if samples < 3 * classes:
        raise SpecError(
            f"dataset.samples={samples} is too small: each of the {classes} classes needs at "
            f"least 3 samples for the 3-way split; use at least {3 * classes}"
        )
    X, y = make_classification(
        n_samples=samples,
        n_features=features,
        n_informative=features,
        n_redundant=0,
        n_repeated=0,
        n_classes=classes,
        n_clusters_per_class=1,
        class_sep=float(d.get("separation", 1.0)),
        random_state=int(d.get("seed", 0)),
    )
    return X, y


def load_dataset(
    spec_dataset: dict[str, Any], *, arrays: tuple[np.ndarray, np.ndarray] | None = None
) -> tuple[np.ndarray, np.ndarray, tuple[int, int] | None]:
    """Return (X float32 (N,F), y int64 (N,) in 0..K-1, image_shape or None) for spec["dataset"].

    builtin: the scikit-learn bundled set (digits has image shape (8, 8)); synthetic:
    make_classification with classes/features/samples/separation(class_sep)/seed;
    upload: `arrays` = (X, y) given by the caller (X of shape (N, H, W) means images).
    """
    source = spec_dataset.get("source", "builtin")
    image_shape: tuple[int, int] | None = None
    if source == "builtin":
        name = str(spec_dataset.get("name", "digits"))
        X, y, _ = _load_builtin(name)
        y = y.copy()  # the cached arrays are shared and read-only; X is converted below
        image_shape = BUILTIN_DATASETS[name].image_shape
    elif source == "synthetic":
        X, y = _make_synthetic(spec_dataset)
    elif source == "upload":
        if arrays is None:
            raise SpecError("dataset.source='upload' needs the uploaded arrays (X, y)")
        X, y = np.asarray(arrays[0]), np.asarray(arrays[1])
        if X.ndim == 3:
            image_shape = (int(X.shape[1]), int(X.shape[2]))
            X = X.reshape(X.shape[0], -1)
        if X.dtype.kind not in "biuf":
            raise InvalidDatasetError(f"features must be numeric, got dtype {X.dtype}")
        if y.dtype.kind not in "iu":
            raise InvalidDatasetError(f"labels must be integer class ids, got dtype {y.dtype}")
    else:
        raise SpecError(f"unknown dataset.source {source!r}; use builtin, synthetic or upload")
    X = np.ascontiguousarray(X, dtype=np.float32)
    y = np.ascontiguousarray(y, dtype=np.int64)
    validate_arrays(
        X,
        y,
        max_rows=X.shape[0] + 1,
        max_columns=X.shape[1] + 1,
        max_classes=int(y.max(initial=0)) + 2,
    )
    return X, y, image_shape


def class_names_for(spec_dataset: dict[str, Any], n_classes: int) -> list[str]:
    """Class names: the builtin's target names, else "0".."K-1" (uploads pass their own)."""
    if spec_dataset.get("source") == "builtin":
        return _load_builtin(str(spec_dataset.get("name", "digits")))[2]
    return [str(k) for k in range(n_classes)]


# --------------------------------------------------------------------------- preparation


def split_indices(
    y: np.ndarray, val: float, test: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Seeded stratified split: per class, round(frac * n_class) rows (at least 1 if frac > 0).

    Returns sorted index arrays (train, val, test), disjoint and covering all rows.
    """
    if not (0.0 <= val < 1.0 and 0.0 <= test < 1.0 and val + test < 1.0):
        raise SpecError(f"split.val={val} and split.test={test} must be >= 0 with val + test < 1")
    rng = np.random.default_rng(seed)
    parts: tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]] = ([], [], [])
    for k in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == k))
        n = len(idx)
        n_test = max(1, round(test * n)) if test > 0 else 0
        n_val = max(1, round(val * n)) if val > 0 else 0
        if n - n_test - n_val < 1:
            raise InvalidDatasetError(
                f"class {int(k)} has only {n} rows: too few for the train/val/test split; "
                f"add rows or lower split.val/split.test"
            )
        parts[2].append(idx[:n_test])
        parts[1].append(idx[n_test : n_test + n_val])
        parts[0].append(idx[n_test + n_val :])
    tr, va, te = (np.sort(np.concatenate(p)).astype(np.int64) for p in parts)
    return tr, va, te


def subsample_train(y_train: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Seeded stratified subsample of the training rows: per class max(1, round(fraction * n_k)).

    Returns sorted positions into `y_train`; fraction 1 keeps every row (the identity).
    """
    if not 0.0 < fraction <= 1.0:
        raise SpecError(f"Expected argument `split.train_fraction` to be in (0, 1], but got "
                        f"{fraction}")
    if fraction == 1.0:
        return np.arange(len(y_train), dtype=np.int64)
    rng = np.random.default_rng([seed, 0x66726163])  # "frac": a stream distinct from the split
    keep = []
    for k in np.unique(y_train):
        idx = np.flatnonzero(y_train == k)
        n_keep = max(1, round(fraction * len(idx)))
        keep.append(rng.choice(idx, size=n_keep, replace=False))
    return np.sort(np.concatenate(keep)).astype(np.int64)


def standardize(
    X_train: np.ndarray, *others: np.ndarray
) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """Fit per-feature mean/std on X_train only (std 0 -> 1); return (mean, std, [scaled])."""
    mean = X_train.mean(axis=0, dtype=np.float64)
    std = X_train.std(axis=0, dtype=np.float64)
    std[std < 1e-12] = 1.0
    scaled = [((a - mean) / std).astype(np.float32) for a in (X_train, *others)]
    return mean.astype(np.float32), std.astype(np.float32), scaled


def add_label_noise(
    y: np.ndarray, fraction: float, n_classes: int, seed: int
) -> tuple[np.ndarray, int]:
    """Give round(fraction * N) seeded random rows a uniformly random class (may equal the old one).

    Returns (noisy copy, number of labels that actually changed).
    """
    if not 0.0 <= fraction <= 1.0:
        raise SpecError(f"label_noise={fraction} must be in [0, 1]")
    y_noisy = y.copy()
    n_noisy = round(fraction * len(y))
    if n_noisy == 0:
        return y_noisy, 0
    rng = np.random.default_rng([seed, 0x6E6F6973])  # "nois": a stream distinct from the split
    rows = rng.choice(len(y), size=n_noisy, replace=False)
    y_noisy[rows] = rng.integers(0, n_classes, size=n_noisy)
    return y_noisy, int((y_noisy != y).sum())


@dataclass
class PreparedData:
    """Split, standardised arrays (flat, float32) with labels; train labels may carry noise."""

    X_train: np.ndarray
    y_train: np.ndarray
    X_val: np.ndarray
    y_val: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    n_classes: int
    image_shape: tuple[int, ...] | None  # (H, W), or (C, H, W) for colour uploads
    mean: np.ndarray
    std: np.ndarray
    y_train_clean: np.ndarray
    label_noise_changed: int
    sha256: str
    val_index: np.ndarray | None = None  # rows of the loaded dataset (predictions.npz)
    test_index: np.ndarray | None = None


def prepare_data(
    X: np.ndarray,
    y: np.ndarray,
    image_shape: tuple[int, int] | None,
    *,
    val: float = 0.15,
    test: float = 0.15,
    split_seed: int = 0,
    label_noise: float = 0.0,
    train_fraction: float = 1.0,
) -> PreparedData:
    """Split (seeded, stratified), subsample train, standardise on (kept) train, label noise.

    Label noise and the train subsample are seeded from the split seed, so every training
    seed and every alpha of a sweep sees the same rows and the same noisy labels.
    """
    n_classes = int(y.max()) + 1
    tr, va, te = split_indices(y, val, test, split_seed)
    tr = tr[subsample_train(y[tr], train_fraction, split_seed)]
    mean, std, (X_tr, X_va, X_te) = standardize(X[tr], X[va], X[te])
    y_noisy, changed = add_label_noise(y[tr], label_noise, n_classes, split_seed)
    return PreparedData(
        X_train=X_tr,
        y_train=y_noisy,
        X_val=X_va,
        y_val=y[va],
        X_test=X_te,
        y_test=y[te],
        n_classes=n_classes,
        image_shape=image_shape,
        mean=mean,
        std=std,
        y_train_clean=y[tr],
        label_noise_changed=changed,
        sha256=dataset_sha256(X, y),
        val_index=np.asarray(va, dtype=np.int64),
        test_index=np.asarray(te, dtype=np.int64),
    )


# --------------------------------------------------------------------------- views, augmentation


def view_for_arch(arch: str) -> str:
    """The input view of an arch: flat (linear, mlp), image (cnn, resnet), sequence (rnn)."""
    return view_of_arch(arch)


def to_view(X: np.ndarray, view: str, image_shape: tuple[int, ...] | None) -> np.ndarray:
    """Reshape flat (N, F) data: flat (N, F), image (N, 1, H, W), sequence (N, H, W) (rows)."""
    if view == "flat":
        return X
    if image_shape is None:
        raise SpecError(f"the {view} view needs image-shaped data (an H x W image per row)")
    h, w = image_shape
    return X.reshape(len(X), 1, h, w) if view == "image" else X.reshape(len(X), h, w)


def shift_augment(
    x: torch.Tensor, image_shape: tuple[int, int], generator: torch.Generator
) -> torch.Tensor:
    """Shift each image by a random -1/0/+1 pixel in each direction (zero fill), seeded.

    Works on any view of image data (flat, image or sequence) and returns the same shape.
    """
    h, w = image_shape
    n = x.shape[0]
    img = x.reshape(n, h, w)
    shifts = torch.randint(-1, 2, (n, 2), generator=generator).to(x.device)
    padded = torch.nn.functional.pad(img, (1, 1, 1, 1))
    rows = torch.arange(h, device=x.device) + 1 - shifts[:, :1]  # (n, h)
    cols = torch.arange(w, device=x.device) + 1 - shifts[:, 1:]  # (n, w)
    batch = torch.arange(n, device=x.device)[:, None, None]
    out = padded[batch, rows[:, :, None], cols[:, None, :]]
    return out.reshape(x.shape)
