"""/v1/datasets of the Python client: uploads streamed from disk, listing, metadata."""

from __future__ import annotations

import builtins
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

__all__ = ["UPLOAD_CHUNK", "Datasets"]


class _Requester(Protocol):
    def request(self, method: str, path: str, **kwargs: Any) -> Any: ...


UPLOAD_CHUNK = 1 << 20
_FORMATS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet", ".npz": "npz"}


def _format_of(path: Path) -> str | None:
    """The upload format from a file name (None: let the API decide)."""
    return _FORMATS.get(path.suffix.lower())


class Datasets:
    """/v1/datasets."""

    def __init__(self, client: _Requester) -> None:
        self._c = client

    def upload(
        self,
        path: str | Path,
        *,
        name: str | None = None,
        label_column: str | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> dict[str, Any]:
        """Upload a CSV, Parquet or NPZ file, streamed from disk in chunks (never read whole).

        Idempotent by content: the same content again returns the existing dataset.
        `progress(sent_bytes, total_bytes)` is called after every chunk.
        """
        p = Path(path)
        total = p.stat().st_size
        params = {"format": _format_of(p), "name": name or p.name, "label_column": label_column}

        def chunks() -> Iterator[bytes]:
            sent = 0
            with p.open("rb") as fh:
                while chunk := fh.read(UPLOAD_CHUNK):
                    sent += len(chunk)
                    yield chunk
                    if progress is not None:
                        progress(sent, total)

        return dict(self._c.request(
            "POST", "/v1/datasets", content=chunks(),
            params={k: v for k, v in params.items() if v},
            headers={"Content-Type": "application/octet-stream",
                     "Content-Length": str(total)}))

    def list(self, *, limit: int = 50) -> builtins.list[dict[str, Any]]:
        """The tenant's datasets, newest first (every page)."""
        items: builtins.list[dict[str, Any]] = []
        cursor: str | None = None
        while True:
            params: dict[str, Any] = {"limit": limit, **({"cursor": cursor} if cursor else {})}
            page = self._c.request("GET", "/v1/datasets", params=params)
            items += page["items"]
            cursor = page.get("next_cursor")
            if not cursor:
                return items

    def get(self, dataset_id: str) -> dict[str, Any]:
        """One dataset's metadata."""
        return dict(self._c.request("GET", f"/v1/datasets/{dataset_id}"))

    def delete(self, dataset_id: str) -> None:
        """Delete a dataset."""
        self._c.request("DELETE", f"/v1/datasets/{dataset_id}")
