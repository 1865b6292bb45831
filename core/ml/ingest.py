"""Streaming ingest: an uploaded file on disk becomes the canonical NPZ in bounded memory.

Torch-free (the API imports it). Nothing here reads a whole file into memory: NPZ members
are read in row chunks after their headers were checked (shape x dtype and string widths
against the limits, before any data), CSV and Parquet in row batches. X rows are appended
to a raw temporary file in their canonical dtype; `CanonicalWriter.finish` then writes the
canonical NPZ (X stored uncompressed, so workers can memory-map it) and computes the same
SHA-256 as `core.ml.upload.dataset_sha256` in the same pass.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core.ml.errors import InvalidDatasetError
from core.ml.upload import (
    IMAGE_DTYPES,
    MAX_CLASSES,
    MAX_COLUMNS,
    MAX_ROWS,
    MIN_ROWS_PER_CLASS,
    _encode_labels,
    validate_arrays,
)

__all__ = ["CHUNK_BYTES", "MAX_LABEL_CHARS", "CanonicalWriter", "Ingested", "LabelCodes",
           "Limits", "check_labels", "ingest_file", "nonfinite_columns_error"]

CHUNK_BYTES = 8 << 20  # rows are read, converted and written this many bytes at a time
MAX_LABEL_CHARS = 256  # a class name longer than this is refused (before reading, for NPZ)
_STAMP = (1980, 1, 1, 0, 0, 0)


@dataclass(frozen=True)
class Limits:
    """What an upload may hold (the API passes its configured SOFTLABEL_MAX_DATASET_* values)."""

    max_rows: int = MAX_ROWS
    max_columns: int = MAX_COLUMNS
    max_classes: int = MAX_CLASSES
    max_bytes: int = 4_000_000_000
    min_rows_per_class: int = MIN_ROWS_PER_CLASS


@dataclass(frozen=True)
class Ingested:
    """A validated upload: its canonical NPZ on disk, the dataset info and the content hash."""

    path: Path
    info: dict[str, Any]
    sha256: str
    n_rows: int
    n_features: int


def too_many_bytes(total: int, limits: Limits, what: str) -> InvalidDatasetError:
    """The 422 of an upload whose decoded arrays would exceed SOFTLABEL_MAX_DATASET_BYTES."""
    return InvalidDatasetError(
        f"the {what} declares {total:,} bytes of decoded arrays, above the limit of "
        f"{limits.max_bytes:,} (SOFTLABEL_MAX_DATASET_BYTES); upload fewer rows, a narrower "
        f"dtype (uint8 images) or shorter label strings"
    )


def check_rows_columns(rows: int, columns: int, limits: Limits) -> None:
    """Refuse more rows or feature columns than the limits (from headers or metadata)."""
    if rows > limits.max_rows:
        raise InvalidDatasetError(
            f"too many rows: {rows} > the limit of {limits.max_rows} "
            f"(SOFTLABEL_MAX_DATASET_ROWS); subsample the data"
        )
    if columns > limits.max_columns:
        raise InvalidDatasetError(
            f"too many feature columns: {columns} > the limit of {limits.max_columns} "
            f"(SOFTLABEL_MAX_DATASET_COLUMNS); reduce the features"
        )


def long_label(column: str, chars: int) -> InvalidDatasetError:
    """The 422 of a label (class name) longer than MAX_LABEL_CHARS."""
    return InvalidDatasetError(
        f"label column {column!r} holds strings of up to {chars:,} characters, above the limit "
        f"of {MAX_LABEL_CHARS} characters per class name; use shorter class names or ids"
    )


class LabelCodes:
    """Labels encoded batch by batch: each distinct value kept once, each row a small code."""

    def __init__(self, column: str, limits: Limits) -> None:
        self.column = column
        self._ids: dict[Any, int] = {}
        self._codes: list[np.ndarray] = []
        # past this many distinct values the upload is refused early (the exact count of a
        # smaller excess is reported by check_labels at the end)
        self._hard_cap = max(10 * limits.max_classes, 10_000)
        self._max_classes = limits.max_classes

    def add_values(self, values: list[Any], inverse: np.ndarray) -> None:
        """Add one batch: its distinct `values` and each row's index into them."""
        lut = np.empty(len(values), dtype=np.int32)
        for i, value in enumerate(values):
            if isinstance(value, str | bytes) and len(value) > MAX_LABEL_CHARS:
                raise long_label(self.column, len(value))
            lut[i] = self._ids.setdefault(value, len(self._ids))
        if len(self._ids) > self._hard_cap:
            raise InvalidDatasetError(
                f"too many classes: more than {self._hard_cap} > the limit of "
                f"{self._max_classes} (SOFTLABEL_MAX_DATASET_CLASSES)"
            )
        self._codes.append(lut[np.asarray(inverse, dtype=np.int64).reshape(-1)])

    def add_numpy(self, values: np.ndarray) -> None:
        """Add a batch of labels held in a NumPy array."""
        uniques, inverse = np.unique(values, return_inverse=True)
        self.add_values(uniques.tolist(), inverse)

    def add_arrow(self, array: Any) -> None:
        """Add a batch of labels held in a pyarrow array (dictionary-encoded or not)."""
        import pyarrow as pa
        import pyarrow.compute as pc

        if isinstance(array, pa.ChunkedArray):
            for chunk in array.chunks:
                self.add_arrow(chunk)
            return
        if not pa.types.is_dictionary(array.type):
            array = pc.dictionary_encode(array)
        index = array.indices.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
        used, inverse = np.unique(index, return_inverse=True)
        dictionary = array.dictionary
        values = [None if u < 0 else dictionary[int(u)].as_py() for u in used]
        self.add_values(values, inverse)

    def finish(self) -> tuple[np.ndarray, list[str]]:
        """(y int64 class ids 0..K-1 in sorted class order, class names)."""
        values = list(self._ids)
        raw = np.array(values) if values else np.zeros(0, dtype=np.int64)
        if raw.dtype.kind == "S":
            raw = np.array([v.decode("utf-8", "replace") for v in values])
        mapping, names = _encode_labels(raw, self.column)
        codes = np.concatenate(self._codes) if self._codes else np.zeros(0, dtype=np.int64)
        return mapping[codes].astype(np.int64), names


