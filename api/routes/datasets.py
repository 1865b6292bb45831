"""Datasets: upload (streamed, size-limited), list, inspect, delete."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response, status
from pydantic import BaseModel, Field
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from api.deps import CursorQuery, LimitQuery, SessionDep, SettingsDep, TenantDep
from api.problems import PROBLEMS, not_found
from api.schemas import Problem
from core.config import Settings
from core.errors import PayloadTooLargeError, ValidationAppError
from core.ml.arch_compat import compatible_archs
from core.models import Dataset
from core.services import datasets as dataset_service
from core.timeutil import iso
from core.validation import check_named_texts

router = APIRouter(prefix="/v1/datasets", tags=["datasets"])

NOT_FOUND = not_found("dataset")
FORM_FIELDS = ("file", "format", "label_column", "name")
MAX_FIELD_BYTES = 1000
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


@dataclass
class _Part:
    """One part of a multipart body."""

    name: str = ""
    filename: str | None = None
    content_type: str | None = None
    data: bytearray = field(default_factory=bytearray)


@dataclass
class Upload:
    """What the client sent: the file's bytes and the form fields."""

    data: bytes
    filename: str | None
    media_type: str | None
    fields: dict[str, str]


class _FormCollector:
    """Feeds a multipart/form-data body chunk by chunk to python-multipart, keeps the parts."""

    def __init__(self, boundary: bytes) -> None:
        self.parts: list[_Part] = []
        self._field = bytearray()
        self._value = bytearray()
        self._parser = MultipartParser(
            boundary,
            callbacks={
                "on_part_begin": self._begin,
                "on_part_data": self._data,
                "on_header_field": lambda d, s, e: self._field.extend(d[s:e]),
                "on_header_value": lambda d, s, e: self._value.extend(d[s:e]),
                "on_header_end": self._header_end,
            },
        )

    def _begin(self) -> None:
        self.parts.append(_Part())

    def _data(self, data: bytes, start: int, end: int) -> None:
        part = self.parts[-1]
        part.data.extend(data[start:end])
        if part.filename is None and part.name != "file" and len(part.data) > MAX_FIELD_BYTES:
            raise dataset_service.invalid_upload(
                f"form field {part.name!r} is longer than {MAX_FIELD_BYTES} bytes", field=part.name
            )

    def _header_end(self) -> None:
        name, value = bytes(self._field).decode("latin-1").lower(), bytes(self._value)
        self._field.clear()
        self._value.clear()
        part = self.parts[-1]
        if name == "content-disposition":
            _, params = parse_options_header(value)
            part.name = params.get(b"name", b"").decode("utf-8", "replace")
            raw_filename = params.get(b"filename")
            part.filename = raw_filename.decode("utf-8", "replace") if raw_filename else None
            if part.name not in FORM_FIELDS:
                raise dataset_service.invalid_upload(
                    f"unknown form field {part.name!r}; send {', '.join(FORM_FIELDS)}",
                    field=part.name,
                )
        elif name == "content-type":
            part.content_type = parse_options_header(value)[0].decode("latin-1")

    def write(self, chunk: bytes) -> None:
        """Parse the next chunk of the body."""
        try:
            self._parser.write(chunk)
        except MultipartParseError as exc:
            raise dataset_service.invalid_upload(f"malformed multipart body: {exc}") from None

    def finish(self) -> Upload:
        """The file part and the text fields of the completed body."""
        try:
            self._parser.finalize()
        except MultipartParseError as exc:
            raise dataset_service.invalid_upload(f"malformed multipart body: {exc}") from None
        files = [p for p in self.parts if p.name == "file"]
        if len(files) != 1:
            raise dataset_service.invalid_upload(
                "send exactly one `file` part (curl -F file=@data.csv)"
            )
        fields = {}
        for part in self.parts:
            if part.name != "file":
                try:
                    fields[part.name] = bytes(part.data).decode("utf-8").strip()
                except UnicodeDecodeError:
                    raise dataset_service.invalid_upload(
                        f"form field {part.name!r} is not UTF-8 text", field=part.name
                    ) from None
        file = files[0]
        return Upload(bytes(file.data), file.filename, file.content_type, fields)


def _too_large(limit: int) -> PayloadTooLargeError:
    return PayloadTooLargeError(
        f"The upload is larger than the limit of {limit} bytes (SOFTLABEL_MAX_UPLOAD_BYTES); "
        "subsample the rows or drop columns"
    )


async def receive_upload(request: Request, *, limit: int) -> Upload:
    """Stream the body in, stopping with 413 as soon as it exceeds `limit` bytes."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    media_type, params = parse_options_header(request.headers.get("content-type", ""))
    form: _FormCollector | None = None
    if media_type == b"multipart/form-data":
        boundary = params.get(b"boundary")
        if not boundary:
            raise dataset_service.invalid_upload("multipart/form-data without a boundary")
        form = _FormCollector(boundary)
    raw = bytearray()
    received = 0
    async for chunk in request.stream():
        received += len(chunk)
        if received > limit:
            raise _too_large(limit)
        if form is not None:
            form.write(chunk)
        else:
            raw.extend(chunk)
    if form is not None:
        return form.finish()
    return Upload(bytes(raw), None, media_type.decode("latin-1") or None, {})


def _store_upload(
    session: Session, *, tenant_id: str, upload: Upload, settings: Settings
) -> tuple[Dataset, bool]:
    """Parse, validate and store an upload (sync: runs in the threadpool); the request commits."""
    fmt = dataset_service.resolve_format(
        fmt=upload.fields.get("format"), filename=upload.filename, media_type=upload.media_type
    )
    parsed = dataset_service.parse_dataset(
        data=upload.data,
        fmt=fmt,
        label_column=upload.fields.get("label_column") or None,
        settings=settings,
    )
    name = upload.fields.get("name") or upload.filename or f"upload.{fmt}"
    dataset, created = dataset_service.create_dataset(
        session,
        tenant_id=tenant_id,
        name=name[:200],
        fmt=fmt,
        parsed=parsed,
        size_bytes=len(upload.data),
        settings=settings,
    )
    return dataset, created


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
    """Upload CSV, Parquet or NPZ: 201 when stored, 200 with the dataset of the same content."""
    upload = await receive_upload(request, limit=settings.max_upload_bytes)
    query = {"format": format_, "label_column": label_column, "name": name}
    upload.fields = {**{k: v for k, v in query.items() if v}, **upload.fields}
    try:
        check_named_texts({**upload.fields, "filename": upload.filename})
    except ValueError as exc:
        raise ValidationAppError(str(exc)) from None
    dataset, created = await run_in_threadpool(
        _store_upload, session, tenant_id=tenant.id, upload=upload, settings=settings
    )
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
