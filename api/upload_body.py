"""Upload bodies streamed to a temporary file: raw bodies and multipart/form-data.

The file's bytes go to disk (hashed as they arrive) and never accumulate in memory; the
size limit is enforced while the body streams in.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request

from core.errors import PayloadTooLargeError
from core.services import datasets as dataset_service

FORM_FIELDS = ("file", "format", "label_column", "name")
MAX_FIELD_BYTES = 1000
SINK_BUFFER_BYTES = 1 << 20
ONE_FILE = "send exactly one `file` part (curl -F file=@data.csv)"


@dataclass
class _Part:
    """One part of a multipart body (the file part's bytes go to the sink, not here)."""

    name: str = ""
    filename: str | None = None
    content_type: str | None = None
    data: bytearray = field(default_factory=bytearray)


class FileSink:
    """The uploaded file, streamed to a temporary file and hashed as it arrives."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.hasher = hashlib.sha256()
        self.size = 0
        self._fp = open(path, "wb")  # noqa: SIM115 - closed in close()
        self._buffer = bytearray()

    def write(self, data: bytes | memoryview) -> None:
        """Append bytes (written to disk a megabyte at a time)."""
        self.hasher.update(data)
        self.size += len(data)
        self._buffer.extend(data)
        if len(self._buffer) >= SINK_BUFFER_BYTES:
            self._fp.write(self._buffer)
            self._buffer.clear()

    def close(self) -> None:
        """Write what is buffered and close the file."""
        if not self._fp.closed:
            self._fp.write(self._buffer)
            self._buffer.clear()
            self._fp.close()


@dataclass
class Upload:
    """What the client sent: the file (on disk, with its size and hash) and the form fields."""

    path: Path
    size: int
    sha256: str
    filename: str | None
    media_type: str | None
    fields: dict[str, str]


class _FormCollector:
    """Feeds a multipart/form-data body chunk by chunk to python-multipart; the file part
    streams to the sink, the (short) text fields are kept."""

    def __init__(self, boundary: bytes, sink: FileSink) -> None:
        self.sink = sink
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
        if part.name == "file":
            self.sink.write(memoryview(data)[start:end])
            return
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
            if part.name == "file" and sum(p.name == "file" for p in self.parts) > 1:
                raise dataset_service.invalid_upload(ONE_FILE)
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
            raise dataset_service.invalid_upload(ONE_FILE)
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
        self.sink.close()
        return Upload(self.sink.path, self.sink.size, self.sink.hasher.hexdigest(),
                      file.filename, file.content_type, fields)


def _too_large(limit: int) -> PayloadTooLargeError:
    return PayloadTooLargeError(
        f"The upload is larger than the limit of {limit} bytes (SOFTLABEL_MAX_UPLOAD_BYTES); "
        "subsample the rows or drop columns"
    )


async def receive_upload(request: Request, *, limit: int, workdir: Path) -> Upload:
    """Stream the body to a file under `workdir`, stopping with 413 once it exceeds `limit`."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    media_type, params = parse_options_header(request.headers.get("content-type", ""))
    sink = FileSink(workdir / "upload")
    try:
        form: _FormCollector | None = None
        if media_type == b"multipart/form-data":
            boundary = params.get(b"boundary")
            if not boundary:
                raise dataset_service.invalid_upload("multipart/form-data without a boundary")
            form = _FormCollector(boundary, sink)
        received = 0
        async for chunk in request.stream():
            received += len(chunk)
            if received > limit:
                raise _too_large(limit)
            if form is not None:
                form.write(chunk)
            else:
                sink.write(chunk)
        if form is not None:
            return form.finish()
    finally:
        sink.close()
    return Upload(sink.path, sink.size, sink.hasher.hexdigest(), None,
                  media_type.decode("latin-1") or None, {})
