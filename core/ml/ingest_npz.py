"""NPZ uploads read from disk in bounded memory: headers first, then rows in chunks.

Every member's .npy header (shape, dtype, order) is read and checked against the limits
(rows, columns, decoded bytes, label string width) before any of its data is read. The
data is then read in row chunks from the zip member's stream (stored members directly,
compressed ones decompressed chunk by chunk), so a compressed bomb is never expanded
beyond what its header declared and the limits allow.
"""

from __future__ import annotations

import os
import shutil
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np

from core.ml.errors import InvalidDatasetError
from core.ml.ingest import (
    CHUNK_BYTES,
    MAX_LABEL_CHARS,
    CanonicalWriter,
    Ingested,
    LabelCodes,
    Limits,
    check_labels,
    check_rows_columns,
    long_label,
    nonfinite_columns_error,
    too_many_bytes,
)
from core.ml.upload import ACCEPTED_LAYOUTS, IMAGE_DTYPES

Header = tuple[tuple[int, ...], bool, np.dtype]


def read_header(fp: IO[bytes], key: str) -> Header:
    """(shape, fortran_order, dtype) of a .npy stream, leaving it at the first data byte."""
    try:
        version = np.lib.format.read_magic(fp)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(fp)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(fp)
        else:
            raise InvalidDatasetError(
                f"array {key!r} uses .npy format {version}; save it with numpy.savez "
                f"(format 1.0)"
            )
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        if isinstance(exc, InvalidDatasetError):
            raise
        raise InvalidDatasetError(f"could not read array {key!r} of the NPZ file: {exc}") from None
    return tuple(int(d) for d in shape), bool(fortran), np.dtype(dtype)


def _members(zf: zipfile.ZipFile) -> dict[str, zipfile.ZipInfo]:
    """The archive's arrays by key (np.load's names: the member name without .npy)."""
    return {info.filename.removesuffix(".npy"): info for info in zf.infolist()}


def _headers(zf: zipfile.ZipFile, members: dict[str, zipfile.ZipInfo]) -> dict[str, Header]:
    """The headers of X and y (refusing a missing one and pickled object arrays)."""
    missing = [k for k in ("X", "y") if k not in members]
    if missing:
        raise InvalidDatasetError(
            f"NPZ is missing array(s) {missing}; it must hold 'X' (features) and 'y' (labels), "
            f"found {sorted(members)}"
        )
    headers: dict[str, Header] = {}
    for key in ("X", "y"):
        try:
            with zf.open(members[key]) as fp:
                headers[key] = read_header(fp, key)
        except (zipfile.BadZipFile, OSError, RuntimeError, NotImplementedError) as exc:
            raise InvalidDatasetError(f"could not read array {key!r} of the NPZ file: {exc}") \
                from None
        if headers[key][2].hasobject:
            raise InvalidDatasetError(
                f"array {key!r} of the NPZ holds Python objects, which would need pickle; "
                f"pickle is refused, save plain numeric arrays"
            )
    return headers


def _check_headers(headers: dict[str, Header], limits: Limits) -> None:
    """Rows, columns, label width and decoded bytes, from the headers alone."""
    (x_shape, _, _), (y_shape, _, y_dtype) = headers["X"], headers["y"]
    rows = max([s[0] for s in (x_shape, y_shape) if s] or [0])
    check_rows_columns(rows, x_shape[1] if len(x_shape) == 2 else 0, limits)
    if y_dtype.kind in "US":
        chars = y_dtype.itemsize // (4 if y_dtype.kind == "U" else 1)
        if chars > MAX_LABEL_CHARS:
            raise long_label("y", chars)
    total = 0
    for key, (shape, _, dtype) in headers.items():
        count = int(np.prod(shape, dtype=object)) if shape else 1
        width = max(dtype.itemsize, 4) if key == "X" and len(shape) <= 2 else dtype.itemsize
        total += count * width + (count * 8 if key == "y" else 0)
    if total > limits.max_bytes:
        raise too_many_bytes(total, limits, "NPZ")


