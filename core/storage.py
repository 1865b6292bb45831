"""Artifact store: one small interface; files on disk (embedded) or rows in Postgres.

Bytes stream in and out in CHUNK_BYTES pieces: a large artifact (an uploaded dataset) is
never held whole in memory by the store; with Postgres it is kept as chunk rows.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, Protocol

from sqlalchemy import delete, insert, select
from sqlalchemy.orm import Session

from core.config import Settings, get_settings
from core.models import Artifact, ArtifactChunk

CONTENT_TYPES = {
    ".png": "image/png",
    ".json": "application/json",
    ".safetensors": "application/octet-stream",
    ".pt": "application/octet-stream",
    ".npz": "application/octet-stream",
}


def content_type_for(name: str) -> str:
    """The HTTP content type of an artifact, from its file name."""
    return CONTENT_TYPES.get(Path(name).suffix, "application/octet-stream")


CHUNK_BYTES = 8 << 20  # bytes move in pieces of this size; with Postgres one chunk row each


class BlobBackend(Protocol):
    """Where the bytes of an artifact live (streamed in and out in CHUNK_BYTES pieces)."""

    def write(self, session: Session, row: Artifact, source: BinaryIO) -> None:
        """Store everything read from `source` as the bytes of `row` (flushing it if it needs
        an id); a new row (no id yet) has no old bytes to remove."""

    def chunks(self, session: Session, row: Artifact) -> Iterator[bytes] | None:
        """The stored bytes in order, or None when there are none."""

    def remove(self, session: Session, row: Artifact) -> None:
        """Forget the bytes."""


class FilesystemBackend:
    """Bytes as files under a directory (embedded mode)."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root):
            raise ValueError(f"Expected argument `key` to stay inside the store, but got {key!r}")
        return path

    def write(self, session: Session, row: Artifact, source: BinaryIO) -> None:
        """Copy in chunks to a temp file, then rename it into place (atomic)."""
        path = self._path(row.key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as out:
            shutil.copyfileobj(source, out, CHUNK_BYTES)
        tmp.replace(path)
        row.data = None

    def chunks(self, session: Session, row: Artifact) -> Iterator[bytes] | None:
        """The file's bytes, if present."""
        path = self._path(row.key)
        if not path.exists():
            return None
        return _file_chunks(path)

    def remove(self, session: Session, row: Artifact) -> None:
        """Delete the file if present."""
        self._path(row.key).unlink(missing_ok=True)


def _file_chunks(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as fp:
        while chunk := fp.read(CHUNK_BYTES):
            yield chunk


class DatabaseBackend:
    """Bytes in Postgres (every worker sees them): inline in the row up to one chunk, else in
    `artifact_chunk` rows of CHUNK_BYTES each, written and read one chunk at a time."""

    def write(self, session: Session, row: Artifact, source: BinaryIO) -> None:
        """Inline when it fits one chunk, else one artifact_chunk row per chunk."""
        self.remove(session, row)
        first = source.read(CHUNK_BYTES)
        second = source.read(CHUNK_BYTES)
        if not second:
            row.data = first
            return
        row.data = None
        session.flush()
        rest = iter(lambda: source.read(CHUNK_BYTES), b"")
        for seq, chunk in enumerate(itertools.chain((first, second), rest)):
            session.execute(insert(ArtifactChunk).values(artifact_id=row.id, seq=seq, data=chunk))

    def chunks(self, session: Session, row: Artifact) -> Iterator[bytes] | None:
        """The row's bytes, or its chunk rows one query at a time."""
        if row.data is not None:
            return iter((row.data,))
        return _chunk_rows(session, row.id)

    def remove(self, session: Session, row: Artifact) -> None:
        """Delete the chunk rows (deleting the artifact row deletes them too)."""
        if row.id is not None:
            session.execute(delete(ArtifactChunk).where(ArtifactChunk.artifact_id == row.id))


def _chunk_rows(session: Session, artifact_id: int) -> Iterator[bytes]:
    seq = 0
    while True:
        data = session.scalar(
            select(ArtifactChunk.data).where(
                ArtifactChunk.artifact_id == artifact_id, ArtifactChunk.seq == seq
            )
        )
        if data is None:
            return
        yield data
        seq += 1


# The name older code used for the Postgres backend.
InlineBackend = DatabaseBackend


def backend_for(settings: Settings) -> BlobBackend:
    """The blob backend of the configured mode."""
    if settings.embedded:
        return FilesystemBackend(settings.artifact_dir)
    return DatabaseBackend()


class _Hashing:
    """A reader that hashes and counts what passes through it."""

    def __init__(self, source: BinaryIO) -> None:
        self.source = source
        self.hasher = hashlib.sha256()
        self.size = 0

    def read(self, n: int = -1) -> bytes:
        """Read from the source, hashing the bytes."""
        data = self.source.read(n)
        self.hasher.update(data)
        self.size += len(data)
        return data


def _put(
    session: Session,
    *,
    key: str,
    source: BinaryIO,
    tenant_id: str | None,
    job_id: str | None,
    settings: Settings | None,
) -> Artifact:
    """Store (or replace) an artifact from a stream; the caller's transaction owns the rows."""
    backend = backend_for(settings or get_settings())
    row = session.scalar(select(Artifact).where(Artifact.key == key))
    if row is None:
        row = Artifact(key=key, size_bytes=0, sha256="")
        session.add(row)
    row.tenant_id = tenant_id
    row.job_id = job_id
    row.content_type = content_type_for(key)
    # no flush yet: a new artifact of one chunk is a single INSERT with its bytes
    reader = _Hashing(source)
    backend.write(session, row, reader)  # type: ignore[arg-type]
    row.size_bytes = reader.size
    row.sha256 = reader.hasher.hexdigest()
    session.flush()
    return row


def put_artifact(
    session: Session,
    *,
    key: str,
    data: bytes,
    tenant_id: str | None = None,
    job_id: str | None = None,
    settings: Settings | None = None,
) -> Artifact:
    """Store (or replace) an artifact's bytes; the caller's transaction owns the row."""
    return _put(session, key=key, source=io.BytesIO(data), tenant_id=tenant_id, job_id=job_id,
                settings=settings)


def put_artifact_file(
    session: Session,
    *,
    key: str,
    path: Path,
    tenant_id: str | None = None,
    job_id: str | None = None,
    settings: Settings | None = None,
) -> Artifact:
    """Store (or replace) an artifact from a file, streamed in chunks (never read whole)."""
    with open(path, "rb") as source:
        return _put(session, key=key, source=source, tenant_id=tenant_id, job_id=job_id,
                    settings=settings)


def _row_and_chunks(
    session: Session, key: str, settings: Settings | None
) -> tuple[Artifact, Iterator[bytes]] | None:
    row = session.scalar(select(Artifact).where(Artifact.key == key))
    if row is None:
        return None
    chunks = backend_for(settings or get_settings()).chunks(session, row)
    return None if chunks is None else (row, chunks)


def get_artifact(
    session: Session, *, key: str, settings: Settings | None = None
) -> tuple[Artifact, bytes] | None:
    """Return the artifact row and its bytes (whole: for small artifacts), or None."""
    found = _row_and_chunks(session, key, settings)
    if found is None:
        return None
    return found[0], b"".join(found[1])


def copy_artifact_to(
    session: Session, *, key: str, dest: Path, settings: Settings | None = None
) -> bool:
    """Stream an artifact's bytes into the file `dest`, a chunk at a time; False when absent."""
    found = _row_and_chunks(session, key, settings)
    if found is None:
        return False
    with open(dest, "wb") as out:
        for chunk in found[1]:
            out.write(chunk)
    return True


def delete_artifact(session: Session, *, key: str, settings: Settings | None = None) -> None:
    """Delete an artifact's row and bytes."""
    row = session.scalar(select(Artifact).where(Artifact.key == key))
    if row is not None:
        backend_for(settings or get_settings()).remove(session, row)
        session.delete(row)
    session.flush()


def job_artifact_key(job_id: str, name: str) -> str:
    """The storage key of a job's artifact."""
    return f"jobs/{job_id}/{name}"


PUBLIC_JOB_ARTIFACTS = ("model.safetensors", "model.json", "reliability.png", "penultimate.png",
                        "predictions.npz")
