"""Uploads cannot explode: a real API process (uvicorn subprocess, Postgres mode) streams a
large NPZ with bounded RSS, and refuses uploads whose headers declare too much — zeros
compressed, 80 GB declared, megabyte-wide label strings, long repeated Parquet strings —
with a 422 naming the limit, bounded RSS, and nothing stored."""

from __future__ import annotations

import io
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sqlalchemy import func, select

from core.db import session_scope
from core.ml.upload import dataset_sha256
from core.models import Artifact, ArtifactChunk, Dataset
from tests.processes import Proc, start_api, stop_process

MB = 1 << 20
SMALL_LIMIT = 50_000_000  # SOFTLABEL_MAX_DATASET_BYTES of the refusal tests' API


class PeakRss:
    """Samples a process's RSS in a thread; `grown` is the peak above the RSS at start."""

    def __init__(self, pid: int) -> None:
        self.proc = psutil.Process(pid)
        self.start = self.peak = self.proc.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, self.proc.memory_info().rss)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)

    @property
    def grown_mb(self) -> float:
        """Peak RSS above the starting RSS, in MiB."""
        return (self.peak - self.start) / MB


def _start(tmp_path: Path, env: dict[str, str] | None = None) -> Proc:
    return start_api(tmp_path / "api.log", env=env)


@pytest.fixture
def api(db: str, redis_url: str, tmp_path: Path) -> Iterator[Proc]:
    proc = _start(tmp_path)
    yield proc
    stop_process(proc)


@pytest.fixture(scope="module")
def small_api(database: str, redis_url: str, tmp_path_factory: Any) -> Iterator[Proc]:
    """One API for all the refusal tests (each test's `db` fixture cleans the database)."""
    proc = _start(tmp_path_factory.mktemp("small_api"),
                  {"SOFTLABEL_MAX_DATASET_BYTES": str(SMALL_LIMIT)})
    yield proc
    stop_process(proc)


def _post(api: Proc, key: str, body: Any, fmt: str) -> httpx.Response:
    return httpx.post(f"{api.info['url']}/v1/datasets?format={fmt}", content=body, timeout=300,
                      headers={"Authorization": f"Bearer {key}",
                               "Content-Type": "application/octet-stream"})


def _warm_up(api: Proc, key: str) -> None:
    """One small upload of each format: the lazily imported parsers are loaded before we
    measure (their code is idle memory, not upload memory)."""
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    np.savez(buf, X=rng.integers(0, 255, (30, 4, 4, 3), dtype=np.uint8), y=np.arange(30) % 3)
    assert _post(api, key, buf.getvalue(), "npz").status_code == 201
    csv = "f,label\n" + "".join(f"{i % 7},{i % 2}\n" for i in range(20))
    assert _post(api, key, csv.encode(), "csv").status_code == 201
    buf = io.BytesIO()
    pq.write_table(pa.table({"f": np.arange(20) % 5, "label": ["a", "b"] * 10}), buf)
    assert _post(api, key, buf.getvalue(), "parquet").status_code == 201


def _stored() -> tuple[int, int, int]:
    with session_scope() as s:
        return tuple(  # type: ignore[return-value]
            int(s.scalar(select(func.count()).select_from(m)) or 0)
            for m in (Dataset, Artifact, ArtifactChunk)
        )


def _images(n: int) -> tuple[np.ndarray, np.ndarray]:
    X = (np.arange(n * 3072, dtype=np.uint32) % 251).astype(np.uint8).reshape(n, 32, 32, 3)
    return X, np.arange(n) % 10


def _flat(n: int) -> tuple[np.ndarray, np.ndarray]:
    X = np.zeros((n, 1000), np.float32)
    X[:, 0] = np.arange(n) % 7
    return X, np.arange(n) % 10


@pytest.mark.parametrize(("make", "rows", "compressed"), [
    (_images, 54_000, False),  # (N, 32, 32, 3) uint8 stored: about 166 MB
    (_flat, 42_000, True),  # (N, 1000) float32 deflated: 168 MB decoded from about 1 MB
], ids=["stored-images", "compressed-flat"])
def test_large_npz_upload_streams_in_bounded_memory(
    api: Proc, api_key: str, tmp_path: Path, make: Any, rows: int, compressed: bool
) -> None:
    X, y = make(rows)
    path = tmp_path / "big.npz"
    (np.savez_compressed if compressed else np.savez)(path, X=X, y=y)
    decoded_mb = X.nbytes / MB
    canonical = np.ascontiguousarray(X.transpose(0, 3, 1, 2)) if X.ndim == 4 else X
    expected = dataset_sha256(canonical, y)
    del X, canonical
    _warm_up(api, api_key)
    before = _stored()
    with PeakRss(api.pid) as rss, open(path, "rb") as body:
        resp = _post(api, api_key, body, "npz")
    assert resp.status_code == 201, resp.text[:500]
    ds = resp.json()
    assert ds["n_rows"] == rows and ds["sha256"] == expected
    assert ds["size_bytes"] == path.stat().st_size
    datasets, artifacts, chunks = _stored()
    assert (datasets, artifacts) == (before[0] + 1, before[1] + 1)
    assert chunks - before[2] >= decoded_mb // 8  # kept in Postgres as 8 MiB chunk rows
    print(f"\nupload NPZ ({decoded_mb:.0f} MB decoded): API peak RSS +{rss.grown_mb:.1f} MB")
    assert rss.grown_mb < 100, f"API RSS grew {rss.grown_mb:.0f} MB for {decoded_mb:.0f} MB"


