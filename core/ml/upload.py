"""Torch-free upload parsing and validation, and a dataset's canonical bytes and hash.

The API imports this module (and never torch). Built-in datasets are described in
`core.ml.builtin_datasets`, architecture fit in `core.ml.arch_compat`.
Formats: CSV (header row required), Parquet, NPZ (arrays ``X`` and ``y``, never
pickled objects).
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from typing import Any

import numpy as np

from core.ml.errors import InvalidDatasetError
from core.ml.mapped import DROP_EVERY_BYTES, drop_mapped_pages

__all__ = [
    "ACCEPTED_LAYOUTS",
    "IMAGE_DTYPES",
    "canonical_images",
    "dataset_sha256",
    "parse_upload",
    "to_npz_bytes",
    "validate_arrays",
]

IMAGE_DTYPES = (np.dtype(np.uint8), np.dtype(np.float16), np.dtype(np.float32))
ACCEPTED_LAYOUTS = (
    "X of shape (N, F) (flat features), or images (N, H, W), (N, H, W, C) or (N, C, H, W) "
    "with C in {1, 3}, of dtype uint8, float16 or float32 (float64 is stored as float32)"
)

# Default limits; the API passes its configured ones.
MAX_ROWS = 1_000_000
MAX_COLUMNS = 10_000
MAX_CLASSES = 1_000
MIN_ROWS_PER_CLASS = 3


# --------------------------------------------------------------------------- canonical bytes


def dataset_sha256(X: np.ndarray, y: np.ndarray) -> str:
    """SHA-256 of canonical bytes: JSON header (shapes) + X float32 LE C-order + y int64 LE.

    Image sets ((N, H, W) or (N, C, H, W)) hash X in their stored dtype, which the header
    names, so a uint8 set is never widened to float32 for hashing.
    """
    t = np.ascontiguousarray(y, dtype="<i8")
    h = hashlib.sha256()
    if X.ndim in (3, 4) and X.dtype in IMAGE_DTYPES:
        x = np.ascontiguousarray(X, dtype=X.dtype.newbyteorder("<"))
        h.update(json.dumps({"X": list(x.shape), "dtype": x.dtype.str, "y": list(t.shape)},
                            sort_keys=True).encode())
        flat = x.reshape(len(x), -1) if len(x) else x.reshape(0, 0)
        step = max(1, DROP_EVERY_BYTES // max(1, flat.shape[1] * flat.itemsize))
        for start in range(0, len(flat), step):
            h.update(flat[start:start + step].tobytes())
            drop_mapped_pages(X)  # a mapped X is hashed without keeping its pages
    else:
        h.update(json.dumps({"X": list(X.shape), "y": list(t.shape)}, sort_keys=True).encode())
        for start in range(0, len(X), 4096):  # chunks: a memory-mapped X is never copied whole
            h.update(np.ascontiguousarray(X[start:start + 4096], dtype="<f4").tobytes())
    h.update(t.tobytes())
    return h.hexdigest()


def to_npz_bytes(
    X: np.ndarray, y: np.ndarray, image_shape: tuple[int, int] | list[int] | None = None
) -> bytes:
    """Serialise (X float32, y int64) as a byte-deterministic NPZ (fixed zip timestamps, no pickle).

    With `image_shape` (H, W) X is stored as (N, H, W), so loading it back keeps the image
    shape (load_dataset reads a 3-D X as images).
    """
    X = np.asarray(X)
    if image_shape is not None:
        X = X.reshape(len(X), *(int(d) for d in image_shape))
    keep = X.ndim in (3, 4) and X.dtype in IMAGE_DTYPES  # images keep their stored dtype
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, arr in (
            ("X", np.ascontiguousarray(X, dtype=X.dtype if keep else np.float32)),
            ("y", np.ascontiguousarray(y, dtype=np.int64)),
        ):
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            # images are stored uncompressed: raw pixels barely compress and deflate is slow
            info.compress_type = zipfile.ZIP_STORED if keep else zipfile.ZIP_DEFLATED
            member = io.BytesIO()
            np.lib.format.write_array(member, arr, allow_pickle=False)
            zf.writestr(info, member.getvalue())
    return buf.getvalue()


# --------------------------------------------------------------------------- validation


def _encode_labels(labels: np.ndarray, column: str) -> tuple[np.ndarray, list[str]]:
    """Map raw labels (ints, integral floats, strings, bools) to 0..K-1 and return class names."""
    if labels.dtype.kind in "fc":
        if not np.all(np.isfinite(labels)):
            raise InvalidDatasetError(
                f"label column {column!r} contains missing, NaN or inf values"
            )
        if not np.all(labels == np.round(labels)):
            raise InvalidDatasetError(
                f"label column {column!r} holds non-integer numbers; labels must be class "
                f"names or integer class ids"
            )
        labels = labels.astype(np.int64)
    elif labels.dtype.kind == "O":
        if any(v is None for v in labels):
            raise InvalidDatasetError(f"label column {column!r} has missing values")
        labels = labels.astype(str)
    elif labels.dtype.kind not in "iubU":
        raise InvalidDatasetError(f"label column {column!r} has unsupported type {labels.dtype}")
    classes, y = np.unique(labels, return_inverse=True)
    return y.astype(np.int64).reshape(-1), [str(c) for c in classes]


def validate_arrays(
    X: np.ndarray,
    y: np.ndarray,
    *,
    feature_names: list[str] | None = None,
    max_rows: int = MAX_ROWS,
    max_columns: int = MAX_COLUMNS,
    max_classes: int = MAX_CLASSES,
    min_rows_per_class: int = MIN_ROWS_PER_CLASS,
) -> None:
    """Raise InvalidDatasetError unless X (N, F) / y (N,) int labels 0..K-1 are a usable dataset."""
    if X.ndim != 2:
        raise InvalidDatasetError(
            f"features must be a 2-D table (rows x columns), got shape {X.shape}"
        )
    n, f = X.shape
    if y.shape != (n,):
        raise InvalidDatasetError(
            f"labels must have shape ({n},) to match the features, got {y.shape}"
        )
    if n > max_rows:
        raise InvalidDatasetError(
            f"too many rows: {n} > the limit of {max_rows}; subsample the data"
        )
    if f > max_columns:
        raise InvalidDatasetError(
            f"too many feature columns: {f} > the limit of {max_columns}; reduce the features"
        )
    if f == 0:
        raise InvalidDatasetError("no feature columns: the dataset needs at least one feature")
    bad = np.zeros(f, dtype=bool)
    for start in range(0, n, 4096):  # chunks: no full-size temporary for a big X
        bad |= ~np.isfinite(X[start:start + 4096]).all(axis=0)
    if bad.any():
        j = int(np.flatnonzero(bad)[0])
        name = feature_names[j] if feature_names else f"feature {j}"
        raise InvalidDatasetError(
            f"column {name!r} contains NaN, inf or missing values ({int(bad.sum())} column(s) "
            f"affected); clean or impute them before uploading"
        )
    if y.dtype.kind not in "iu" or (n and int(y.min()) < 0):
        raise InvalidDatasetError("labels must be non-negative integer class ids 0..K-1")
    counts = np.bincount(y, minlength=1) if n else np.zeros(0, dtype=np.int64)
    k = int((counts > 0).sum())
    if k < 2:
        raise InvalidDatasetError(
            f"the labels hold {k} class(es); classification needs at least 2 classes"
        )
    if k > max_classes:
        raise InvalidDatasetError(f"too many classes: {k} > the limit of {max_classes}")
    small = [int(c) for c in np.flatnonzero((counts > 0) & (counts < min_rows_per_class))]
    if small:
        raise InvalidDatasetError(
            f"class(es) {small[:10]} have fewer than {min_rows_per_class} rows; every class needs "
            f"at least {min_rows_per_class} rows for the train/validation/test split"
        )


def _table_to_arrays(table: Any, label_column: str | None) -> tuple[np.ndarray, np.ndarray, dict]:
    """Split a pyarrow Table into numeric features and a label column."""
    import pyarrow as pa

    column = label_column or "label"
    names = list(table.column_names)
    if column not in names:
        raise InvalidDatasetError(
            f"label column {column!r} not found; the columns are {names[:20]}; pass "
            f"label_column naming the column that holds the class"
        )
    feature_names = [c for c in names if c != column]
    cols = []
    for name in feature_names:
        col = table.column(name)
        t = col.type
        if not (
            pa.types.is_integer(t)
            or pa.types.is_floating(t)
            or pa.types.is_boolean(t)
            or pa.types.is_null(t)
        ):
            raise InvalidDatasetError(
                f"column {name!r} is not numeric (type {t}); encode it as numbers or drop it"
            )
        arr = col.to_numpy(zero_copy_only=False)
        if arr.dtype.kind == "O":  # nulls in an integer/bool column come back as objects
            arr = np.array([np.nan if v is None else v for v in arr], dtype=np.float64)
        cols.append(np.asarray(arr, dtype=np.float64))
    n = table.num_rows
    X = np.stack(cols, axis=1) if cols else np.zeros((n, 0))
    raw = table.column(column).to_numpy(zero_copy_only=False)
    y, class_names = _encode_labels(np.asarray(raw), column)
    return (
        X,
        y,
        {"feature_names": feature_names, "class_names": class_names, "label_column": column},
    )


def _read_table(data: bytes, fmt: str, *, max_rows: int, max_columns: int) -> Any:
    """Read CSV or Parquet bytes into a pyarrow Table, refusing one over the row/column limits."""
    import pyarrow as pa

    try:
        if fmt == "csv":
            import pyarrow.csv as pacsv

            table = pacsv.read_csv(io.BytesIO(data))
        else:
            import pyarrow.parquet as pq

            table = pq.read_table(io.BytesIO(data))
    except (pa.ArrowException, OSError, ValueError) as e:
        raise InvalidDatasetError(f"could not parse the {fmt.upper()} file: {e}") from None
    if table.num_rows > max_rows:
        raise InvalidDatasetError(
            f"too many rows: {table.num_rows} > the limit of {max_rows}; subsample the data"
        )
    if table.num_columns - 1 > max_columns:
        raise InvalidDatasetError(
            f"too many feature columns: {table.num_columns - 1} > the limit of {max_columns}"
        )
    return table


def parse_upload(
    data: bytes,
    fmt: str,
    label_column: str | None = None,
    *,
    max_rows: int = MAX_ROWS,
    max_columns: int = MAX_COLUMNS,
    max_classes: int = MAX_CLASSES,
    min_rows_per_class: int = MIN_ROWS_PER_CLASS,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Parse and validate an upload (csv|parquet|npz) into (X float32 (N,F), y int64 (N,), info).

    CSV/Parquet: one column (`label_column`, default "label") holds the class (strings or
    integers, mapped to 0..K-1 in sorted order; the names are kept in info["class_names"]);
    every other column is a numeric feature. NPZ: arrays "X" ((N,F), or (N,H,W) images,
    flattened with info["image_shape"]=(H,W)) and "y"; object (pickled) arrays are refused.
    info: n_rows, n_features, n_classes, class_names, feature_names, image_shape, label_column.
    """
    fmt = fmt.lower().lstrip(".")
    image_shape: tuple[int, ...] | None = None
    if fmt in ("csv", "parquet"):
        table = _read_table(data, fmt, max_rows=max_rows, max_columns=max_columns)
        X, y, info = _table_to_arrays(table, label_column)
    elif fmt == "npz":
        X, y, info, image_shape = _parse_npz(data)
        if image_shape is not None:
            return _validated_images(X, y, info, image_shape, max_rows=max_rows,
                                     max_classes=max_classes,
                                     min_rows_per_class=min_rows_per_class)
    else:
        raise InvalidDatasetError(f"unsupported format {fmt!r}; use csv, parquet or npz")
    with np.errstate(over="ignore"):
        X = X.astype(np.float32)  # values beyond float32 range become inf and are refused below
    validate_arrays(
        X,
        y,
        feature_names=info.get("feature_names"),
        max_rows=max_rows,
        max_columns=max_columns,
        max_classes=max_classes,
        min_rows_per_class=min_rows_per_class,
    )
    info.update(
        n_rows=int(X.shape[0]),
        n_features=int(X.shape[1]),
        n_classes=len(info["class_names"]),
        image_shape=list(image_shape) if image_shape else None,
    )
    return X, y, info


