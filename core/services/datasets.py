"""Uploaded datasets: parse and validate, store content-addressed, list, inspect, delete.

The canonical data (X float32, y int64 as a byte-deterministic NPZ) is stored in the
artifact store under `datasets/{id}.npz` in the same transaction as the dataset row;
`sha256` is the hash of that canonical content (the same hash a job's result reports).
Uploading the same content again (same X, y, class names and image shape) returns the
tenant's existing dataset instead of storing a duplicate.
"""

from __future__ import annotations

import io
import re
import zipfile
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy import delete, exists, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from core import storage
from core.config import Settings
from core.errors import ConflictError, NotFoundError, ValidationAppError
from core.ids import new_id
from core.ml.errors import InvalidDatasetError
from core.ml.upload import dataset_sha256, parse_upload, to_npz_bytes
from core.models import Dataset, Job, Tenant
from core.services.jobs import ACTIVE_STATUSES
from core.services.pagination import newest_first_page
from core.states import TERMINAL_STATUSES
from core.timeutil import utcnow

FORMATS = ("csv", "parquet", "npz")
EXTENSIONS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet", ".npz": "npz"}
MEDIA_TYPES = {
    "text/csv": "csv",
    "application/csv": "csv",
    "application/vnd.apache.parquet": "parquet",
    "application/x-parquet": "parquet",
    "application/x-npz": "npz",
}
_COLUMN = re.compile(r"column '([^']*)'")


@dataclass(frozen=True)
class ParsedDataset:
    """A validated upload in canonical form."""

    X: np.ndarray
    y: np.ndarray
    info: dict[str, Any]
    sha256: str


def invalid_upload(
    message: str, *, field: str = "file", column: str | None = None
) -> ValidationAppError:
    """A 422 problem about an upload, naming the form field and (when known) the column."""
    error: dict[str, Any] = {
        "loc": ["body", field],
        "field": field,
        "msg": message,
        "type": "invalid_dataset",
    }
    if column is not None:
        error["column"] = column
    return ValidationAppError(message, extra={"errors": [error]})


def resolve_format(*, fmt: str | None, filename: str | None, media_type: str | None) -> str:
    """The upload format: explicit, else from the file name, else from the media type."""
    if fmt:
        fmt = fmt.strip().lower().lstrip(".")
        if fmt not in FORMATS:
            raise invalid_upload(
                f"format {fmt!r} is not supported; use one of {', '.join(FORMATS)}", field="format"
            )
        return fmt
    if filename:
        for ext, name in EXTENSIONS.items():
            if filename.lower().endswith(ext):
                return name
    if media_type and media_type.lower() in MEDIA_TYPES:
        return MEDIA_TYPES[media_type.lower()]
    raise invalid_upload(
        "cannot tell the file format: pass format=csv|parquet|npz, or a file name ending "
        "in .csv, .parquet or .npz",
        field="format",
    )


def _check_csv_header(data: bytes, label_column: str | None) -> None:
    """Refuse a CSV without a header row (first line all numbers) or with a repeated name."""
    first = data.lstrip(b"\xef\xbb\xbf").split(b"\n", 1)[0].strip()
    cells = [c.strip().strip(b'"').decode("utf-8", "replace") for c in first.split(b",")]
    seen: set[str] = set()
    for cell in cells:
        if cell in seen:
            raise invalid_upload(
                f"column {cell!r} appears more than once in the header; give every column "
                f"its own name",
                column=cell,
            )
        seen.add(cell)
    if not first or (label_column or "label") in seen:
        return
    try:
        [float(c) for c in cells]
    except ValueError:
        return
    raise invalid_upload(
        f"the CSV has no header row: its first line ({first[:80].decode(errors='replace')!r}) "
        f"is all numbers; add a header naming the columns, one of them the label column"
    )


def _npz_header_shapes(data: bytes) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Shapes and dtypes of the NPZ's X and y, read from the .npy headers without loading."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, OSError, ValueError):
        return {}  # not a zip: parse_upload says so
    found: dict[str, tuple[tuple[int, ...], np.dtype]] = {}
    with archive:
        for member in archive.namelist():
            key = member.removesuffix(".npy")
            if key not in ("X", "y"):
                continue
            try:
                with archive.open(member) as fp:
                    version = np.lib.format.read_magic(fp)
                    if version == (1, 0):
                        shape, _, dtype = np.lib.format.read_array_header_1_0(fp)
                    elif version == (2, 0):
                        shape, _, dtype = np.lib.format.read_array_header_2_0(fp)
                    else:
                        raise invalid_upload(
                            f"array {key!r} uses .npy format {version}; save it "
                            f"with numpy.savez (format 1.0)"
                        )
            except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
                raise invalid_upload(
                    f"could not read array {key!r} of the NPZ file: {exc}"
                ) from None
            found[key] = (tuple(int(d) for d in shape), dtype)
    return found


