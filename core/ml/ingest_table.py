"""CSV and Parquet uploads read from disk in row batches (never a whole table in memory).

The schema (and for Parquet the footer: rows, columns, decoded sizes) is checked before
any row is read; feature columns are converted to float32 batch by batch into the
canonical writer, the label column is dictionary-encoded batch by batch (a Parquet string
label is read as a dictionary, so long repeated strings are never expanded per row).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from core.ml.errors import InvalidDatasetError
from core.ml.ingest import (
    CHUNK_BYTES,
    CanonicalWriter,
    Ingested,
    LabelCodes,
    Limits,
    check_labels,
    check_rows_columns,
    nonfinite_columns_error,
    too_many_bytes,
)

CSV_BLOCK_BYTES = 1 << 18  # the streaming reader reads several blocks ahead
FIRST_LINE_BYTES = 1 << 20


def check_csv_header(path: Path, label_column: str | None) -> None:
    """Refuse a CSV without a header row (first line all numbers) or with a repeated name."""
    with open(path, "rb") as fp:
        first = fp.readline(FIRST_LINE_BYTES).lstrip(b"\xef\xbb\xbf").strip()
    cells = [c.strip().strip(b'"').decode("utf-8", "replace") for c in first.split(b",")]
    seen: set[str] = set()
    for cell in cells:
        if cell in seen:
            raise InvalidDatasetError(
                f"column {cell!r} appears more than once in the header; give every column "
                f"its own name"
            )
        seen.add(cell)
    if not first or (label_column or "label") in seen:
        return
    try:
        [float(c) for c in cells]
    except ValueError:
        return
    raise InvalidDatasetError(
        f"the CSV has no header row: its first line ({first[:80].decode(errors='replace')!r}) "
        f"is all numbers; add a header naming the columns, one of them the label column"
    )


def _feature_names(schema: Any, column: str) -> list[str]:
    """The feature columns (all but the label), refusing a missing label or a text feature."""
    import pyarrow as pa

    names = list(schema.names)
    if column not in names:
        raise InvalidDatasetError(
            f"label column {column!r} not found; the columns are {names[:20]}; pass "
            f"label_column naming the column that holds the class"
        )
    features = [c for c in names if c != column]
    for name in features:
        t = schema.field(name).type
        if not (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)
                or pa.types.is_null(t) or pa.types.is_dictionary(t)
                and pa.types.is_integer(t.value_type)):
            raise InvalidDatasetError(
                f"column {name!r} is not numeric (type {t}); encode it as numbers or drop it"
            )
    return features


def _csv_batches(path: Path, column: str) -> tuple[list[str], Iterator[Any]]:
    """(feature names, record batches) of a CSV; integer features read as floats throughout."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    read = pacsv.ReadOptions(block_size=CSV_BLOCK_BYTES, use_threads=False)
    with pa.OSFile(str(path)) as source, pacsv.open_csv(source, read_options=read) as probe:
        schema = probe.schema
    features = _feature_names(schema, column)
    types = {n: pa.float64() for n in features
             if pa.types.is_integer(schema.field(n).type) or pa.types.is_null(schema.field(n).type)}
    label_type = schema.field(column).type
    types[column] = pa.string() if pa.types.is_null(label_type) else label_type
    reader = pacsv.open_csv(pa.OSFile(str(path)), read_options=read,
                            convert_options=pacsv.ConvertOptions(column_types=types))
    return features, iter(reader)


