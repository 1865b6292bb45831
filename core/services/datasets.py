"""Uploaded datasets: parse and validate, store content-addressed, list, inspect, delete.

The canonical data (X float32, or images in their uploaded dtype, stored uncompressed so
workers can memory-map it; y int64; a byte-deterministic NPZ) is written from the upload
file in bounded memory (`core.ml.ingest`) and streamed into the artifact store under
`datasets/{id}.npz` in the same transaction as the dataset row;
`sha256` is the hash of that canonical content (the same hash a job's result reports).
Uploading the same content again (same X, y, class names and image shape) returns the
tenant's existing dataset instead of storing a duplicate.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from sqlalchemy import delete, exists, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from core import storage
from core.config import Settings
from core.errors import ConflictError, NotFoundError, ValidationAppError
from core.ids import new_id
from core.ml.errors import InvalidDatasetError
from core.ml.ingest import Ingested, Limits, ingest_file
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


def parse_dataset(
    *, path: Path, size: int, fmt: str, label_column: str | None, settings: Settings,
    workdir: Path,
) -> Ingested:
    """Validate an upload file within the configured limits (bounded memory); 422 names it.

    The canonical NPZ is written under `workdir` (the caller removes it).
    """
    if size == 0:
        raise invalid_upload("the uploaded file is empty")
    if label_column is not None and fmt == "npz":
        label_column = None  # NPZ labels are always the array "y"
    limits = Limits(
        max_rows=settings.max_dataset_rows,
        max_columns=settings.max_dataset_columns,
        max_classes=settings.max_dataset_classes,
        max_bytes=settings.max_dataset_bytes,
    )
    try:
        return ingest_file(path, fmt, label_column, limits=limits, workdir=workdir)
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


def _same_content(row: Dataset, parsed: Ingested) -> bool:
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
    parsed: Ingested,
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
    dataset = Dataset(
        id=new_id("ds"),
        tenant_id=tenant_id,
        name=name,
        format=fmt,
        sha256=parsed.sha256,
        n_rows=parsed.n_rows,
        n_features=parsed.n_features,
        n_classes=len(parsed.info["class_names"]),
        info=parsed.info,
        size_bytes=size_bytes,
        created_at=utcnow(),
    )
    session.add(dataset)
    session.flush()
    storage.put_artifact_file(
        session, key=dataset_key(dataset.id), path=parsed.path, tenant_id=tenant_id,
        settings=settings,
    )
    return dataset, True


def dataset_key(dataset_id: str) -> str:
    """The artifact key of a dataset's canonical NPZ (what workers load)."""
    return f"datasets/{dataset_id}.npz"


def copy_arrays_to(session: Session, *, dataset_id: str, dest: Path) -> bool:
    """Stream a dataset's canonical NPZ into the file `dest` (workers); False when none."""
    return storage.copy_artifact_to(session, key=dataset_key(dataset_id), dest=dest)


def upload_facts_of(session: Session, *, dataset_id: str) -> tuple[list[str] | None, str | None]:
    """The class names and the layout X was uploaded in (NHWC, NCHW, NHW, NF, table), or Nones."""
    row = session.get(Dataset, dataset_id)
    info = (row.info or {}) if row is not None else {}
    names = info.get("class_names")
    return ([str(n) for n in names] if names else None), info.get("layout")


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