def _parse_npz(data: bytes) -> tuple[np.ndarray, np.ndarray, dict, tuple[int, ...] | None]:
    """Read arrays X and y from NPZ bytes without ever unpickling."""
    try:
        npz = np.load(io.BytesIO(data), allow_pickle=False)
    except Exception as e:  # not a zip / not an npz
        raise InvalidDatasetError(f"could not read the NPZ file: {e}") from None
    with npz:
        missing = [k for k in ("X", "y") if k not in npz.files]
        if missing:
            raise InvalidDatasetError(
                f"NPZ is missing array(s) {missing}; it must hold 'X' (features) and 'y' (labels), "
                f"found {npz.files}"
            )
        try:
            X = npz["X"]
            raw_y = npz["y"]
        except ValueError as e:
            raise InvalidDatasetError(
                f"NPZ holds a pickled object array ({e}); pickle is refused, save plain numeric "
                f"arrays (np.savez with numeric X and numeric or string y)"
            ) from None
    if X.dtype.kind not in "biuf":
        raise InvalidDatasetError(f"array 'X' is not numeric (dtype {X.dtype}); save it as floats")
    image_shape: tuple[int, ...] | None = None
    if X.ndim in (3, 4):
        X, image_shape, layout = canonical_images(X)
    elif X.ndim != 2:
        raise InvalidDatasetError(f"array 'X' has shape {X.shape}; accepted: {ACCEPTED_LAYOUTS}")
    else:
        layout = "NF"
    if raw_y.ndim != 1 or raw_y.shape[0] != X.shape[0]:
        raise InvalidDatasetError(
            f"array 'y' must have shape ({X.shape[0]},) to match 'X', got {raw_y.shape}"
        )
    y, class_names = _encode_labels(raw_y, "y")
    n_features = int(np.prod(X.shape[1:]))
    names = [f"x{j}" for j in range(n_features)] if image_shape is None else []
    info = {"feature_names": names, "class_names": class_names, "label_column": "y",
            "layout": layout, "dtype": str(X.dtype)}
    return X, y, info, image_shape


