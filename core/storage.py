"""Artifact store: one small interface; files on disk (embedded) or rows in Postgres."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Protocol

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from core.config import Settings, get_settings
from core.models import Artifact

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


class BlobBackend(Protocol):
    """Where the bytes of an artifact live."""

    def write(self, key: str, data: bytes) -> bool:
        """Store bytes; return True when they are kept inline in the row."""

    def read(self, key: str, inline: bytes | None) -> bytes | None:
        """Return the stored bytes, or None."""

    def remove(self, key: str) -> None:
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

    def write(self, key: str, data: bytes) -> bool:
        """Write atomically (temp file + rename)."""
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(data)
        tmp.replace(path)
        return False

    def read(self, key: str, inline: bytes | None) -> bytes | None:
        """Read the file if present."""
        path = self._path(key)
        return path.read_bytes() if path.exists() else None

    def remove(self, key: str) -> None:
        """Delete the file if present."""
        self._path(key).unlink(missing_ok=True)


class InlineBackend:
    """Bytes inline in the artifact row (Postgres mode: every worker sees the same bytes)."""

    def write(self, key: str, data: bytes) -> bool:
        """Nothing to do: the row holds the bytes."""
        return True

    def read(self, key: str, inline: bytes | None) -> bytes | None:
        """The row's bytes."""
        return inline

    def remove(self, key: str) -> None:
        """Nothing to do: deleting the row deletes the bytes."""


def backend_for(settings: Settings) -> BlobBackend:
    """The blob backend of the configured mode."""
    if settings.embedded:
        return FilesystemBackend(settings.artifact_dir)
    return InlineBackend()


def put_artifact(
    session: Session,
    *,
    key: str,
    data: bytes,
    tenant_id: str | None = None,
    job_id: str | None = None,
    settings: Settings | None = None,
) -> Artifact:
    """Store (or replace) an artifact; the caller's transaction owns the row."""
    backend = backend_for(settings or get_settings())
    inline = backend.write(key, data)
    row = session.scalar(select(Artifact).where(Artifact.key == key))
    if row is None:
        row = Artifact(key=key)
        session.add(row)
    row.tenant_id = tenant_id
    row.job_id = job_id
    row.content_type = content_type_for(key)
    row.size_bytes = len(data)
    row.sha256 = hashlib.sha256(data).hexdigest()
    row.data = data if inline else None
    session.flush()
    return row


def get_artifact(
    session: Session, *, key: str, settings: Settings | None = None
) -> tuple[Artifact, bytes] | None:
    """Return the artifact row and its bytes, or None."""
    row = session.scalar(select(Artifact).where(Artifact.key == key))
    if row is None:
        return None
    data = backend_for(settings or get_settings()).read(key, row.data)
    if data is None:
        return None
    return row, data


def delete_artifact(session: Session, *, key: str, settings: Settings | None = None) -> None:
    """Delete an artifact's row and bytes."""
    backend_for(settings or get_settings()).remove(key)
    session.execute(delete(Artifact).where(Artifact.key == key))
    session.flush()


def job_artifact_key(job_id: str, name: str) -> str:
    """The storage key of a job's artifact."""
    return f"jobs/{job_id}/{name}"


PUBLIC_JOB_ARTIFACTS = ("model.safetensors", "model.json", "reliability.png", "penultimate.png",
                        "predictions.npz")