def _layout(shape: tuple[int, ...], dtype: np.dtype) -> tuple[str, np.dtype, tuple[int, ...]]:
    """(uploaded layout, stored dtype, stored row shape) of X; 422 for anything else."""
    if dtype.kind not in "biuf":
        raise InvalidDatasetError(f"array 'X' is not numeric (dtype {dtype}); save it as floats")
    if len(shape) == 2:
        return "NF", np.dtype(np.float32), (shape[1],)
    if len(shape) not in (3, 4):
        raise InvalidDatasetError(f"array 'X' has shape {shape}; accepted: {ACCEPTED_LAYOUTS}")
    stored = np.dtype(np.float32) if dtype == np.float64 else dtype.newbyteorder("=")
    if stored not in IMAGE_DTYPES:
        raise InvalidDatasetError(
            f"image array 'X' has dtype {dtype}; accepted: {ACCEPTED_LAYOUTS}")
    if len(shape) == 3:
        return "NHW", stored, shape[1:]
    if shape[3] in (1, 3):
        layout, (h, w, c) = "NHWC", shape[1:]
    elif shape[1] in (1, 3):
        layout, (c, h, w) = "NCHW", shape[1:]
    else:
        raise InvalidDatasetError(
            f"array 'X' has shape {shape}: no channel axis of size 1 or 3; accepted: "
            f"{ACCEPTED_LAYOUTS}")
    return layout, stored, ((h, w) if c == 1 else (c, h, w))


def _read_exact(fp: IO[bytes], n: int, key: str) -> bytes:
    """Exactly n bytes of a member, or a 422 saying the array is truncated."""
    data = fp.read(n)
    if len(data) != n:
        raise InvalidDatasetError(
            f"array {key!r} of the NPZ file is truncated: its header declares more data than "
            f"the file holds"
        )
    return data