def _big_table(path: Path, fmt: str, blocks: int = 1000) -> None:
    """1M rows (the row limit) of 16 features and 5 classes: ~130 MB of CSV or Parquet."""
    rng = np.random.default_rng(1)
    n = 1000 * blocks
    if fmt == "parquet":
        columns = {f"f{j}": rng.normal(size=n) for j in range(16)}
        labels = pa.DictionaryArray.from_arrays(pa.array(np.arange(n, dtype=np.int32) % 5),
                                                [f"c{k}" for k in range(5)])
        pq.write_table(pa.table({**columns, "label": labels}), path)
        return
    block = "".join(",".join(f"{v:.5f}" for v in rng.normal(size=16)) + f",c{i % 5}\n"
                    for i in range(1000))
    with open(path, "w") as out:
        out.write(",".join(f"f{j}" for j in range(16)) + ",label\n")
        for _ in range(blocks):
            out.write(block)


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_large_table_upload_streams_in_bounded_memory(
    api: Proc, api_key: str, tmp_path: Path, fmt: str
) -> None:
    path = tmp_path / f"big.{fmt}"
    _big_table(path, fmt)
    size_mb = path.stat().st_size / MB
    _warm_up(api, api_key)
    # and a 100k-row file of the same kind: arrow's memory pool grows once, on the first
    # real-sized read in a process (by ~100 MB whatever the size), and keeps that memory
    _big_table(tmp_path / f"warm.{fmt}", fmt, blocks=100)
    with open(tmp_path / f"warm.{fmt}", "rb") as body:
        assert _post(api, api_key, body, fmt).status_code == 201
    with PeakRss(api.pid) as rss, open(path, "rb") as body:
        resp = _post(api, api_key, body, fmt)
    assert resp.status_code == 201, resp.text[:500]
    ds = resp.json()
    assert (ds["n_rows"], ds["n_features"], ds["n_classes"]) == (1_000_000, 16, 5)
    print(f"\nupload {fmt} ({size_mb:.0f} MB): API peak RSS +{rss.grown_mb:.1f} MB")
    assert rss.grown_mb < 100, f"API RSS grew {rss.grown_mb:.0f} MB for a {size_mb:.0f} MB {fmt}"


def _npz_declaring(x_header: dict[str, Any]) -> bytes:
    """An NPZ whose X.npy header declares `x_header` (no data follows) and a small y."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, x_header)
    y = io.BytesIO()
    np.save(y, np.arange(6) % 2)
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("X.npy", header.getvalue())
        zf.writestr("y.npy", y.getvalue())
    return archive.getvalue()


def _compressed_zeros() -> bytes:
    buf = io.BytesIO()  # 80 MB of float32 zeros (above the 50 MB limit) in about 80 KB
    np.savez_compressed(buf, X=np.zeros((20_000, 1000), np.float32), y=np.arange(20_000) % 2)
    return buf.getvalue()


def _wide_labels() -> bytes:
    buf = io.BytesIO()  # <U1000000: 4 MB per label as declared
    np.savez_compressed(buf, X=np.zeros((6, 2), np.float32),
                        y=np.array(["a", "b"] * 3, dtype="<U1000000"))
    return buf.getvalue()


def _long_parquet_labels() -> bytes:
    n = 1_000_000  # 1M identical 1000-character strings: a few KB dictionary-encoded
    labels = pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, np.int32)), ["x" * 1000])
    buf = io.BytesIO()
    pq.write_table(pa.table({"f": np.zeros(n, np.float32), "label": labels}), buf)
    return buf.getvalue()


def _long_parquet_features() -> bytes:
    n = 1_000_000
    text = pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, np.int32)), ["y" * 1000])
    buf = io.BytesIO()
    pq.write_table(pa.table({"f": text, "label": np.arange(n) % 2}), buf)
    return buf.getvalue()


BOMBS = [
    ("zeros-compressed", _compressed_zeros, "npz", "SOFTLABEL_MAX_DATASET_BYTES"),
    ("declares-80GB", lambda: _npz_declaring(
        {"descr": "<f4", "fortran_order": False, "shape": (1_000_000, 100, 200)}),
     "npz", "SOFTLABEL_MAX_DATASET_BYTES"),
    ("declares-too-many-rows", lambda: _npz_declaring(
        {"descr": "|u1", "fortran_order": False, "shape": (10**12, 1)}),
     "npz", "SOFTLABEL_MAX_DATASET_ROWS"),
    ("U1000000-labels", _wide_labels, "npz", "limit of 256 characters"),
    ("parquet-long-labels", _long_parquet_labels, "parquet", "limit of 256 characters"),
    ("parquet-long-text-feature", _long_parquet_features, "parquet", "not numeric"),
]


@pytest.mark.parametrize(("make", "fmt", "needle"), [b[1:] for b in BOMBS],
                         ids=[b[0] for b in BOMBS])
def test_uploads_declaring_too_much_are_refused_in_bounded_memory(
    small_api: Proc, api_key: str, make: Any, fmt: str, needle: str
) -> None:
    body = make()
    _warm_up(small_api, api_key)
    before = _stored()
    with PeakRss(small_api.pid) as rss:
        resp = _post(small_api, api_key, body, fmt)
    assert resp.status_code == 422, resp.text[:500]
    assert resp.headers["content-type"].startswith("application/problem+json")
    assert needle in resp.json()["detail"], resp.json()["detail"]
    assert _stored() == before  # nothing stored
    print(f"\nrefused {fmt} ({len(body) / MB:.1f} MB): API peak RSS +{rss.grown_mb:.1f} MB")
    assert rss.grown_mb < 60, f"API RSS grew {rss.grown_mb:.0f} MB refusing a {fmt} upload"