def canonical_images(X: np.ndarray) -> tuple[np.ndarray, tuple[int, ...], str]:
    """(stored array, image_shape, uploaded layout) of an image upload; 422 for other layouts.

    Stored: (N, H, W) for one channel (image_shape (H, W)), (N, 3, H, W) for colour
    (image_shape (3, H, W)); uint8/float16/float32 kept, float64 narrowed to float32.
    A 4-D X whose last axis is 1 or 3 is channels-last (N, H, W, C), else channels-first.
    """
    if X.dtype == np.float64:
        with np.errstate(over="ignore"):
            X = X.astype(np.float32)
    if X.dtype not in IMAGE_DTYPES:
        raise InvalidDatasetError(
            f"image array 'X' has dtype {X.dtype}; accepted: {ACCEPTED_LAYOUTS}")
    if X.ndim == 3:
        return X, (int(X.shape[1]), int(X.shape[2])), "NHW"
    if X.shape[3] in (1, 3):
        layout, X = "NHWC", np.ascontiguousarray(X.transpose(0, 3, 1, 2))
    elif X.shape[1] in (1, 3):
        layout = "NCHW"
    else:
        raise InvalidDatasetError(
            f"array 'X' has shape {X.shape}: no channel axis of size 1 or 3; accepted: "
            f"{ACCEPTED_LAYOUTS}")
    c, h, w = (int(d) for d in X.shape[1:])
    if c == 1:
        return X.reshape(len(X), h, w), (h, w), layout
    return X, (c, h, w), layout


def _validated_images(
    X: np.ndarray, y: np.ndarray, info: dict[str, Any], image_shape: tuple[int, ...], *,
    max_rows: int, max_classes: int, min_rows_per_class: int,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Validate an image upload without widening it (finiteness checked in row chunks)."""
    n = len(X)
    if X.dtype.kind == "f":
        for start in range(0, n, 4096):
            if not np.isfinite(X[start:start + 4096]).all():
                raise InvalidDatasetError(
                    "array 'X' contains NaN or inf values; clean them before uploading")
    n_features = int(np.prod(image_shape))
    validate_arrays(np.zeros((n, 1), dtype=np.float32), y, max_rows=max_rows, max_columns=1,
                    max_classes=max_classes, min_rows_per_class=min_rows_per_class)
    info.update(n_rows=n, n_features=n_features, n_classes=len(info["class_names"]),
                image_shape=list(image_shape))
    return X, y, info