def _fortran_chunks(
    fp: IO[bytes], header: Header, workdir: Path, key: str
) -> Iterator[np.ndarray]:
    """Row chunks of a Fortran-ordered array: its data spilled to disk, read back by rows."""
    shape, _, dtype = header
    spill = workdir / f"{key}.fortran"
    with open(spill, "wb") as out:
        shutil.copyfileobj(fp, out, CHUNK_BYTES)
    n, per_row = shape[0], int(np.prod(shape[1:], dtype=np.int64))
    if spill.stat().st_size < n * per_row * dtype.itemsize:
        raise InvalidDatasetError(f"array {key!r} of the NPZ file is truncated")
    step = max(1, CHUNK_BYTES // max(1, per_row * dtype.itemsize))
    fd = os.open(spill, os.O_RDONLY)
    try:
        for start in range(0, n, step):
            rows = min(step, n - start)
            cols = [np.frombuffer(os.pread(fd, rows * dtype.itemsize,
                                           (j * n + start) * dtype.itemsize), dtype=dtype)
                    for j in range(per_row)]
            block = np.stack(cols, axis=1) if cols else np.zeros((rows, 0), dtype)
            yield block.reshape(rows, *shape[1:][::-1]).transpose(0, *range(len(shape) - 1, 0, -1))
    finally:
        os.close(fd)
        spill.unlink()


def row_chunks(
    zf: zipfile.ZipFile, info: zipfile.ZipInfo, key: str, workdir: Path
) -> Iterator[np.ndarray]:
    """The rows of one member, CHUNK_BYTES at a time (CRC checked at the end)."""
    with zf.open(info) as fp:
        header = read_header(fp, key)
        shape, fortran, dtype = header
        if fortran and len(shape) > 1:
            yield from _fortran_chunks(fp, header, workdir, key)
            return
        n = shape[0] if shape else 1
        row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
        step = max(1, CHUNK_BYTES // max(1, row_bytes))
        for start in range(0, n, step):
            rows = min(step, n - start)
            data = _read_exact(fp, rows * row_bytes, key)
            yield np.frombuffer(data, dtype=dtype).reshape(rows, *shape[1:])
        fp.read(1)  # reaching the end checks the member's CRC


def _canonical_rows(block: np.ndarray, layout: str, stored: np.dtype) -> np.ndarray:
    """A chunk of uploaded X rows in the stored layout and dtype."""
    with np.errstate(over="ignore"):
        block = block.astype(stored, copy=False)
    if layout == "NHWC":
        block = block.transpose(0, 3, 1, 2)
    if block.ndim == 4 and block.shape[1] == 1:
        block = block.reshape(len(block), *block.shape[2:])
    return block


def _stream_x(
    zf: zipfile.ZipFile, info: zipfile.ZipInfo, header: Header, writer: CanonicalWriter,
    layout: str, workdir: Path,
) -> None:
    """Copy X into the writer chunk by chunk, refusing NaN/inf (named by column when flat)."""
    bad: np.ndarray | None = None
    for block in row_chunks(zf, info, "X", workdir):
        rows = _canonical_rows(block, layout, writer.dtype)
        if rows.dtype.kind == "f":
            finite = np.isfinite(rows)
            if layout == "NF":
                col_bad = ~finite.all(axis=0)
                bad = col_bad if bad is None else bad | col_bad
            elif not finite.all():
                raise InvalidDatasetError(
                    "array 'X' contains NaN or inf values; clean them before uploading")
        writer.append(rows)
    if bad is not None and bad.any():
        raise nonfinite_columns_error(bad, None)


def _labels(zf: zipfile.ZipFile, info: zipfile.ZipInfo, header: Header, limits: Limits,
            workdir: Path) -> tuple[np.ndarray, list[str]]:
    """Encode y chunk by chunk (its shape and kind checked first)."""
    shape, _, dtype = header
    if dtype.kind not in "fiubU":
        raise InvalidDatasetError(f"label column 'y' has unsupported type {dtype}")
    codes = LabelCodes("y", limits)
    for block in row_chunks(zf, info, "y", workdir):
        codes.add_numpy(block.reshape(-1))
    return codes.finish()


def ingest_npz(path: Path, *, limits: Limits, workdir: Path) -> Ingested:
    """Validate an NPZ (X, y) within `limits` and write its canonical form under `workdir`."""
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise InvalidDatasetError(f"could not read the NPZ file: {exc}") from None
    with zf:
        members = _members(zf)
        headers = _headers(zf, members)
        _check_headers(headers, limits)
        x_shape, _, x_dtype = headers["X"]
        layout, stored, row_shape = _layout(x_shape, x_dtype)
        y_shape = headers["y"][0]
        if len(y_shape) != 1 or y_shape[0] != x_shape[0]:
            raise InvalidDatasetError(
                f"array 'y' must have shape ({x_shape[0]},) to match 'X', got {y_shape}")
        if layout == "NF" and row_shape[0] == 0:
            raise InvalidDatasetError("no feature columns: the dataset needs at least one feature")
        try:
            y, names = _labels(zf, members["y"], headers["y"], limits, workdir)
            check_labels(y, limits)
            writer = CanonicalWriter(workdir, stored, row_shape)
            try:
                _stream_x(zf, members["X"], headers["X"], writer, layout, workdir)
            finally:
                writer.close()
        except (zipfile.BadZipFile, EOFError, OSError, NotImplementedError, RuntimeError) as exc:
            raise InvalidDatasetError(f"could not read the NPZ file: {exc}") from None
    sha = writer.finish(y)
    return Ingested(path=writer.out_path, info=_info(layout, stored, row_shape, y, names),
                    sha256=sha, n_rows=len(y), n_features=int(np.prod(row_shape)))


def _info(layout: str, stored: np.dtype, row_shape: tuple[int, ...], y: np.ndarray,
          names: list[str]) -> dict[str, Any]:
    """The dataset info of an NPZ upload (as the API reports it)."""
    flat = layout == "NF"
    return {
        "class_names": names,
        "class_counts": [int(c) for c in np.bincount(y, minlength=len(names))],
        "image_shape": None if flat else [int(d) for d in row_shape],
        "columns": [f"x{j}" for j in range(row_shape[0])] if flat else [],
        "label_column": "y",
        "layout": layout,
        "dtype": str(stored),
    }