def _parquet_batches(path: Path, column: str, limits: Limits) -> tuple[list[str], Iterator[Any]]:
    """(feature names, record batches) of a Parquet file, its footer checked first."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    meta = pq.ParquetFile(path).metadata
    schema = meta.schema.to_arrow_schema()
    check_rows_columns(int(meta.num_rows), max(int(meta.num_columns) - 1, 0), limits)
    features = _feature_names(schema, column)
    label_index = schema.get_field_index(column)
    label_bytes = sum(meta.row_group(g).column(label_index).total_uncompressed_size
                      for g in range(meta.num_row_groups))
    total = int(meta.num_rows) * (4 * len(features) + 8) + label_bytes
    if total > limits.max_bytes:
        raise too_many_bytes(total, limits, "Parquet file")
    label_type = schema.field(column).type
    textual = pa.types.is_string(label_type) or pa.types.is_large_string(label_type) \
        or pa.types.is_binary(label_type) or pa.types.is_large_binary(label_type)
    widest = max((meta.row_group(g).total_byte_size / max(1, meta.row_group(g).num_rows)
                  for g in range(meta.num_row_groups)), default=1.0)
    rows = int(min(65536, max(64, CHUNK_BYTES // max(1.0, widest + 8 * len(schema.names)))))
    reader = pq.ParquetFile(path, read_dictionary=[column] if textual else None,
                            buffer_size=1 << 16, pre_buffer=False)
    return features, reader.iter_batches(batch_size=rows)


def _features(batch: Any, features: list[str]) -> np.ndarray:
    """A batch's feature columns as float64 (nulls as NaN)."""
    cols = []
    for name in features:
        arr = batch.column(name).to_numpy(zero_copy_only=False)
        if arr.dtype.kind == "O":  # nulls in an integer/bool column come back as objects
            arr = np.array([np.nan if v is None else v for v in arr], dtype=np.float64)
        cols.append(np.asarray(arr, dtype=np.float64))
    return np.stack(cols, axis=1) if cols else np.zeros((batch.num_rows, 0))


def _stream_rows(
    batches: Iterator[Any], features: list[str], column: str, writer: CanonicalWriter,
    codes: LabelCodes, limits: Limits,
) -> int:
    """Feed every batch to the writer and the label codes; return the number of rows."""
    n = 0
    bad = np.zeros(len(features), dtype=bool)
    for batch in batches:
        n += batch.num_rows
        if n > limits.max_rows:
            continue  # counted to the end so the 422 gives the real number
        with np.errstate(over="ignore"):
            X = _features(batch, features).astype(np.float32)
        bad |= ~np.isfinite(X).all(axis=0)
        writer.append(X)
        codes.add_arrow(batch.column(column))
    check_rows_columns(n, 0, limits)
    if not features:
        raise InvalidDatasetError("no feature columns: the dataset needs at least one feature")
    if bad.any():
        raise nonfinite_columns_error(bad, features)
    return n


def ingest_table(
    path: Path, fmt: str, label_column: str | None, *, limits: Limits, workdir: Path
) -> Ingested:
    """Validate a CSV or Parquet file within `limits` and write its canonical NPZ."""
    import pyarrow as pa

    column = label_column or "label"
    try:
        if fmt == "csv":
            check_csv_header(path, label_column)
            features, batches = _csv_batches(path, column)
        else:
            features, batches = _parquet_batches(path, column, limits)
        check_rows_columns(0, len(features), limits)
        writer = CanonicalWriter(workdir, np.dtype(np.float32), (len(features),))
        codes = LabelCodes(column, limits)
        try:
            n = _stream_rows(batches, features, column, writer, codes, limits)
        finally:
            writer.close()
    except (pa.ArrowException, OSError, ValueError) as exc:
        if isinstance(exc, InvalidDatasetError):
            raise
        raise InvalidDatasetError(f"could not parse the {fmt.upper()} file: {exc}") from None
    y, names = codes.finish()
    check_labels(y, limits)
    sha = writer.finish(y)
    info = {
        "class_names": names,
        "class_counts": [int(c) for c in np.bincount(y, minlength=len(names))],
        "image_shape": None,
        "columns": features,
        "label_column": column,
        "layout": "table",
        "dtype": "float32",
    }
    return Ingested(path=writer.out_path, info=info, sha256=sha, n_rows=n,
                    n_features=len(features))