def nonfinite_columns_error(bad: np.ndarray, names: list[str] | None) -> InvalidDatasetError:
    """The 422 naming the first column with NaN/inf values (as validate_arrays words it)."""
    j = int(np.flatnonzero(bad)[0])
    name = names[j] if names else f"feature {j}"
    return InvalidDatasetError(
        f"column {name!r} contains NaN, inf or missing values ({int(bad.sum())} column(s) "
        f"affected); clean or impute them before uploading"
    )


def check_labels(y: np.ndarray, limits: Limits) -> None:
    """Refuse labels with too few or too many classes, or too few rows per class."""
    validate_arrays(
        np.zeros((len(y), 1), dtype=np.float32), y, max_rows=max(limits.max_rows, len(y)),
        max_columns=1, max_classes=limits.max_classes,
        min_rows_per_class=limits.min_rows_per_class,
    )


def hash_header(shape: tuple[int, ...], dtype: np.dtype) -> bytes:
    """The JSON header dataset_sha256 hashes first (images name their stored dtype)."""
    n = int(shape[0])
    if len(shape) in (3, 4) and dtype in IMAGE_DTYPES:
        doc: dict[str, Any] = {"X": list(shape), "dtype": dtype.newbyteorder("<").str, "y": [n]}
    else:
        doc = {"X": list(shape), "y": [n]}
    return json.dumps(doc, sort_keys=True).encode()


class CanonicalWriter:
    """X rows appended as they are read (raw temp file), then the canonical NPZ and its hash."""

    def __init__(self, workdir: Path, dtype: np.dtype, row_shape: tuple[int, ...]) -> None:
        self.dtype = np.dtype(dtype).newbyteorder("<")
        self.row_shape = tuple(int(d) for d in row_shape)
        self.raw_path = workdir / "x.raw"
        self.out_path = workdir / "canonical.npz"
        self._fp = open(self.raw_path, "wb")  # noqa: SIM115 - closed in finish
        self.rows = 0

    def append(self, rows: np.ndarray) -> None:
        """Append rows (converted to the canonical dtype, C order, little-endian)."""
        block = np.ascontiguousarray(rows, dtype=self.dtype)
        self._fp.write(block.data)
        self.rows += len(block)

    def finish(self, y: np.ndarray) -> str:
        """Write the canonical NPZ (X stored, y deflated); return the dataset_sha256 of it."""
        self._fp.close()
        shape = (self.rows, *self.row_shape)
        hasher = hashlib.sha256(hash_header(shape, self.dtype))
        header = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False,
                  "shape": shape}
        x_info = zipfile.ZipInfo("X.npy", date_time=_STAMP)
        x_info.compress_type = zipfile.ZIP_STORED
        size = self.raw_path.stat().st_size + 65536
        with zipfile.ZipFile(self.out_path, "w", allowZip64=True) as zf:
            with zf.open(x_info, "w", force_zip64=size > 2**31 - 1) as member, \
                    open(self.raw_path, "rb") as raw:
                np.lib.format.write_array_header_1_0(member, header)
                while chunk := raw.read(CHUNK_BYTES):
                    hasher.update(chunk)
                    member.write(chunk)
            labels = np.ascontiguousarray(y, dtype="<i8")
            hasher.update(labels.tobytes())
            y_info = zipfile.ZipInfo("y.npy", date_time=_STAMP)
            y_info.compress_type = zipfile.ZIP_DEFLATED
            with zf.open(y_info, "w", force_zip64=labels.nbytes > 2**30) as member:
                np.lib.format.write_array(member, labels, allow_pickle=False)
        self.raw_path.unlink()
        return hasher.hexdigest()

    def close(self) -> None:
        """Close the raw file (on failure; the caller removes the work directory)."""
        if not self._fp.closed:
            self._fp.close()


def ingest_file(
    path: Path, fmt: str, label_column: str | None, *, limits: Limits, workdir: Path
) -> Ingested:
    """Validate an uploaded file within `limits` and write its canonical NPZ under `workdir`."""
    fmt = fmt.lower().lstrip(".")
    if fmt == "npz":
        from core.ml.ingest_npz import ingest_npz

        return ingest_npz(path, limits=limits, workdir=workdir)
    if fmt in ("csv", "parquet"):
        from core.ml.ingest_table import ingest_table

        return ingest_table(path, fmt, label_column, limits=limits, workdir=workdir)
    raise InvalidDatasetError(f"unsupported format {fmt!r}; use csv, parquet or npz")