def _check_decoded_bytes(
    shapes: dict[str, tuple[tuple[int, ...], np.dtype]], settings: Settings
) -> None:
    """Refuse an NPZ whose headers declare more decoded bytes than SOFTLABEL_MAX_DATASET_BYTES.

    Counts what parsing will hold: flat X widened to float32, string labels at their declared
    width per element, plus the int64 class ids.
    """
    total = 0
    for key, (shape, dtype) in shapes.items():
        count = int(np.prod(shape, dtype=object)) if shape else 1
        width = dtype.itemsize
        if key == "X" and len(shape) <= 2:
            width = max(width, 4)
        total += count * width + (count * 8 if key == "y" else 0)
    if total > settings.max_dataset_bytes:
        raise invalid_upload(
            f"the NPZ declares {total:,} bytes of decoded arrays, above the limit of "
            f"{settings.max_dataset_bytes:,} (SOFTLABEL_MAX_DATASET_BYTES); upload fewer rows, "
            f"a narrower dtype (uint8 images) or shorter label strings"
        )


def _check_sizes_before_loading(data: bytes, fmt: str, settings: Settings) -> None:
    """Refuse too many rows or columns from the file's metadata, before anything is unpacked.

    NPZ and Parquet are compressed: a small upload can declare arrays of many gigabytes.
    """
    rows = columns = 0
    shapes: dict[str, tuple[tuple[int, ...], np.dtype]] = {}
    if fmt == "npz":
        shapes = _npz_header_shapes(data)
        for key, (shape, dtype) in shapes.items():
            if dtype.hasobject:
                raise invalid_upload(
                    f"array {key!r} of the NPZ holds Python objects, which would need pickle; "
                    f"pickle is refused, save plain numeric arrays"
                )
            if shape:
                rows = max(rows, shape[0])
            if key == "X" and len(shape) == 2:  # image sets are limited by bytes, not columns
                columns = int(shape[1])
    elif fmt == "parquet":
        import pyarrow.parquet as pq

        try:
            meta = pq.ParquetFile(io.BytesIO(data)).metadata
        except Exception:  # noqa: BLE001 - unreadable: parse_upload reports it
            return
        rows, columns = int(meta.num_rows), max(int(meta.num_columns) - 1, 0)
    if rows > settings.max_dataset_rows:
        raise invalid_upload(
            f"too many rows: {rows} > the limit of {settings.max_dataset_rows}; subsample the data"
        )
    if columns > settings.max_dataset_columns:
        raise invalid_upload(
            f"too many feature columns: {columns} > the limit of {settings.max_dataset_columns}; "
            f"reduce the features"
        )
    _check_decoded_bytes(shapes, settings)


def parse_dataset(
    *, data: bytes, fmt: str, label_column: str | None, settings: Settings
) -> ParsedDataset:
    """Parse and validate upload bytes within the configured limits; 422 names the problem."""
    if not data:
        raise invalid_upload("the uploaded file is empty")
    if fmt == "csv":
        _check_csv_header(data, label_column)
    _check_sizes_before_loading(data, fmt, settings)
    if label_column is not None and fmt == "npz":
        label_column = None  # NPZ labels are always the array "y"
    try:
        X, y, info = parse_upload(
            data,
            fmt,
            label_column,
            max_rows=settings.max_dataset_rows,
            max_columns=settings.max_dataset_columns,
            max_classes=settings.max_dataset_classes,
        )
    except InvalidDatasetError as exc:
        message = str(exc)
        match = _COLUMN.search(message)
        field = "label_column" if message.startswith("label column") else "file"
        column = match.group(1) if match else None
        raise invalid_upload(message, field=field, column=column) from None
    except (MemoryError, RecursionError):
        raise
    except Exception as exc:  # noqa: BLE001 - a parser failure on odd input is the client's file
        raise invalid_upload(f"could not read the {fmt.upper()} file: {exc}") from None
    counts = np.bincount(y, minlength=len(info["class_names"]))
    info = {
        "class_names": info["class_names"],
        "class_counts": [int(c) for c in counts],
        "image_shape": info.get("image_shape"),
        "columns": info.get("feature_names") or [],
        "label_column": info.get("label_column"),
        "layout": info.get("layout", "table"),
        "dtype": info.get("dtype", "float32"),
    }
    return ParsedDataset(X=X, y=y, info=info, sha256=dataset_sha256(X, y))


def _same_content(row: Dataset, parsed: ParsedDataset) -> bool:
    """True when a stored dataset holds exactly the parsed content (hash, names, image shape)."""
    return (
        row.sha256 == parsed.sha256
        and row.info.get("class_names") == parsed.info["class_names"]
        and row.info.get("image_shape") == parsed.info["image_shape"]
    )


