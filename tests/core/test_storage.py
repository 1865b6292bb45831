"""The artifact store streams: large artifacts as 8 MiB chunk rows in Postgres, read back in
order, replaced and deleted with their chunks; small ones stay inline."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import func, select

from core import storage
from core.models import Artifact, ArtifactChunk


def _chunks(session: Any) -> int:
    return int(session.scalar(select(func.count()).select_from(ArtifactChunk)) or 0)


def test_large_artifacts_stream_as_chunk_rows(session: Any, tmp_path: Path) -> None:
    data = np.random.default_rng(0).integers(0, 256, 2 * storage.CHUNK_BYTES + 12345,
                                             dtype=np.uint8).tobytes()
    src = tmp_path / "blob"
    src.write_bytes(data)
    row = storage.put_artifact_file(session, key="datasets/x.npz", path=src, tenant_id="t")
    assert row.data is None and row.size_bytes == len(data) and _chunks(session) == 3
    out = tmp_path / "out"
    assert storage.copy_artifact_to(session, key="datasets/x.npz", dest=out)
    assert out.read_bytes() == data
    found = storage.get_artifact(session, key="datasets/x.npz")
    assert found is not None and found[1] == data and found[0].sha256 == row.sha256
    # replaced by a small artifact: inline, and the old chunks are gone
    storage.put_artifact(session, key="datasets/x.npz", data=b"small")
    assert _chunks(session) == 0
    found = storage.get_artifact(session, key="datasets/x.npz")
    assert found is not None and found[1] == b"small"
    storage.put_artifact_file(session, key="datasets/x.npz", path=src)
    assert _chunks(session) == 3
    storage.delete_artifact(session, key="datasets/x.npz")
    assert _chunks(session) == 0
    assert session.scalar(select(func.count()).select_from(Artifact)) == 0
    assert not storage.copy_artifact_to(session, key="datasets/x.npz", dest=out)


def test_filesystem_backend_streams_files(session: Any, tmp_path: Path) -> None:
    from core.config import get_settings

    settings = get_settings().model_copy(update={"database_url": "sqlite:///x.db",
                                                 "artifact_dir": tmp_path / "store"})
    assert settings.embedded
    src = tmp_path / "blob"
    src.write_bytes(b"abc" * storage.CHUNK_BYTES)
    storage.put_artifact_file(session, key="datasets/y.npz", path=src, settings=settings)
    assert (tmp_path / "store/datasets/y.npz").read_bytes() == src.read_bytes()
    out = tmp_path / "out"
    assert storage.copy_artifact_to(session, key="datasets/y.npz", dest=out, settings=settings)
    assert out.read_bytes() == src.read_bytes() and _chunks(session) == 0
    storage.delete_artifact(session, key="datasets/y.npz", settings=settings)
    assert not (tmp_path / "store/datasets/y.npz").exists()
