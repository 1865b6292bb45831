"""Uploaded images kept in their stored dtype: split, per-channel statistics, tensor views.

An uploaded image set is stored canonically as (N, H, W) (one channel) or (N, C, H, W), in
the dtype it was uploaded in (uint8 stays uint8). Preparation never converts the whole set
to float: the split copies rows in the stored dtype, the per-channel mean and std come
from the training split only (accumulated in float64 over chunks of rows), and the nets'
`InputNorm` casts and normalises each batch on the training device.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from core.ml.arch_compat import image_dims
from core.ml.data import PreparedData, add_label_noise, split_indices, subsample_train
from core.ml.mapped import gather_rows
from core.ml.upload import dataset_sha256

__all__ = ["channel_stats", "image_view", "is_image_array", "prepare_image_data",
           "stored_layout"]

CHUNK_ROWS = 4096
STATS_CHUNK_BYTES = 16 << 20


def is_image_array(X: np.ndarray) -> bool:
    """True for a stored image set: (N, H, W) or (N, C, H, W)."""
    return X.ndim in (3, 4)


def stored_layout(X: np.ndarray) -> dict[str, Any]:
    """What the result's dataset block says about the stored images (layout, dtype, channels)."""
    return {"layout": "NHW" if X.ndim == 3 else "NCHW", "dtype": str(X.dtype),
            "channels": 1 if X.ndim == 3 else int(X.shape[1])}


def channel_stats(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std (float32, std 0 -> 1) of (N, H, W) or (N, C, H, W) data."""
    x4 = X[:, None] if X.ndim == 3 else X
    c = x4.shape[1]
    total = np.zeros(c)
    squares = np.zeros(c)
    step = max(1, STATS_CHUNK_BYTES // max(1, 8 * int(np.prod(x4.shape[1:]))))
    for start in range(0, len(x4), step):  # float64 temporaries of STATS_CHUNK_BYTES at most
        chunk = x4[start:start + step].astype(np.float64)
        total += chunk.sum(axis=(0, 2, 3))
        squares += np.square(chunk).sum(axis=(0, 2, 3))
    count = max(1, x4.shape[0] * x4.shape[2] * x4.shape[3])
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - mean**2, 0.0))
    std[std < 1e-12] = 1.0
    return mean.astype(np.float32), std.astype(np.float32)


def prepare_image_data(
    X: np.ndarray, y: np.ndarray, *, val: float, test: float, split_seed: int,
    label_noise: float = 0.0, train_fraction: float = 1.0,
) -> PreparedData:
    """The image counterpart of data.prepare_data: same split, subsample, noise; channel stats."""
    y = np.ascontiguousarray(y, dtype=np.int64)
    n_classes = int(y.max()) + 1
    tr, va, te = split_indices(y, val, test, split_seed)
    tr = tr[subsample_train(y[tr], train_fraction, split_seed)]
    X_train = gather_rows(X, tr)  # a mapped upload is read without keeping its pages
    mean, std = channel_stats(X_train)
    y_noisy, changed = add_label_noise(y[tr], label_noise, n_classes, split_seed)
    shape = tuple(int(d) for d in X.shape[1:])
    return PreparedData(
        X_train=X_train, y_train=y_noisy, X_val=gather_rows(X, va), y_val=y[va],
        X_test=gather_rows(X, te), y_test=y[te],
        n_classes=n_classes, image_shape=shape, mean=mean, std=std, y_train_clean=y[tr],
        label_noise_changed=changed, sha256=dataset_sha256(X, y),
        val_index=np.asarray(va, dtype=np.int64), test_index=np.asarray(te, dtype=np.int64),
    )


def image_view(X: np.ndarray, view: str, image_shape: tuple[int, ...]) -> np.ndarray:
    """The arch's view of stored images: image (N,C,H,W), flat (N,C*H*W), sequence (N,H,C*W)."""
    c, h, w = image_dims(image_shape)
    n = len(X)
    if view == "image":
        return X.reshape(n, c, h, w)
    if view == "flat":
        return X.reshape(n, c * h * w)
    if c == 1:
        return X.reshape(n, h, w)
    return np.ascontiguousarray(X.reshape(n, c, h, w).transpose(0, 2, 1, 3)).reshape(n, h, c * w)