def create_dataset(
    session: Session,
    *,
    tenant_id: str,
    name: str,
    fmt: str,
    parsed: ParsedDataset,
    size_bytes: int,
    settings: Settings | None = None,
) -> tuple[Dataset, bool]:
    """Store a parsed upload (row + canonical NPZ); the tenant's existing copy if any, created."""
    # Serialise a tenant's uploads so two identical concurrent uploads store one dataset.
    session.execute(select(Tenant.id).where(Tenant.id == tenant_id).with_for_update())
    candidates = session.scalars(
        select(Dataset).where(Dataset.tenant_id == tenant_id, Dataset.sha256 == parsed.sha256)
    )
    for row in candidates:
        if _same_content(row, parsed):
            return row, False
    n_rows, n_features = parsed.X.shape[0], int(np.prod(parsed.X.shape[1:]))
    dataset = Dataset(
        id=new_id("ds"),
        tenant_id=tenant_id,
        name=name,
        format=fmt,
        sha256=parsed.sha256,
        n_rows=int(n_rows),
        n_features=int(n_features),
        n_classes=len(parsed.info["class_names"]),
        info=parsed.info,
        size_bytes=size_bytes,
        created_at=utcnow(),
    )
    session.add(dataset)
    session.flush()
    blob = to_npz_bytes(parsed.X, parsed.y, parsed.info["image_shape"])
    storage.put_artifact(
        session, key=dataset_key(dataset.id), data=blob, tenant_id=tenant_id, settings=settings
    )
    return dataset, True


def dataset_key(dataset_id: str) -> str:
    """The artifact key of a dataset's canonical NPZ (what workers load)."""
    return f"datasets/{dataset_id}.npz"


def stored_arrays(session: Session, *, dataset_id: str) -> bytes | None:
    """The canonical NPZ bytes of a dataset (workers), or None when none is stored."""
    found = storage.get_artifact(session, key=dataset_key(dataset_id))
    return found[1] if found else None


def class_names_of(session: Session, *, dataset_id: str) -> list[str] | None:
    """The class names stored with an uploaded dataset, or None."""
    row = session.get(Dataset, dataset_id)
    names = (row.info or {}).get("class_names") if row is not None else None
    return [str(n) for n in names] if names else None


def get_dataset(session: Session, *, tenant_id: str, dataset_id: str) -> Dataset:
    """The tenant's dataset, or NotFoundError (also for another tenant's dataset)."""
    row = session.scalar(
        select(Dataset).where(Dataset.id == dataset_id, Dataset.tenant_id == tenant_id)
    )
    if row is None:
        raise NotFoundError(f"Dataset {dataset_id} does not exist")
    return row


def list_datasets(
    session: Session, *, tenant_id: str, limit: int, cursor: str | None = None
) -> tuple[list[Dataset], str | None]:
    """A page of the tenant's datasets, newest first, and the cursor of the next page."""
    query = select(Dataset).where(Dataset.tenant_id == tenant_id)
    return newest_first_page(session, query, Dataset, limit=limit, cursor=cursor)


def delete_dataset(
    session: Session, *, tenant_id: str, dataset_id: str, settings: Settings | None = None
) -> None:
    """Delete a dataset and its data; 409 while a queued or running job uses it.

    Finished jobs keep their results: their reference to the dataset is cleared.
    """
    row = session.scalar(
        select(Dataset)
        .where(Dataset.id == dataset_id, Dataset.tenant_id == tenant_id)
        .with_for_update()
    )
    if row is None:
        raise NotFoundError(f"Dataset {dataset_id} does not exist")
    busy = select(Job.id).where(Job.dataset_id == row.id, Job.status.in_(ACTIVE_STATUSES))
    if session.scalar(select(exists(busy))):
        raise _in_use(dataset_id, list(session.scalars(busy.limit(5))))
    session.execute(
        update(Job)
        .where(Job.dataset_id == row.id, Job.status.in_(TERMINAL_STATUSES))
        .values(dataset_id=None)
        .execution_options(synchronize_session=False)
    )
    try:
        with session.begin_nested():
            session.execute(delete(Dataset).where(Dataset.id == row.id))
    except IntegrityError:  # a job referencing it was submitted in between
        raise _in_use(dataset_id, []) from None
    storage.delete_artifact(session, key=dataset_key(row.id), settings=settings)


def _in_use(dataset_id: str, job_ids: list[str]) -> ConflictError:
    """The 409 of deleting a dataset that queued or running jobs use."""
    which = f" ({', '.join(job_ids)})" if job_ids else ""
    return ConflictError(
        f"Dataset {dataset_id} is used by queued or running jobs{which}; cancel them or wait "
        f"until they finish, then delete it",
        extra={"job_ids": job_ids},
    )
