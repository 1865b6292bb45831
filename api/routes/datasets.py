"""Datasets: upload (streamed, size-limited), list, inspect, delete."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response, status
from pydantic import BaseModel, Field
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from api.deps import CursorQuery, LimitQuery, SessionDep, SettingsDep, TenantDep
from api.problems import PROBLEMS, not_found
from api.schemas import Problem
from api.upload_body import Upload, receive_upload
from core.config import Settings
from core.errors import ValidationAppError
from core.ml.arch_compat import compatible_archs
from core.models import Dataset
from core.services import datasets as dataset_service
from core.timeutil import iso
from core.validation import check_named_texts

router = APIRouter(prefix="/v1/datasets", tags=["datasets"])

NOT_FOUND = not_found("dataset")
UPLOAD_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": (
            "multipart/form-data with a `file` part (CSV with a header row, Parquet, or NPZ "
            "with arrays X and y) and optional fields `format`, `label_column` (default "
            "`label`), `name`; or the raw file as the body, with `format`, `label_column` and "
            "`name` as query parameters. The limit (SOFTLABEL_MAX_UPLOAD_BYTES) applies to "
            "the whole request body and is enforced while it streams in."
        ),
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {"type": "string", "format": "binary"},
                        "format": {"type": "string", "enum": list(dataset_service.FORMATS)},
                        "label_column": {"type": "string", "maxLength": 200},
                        "name": {"type": "string", "maxLength": 200},
                    },
                }
            },
            "text/csv": {"schema": {"type": "string", "format": "binary"}},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}


class DatasetOut(BaseModel):
    """An uploaded dataset: shape, classes with counts, content hash, fitting architectures."""

    id: str = Field(examples=["ds_5f0c0e1e9a2b4c7d8e9f00112233aabb"])
    name: str
    format: str
    sha256: str = Field(description="SHA-256 of the canonical content (X float32, y int64)")
    n_rows: int
    n_features: int
    n_classes: int
    image_shape: list[int] | None = Field(description="(H, W) grey or (C, H, W) colour images")
    layout: str = Field(description="As uploaded: NF (flat), NHW, NHWC, NCHW; or table")
    dtype: str = Field(description="Stored dtype of X (images keep the uploaded one)")
    class_names: list[str]
    class_counts: list[int]
    label_column: str | None
    columns: list[str]
    compatible_archs: list[str]
    size_bytes: int = Field(description="Size of the uploaded file")
    created_at: str

    @classmethod
    def from_row(cls, row: Dataset) -> DatasetOut:
        """Build from the ORM row."""
        info = row.info or {}
        shape = info.get("image_shape")
        return cls(
            id=row.id,
            name=row.name,
            format=row.format,
            sha256=row.sha256,
            n_rows=row.n_rows,
            n_features=row.n_features,
            n_classes=row.n_classes,
            image_shape=shape,
            layout=info.get("layout", "table"),
            dtype=info.get("dtype", "float32"),
            class_names=info.get("class_names", []),
            class_counts=info.get("class_counts", []),
            label_column=info.get("label_column"),
            columns=info.get("columns", []),
            compatible_archs=compatible_archs(row.n_features, tuple(shape) if shape else None),
            size_bytes=row.size_bytes,
            created_at=iso(row.created_at) or "",
        )


class DatasetPage(BaseModel):
    """A page of datasets, newest first."""

    items: list[DatasetOut]
    next_cursor: str | None


def _store_upload(
    session: Session, *, tenant_id: str, upload: Upload, settings: Settings, workdir: Path
) -> tuple[Dataset, bool]:
    """Validate and store an upload from its file (sync: runs in the threadpool)."""
    fmt = dataset_service.resolve_format(
        fmt=upload.fields.get("format"), filename=upload.filename, media_type=upload.media_type
    )
    parsed = dataset_service.parse_dataset(
        path=upload.path,
        size=upload.size,
        fmt=fmt,
        label_column=upload.fields.get("label_column") or None,
        settings=settings,
        workdir=workdir,
    )
    parsed.info["file_sha256"] = upload.sha256
    upload.path.unlink()  # the canonical copy is what is stored
    name = upload.fields.get("name") or upload.filename or f"upload.{fmt}"
    return dataset_service.create_dataset(
        session,
        tenant_id=tenant_id,
        name=name[:200],
        fmt=fmt,
        parsed=parsed,
        size_bytes=upload.size,
        settings=settings,
    )


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=DatasetOut,
    openapi_extra=UPLOAD_BODY,
    responses={
        **PROBLEMS,
        200: {"model": DatasetOut, "description": "The same content was uploaded before"},
        413: {"model": Problem, "description": "The upload exceeds the size limit"},
    },
)
async def upload_dataset(
    request: Request,
    response: Response,
    tenant: TenantDep,
    session: SessionDep,
    settings: SettingsDep,
    format_: Annotated[str | None, Query(alias="format", pattern="^(csv|parquet|npz)$")] = None,
    label_column: Annotated[str | None, Query(max_length=200)] = None,
    name: Annotated[str | None, Query(max_length=200)] = None,
) -> DatasetOut:
    """Upload CSV, Parquet or NPZ: 201 when stored, 200 with the dataset of the same content.

    The body streams to a temporary file; it is validated from there in bounded memory and
    stored in chunks; the reply comes after validation, and a bad file stores nothing.
    """
    workdir = Path(tempfile.mkdtemp(prefix="softlabel-upload-"))
    try:
        upload = await receive_upload(request, limit=settings.max_upload_bytes, workdir=workdir)
        query = {"format": format_, "label_column": label_column, "name": name}
        upload.fields = {**{k: v for k, v in query.items() if v}, **upload.fields}
        try:
            check_named_texts({**upload.fields, "filename": upload.filename})
        except ValueError as exc:
            raise ValidationAppError(str(exc)) from None
        dataset, created = await run_in_threadpool(
            _store_upload, session, tenant_id=tenant.id, upload=upload, settings=settings,
            workdir=workdir,
        )
    finally:
        await run_in_threadpool(shutil.rmtree, workdir, True)
    response.status_code = status.HTTP_201_CREATED if created else status.HTTP_200_OK
    response.headers["Location"] = f"/v1/datasets/{dataset.id}"
    return DatasetOut.from_row(dataset)


@router.get("", response_model=DatasetPage, responses=PROBLEMS)
def list_datasets(
    session: SessionDep,
    tenant: TenantDep,
    limit: LimitQuery = 50,
    cursor: CursorQuery = None,
) -> DatasetPage:
    """The tenant's datasets, newest first, cursor-paginated."""
    rows, next_cursor = dataset_service.list_datasets(
        session, tenant_id=tenant.id, limit=limit, cursor=cursor
    )
    return DatasetPage(items=[DatasetOut.from_row(r) for r in rows], next_cursor=next_cursor)


@router.get("/{dataset_id}", response_model=DatasetOut, responses={**PROBLEMS, **NOT_FOUND})
def get_dataset(dataset_id: str, session: SessionDep, tenant: TenantDep) -> DatasetOut:
    """One dataset: shape, classes and their counts, sha256."""
    row = dataset_service.get_dataset(session, tenant_id=tenant.id, dataset_id=dataset_id)
    return DatasetOut.from_row(row)


@router.delete(
    "/{dataset_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses={
        **PROBLEMS,
        **NOT_FOUND,
        409: {"model": Problem, "description": "Queued or running jobs use the dataset"},
    },
)
def delete_dataset(
    dataset_id: str, session: SessionDep, tenant: TenantDep, settings: SettingsDep
) -> Response:
    """Delete a dataset (409 while queued or running jobs use it; finished jobs keep results)."""
    dataset_service.delete_dataset(
        session, tenant_id=tenant.id, dataset_id=dataset_id, settings=settings
    )
    return Response(status_code=status.HTTP_204_NO_CONTENT)
