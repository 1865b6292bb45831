"""Dataset routes against the real app and Postgres: upload, dedupe, validation, limits, delete."""

from __future__ import annotations

import io
import socket
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sqlalchemy import func, select, update

from core.config import get_settings
from core.db import session_scope
from core.ml.upload import dataset_sha256
from core.models import Artifact, Dataset, Job

PROBLEM = "application/problem+json"


def counts() -> tuple[int, int]:
    """(dataset rows, artifact rows)."""
    with session_scope() as s:
        n_ds = s.scalar(select(func.count()).select_from(Dataset)) or 0
        n_art = s.scalar(select(func.count()).select_from(Artifact)) or 0
    return int(n_ds), int(n_art)


def make_csv(n: int = 30, classes: tuple[str, ...] = ("cat", "dog", "owl"), seed: int = 0) -> bytes:
    """A small CSV: numeric columns f1, f2 and a string class column `species`."""
    rng = np.random.default_rng(seed)
    lines = ["f1,f2,species"]
    for i in range(n):
        lines.append(f"{rng.normal():.5f},{rng.normal():.5f},{classes[i % len(classes)]}")
    return ("\n".join(lines) + "\n").encode()


def npz_bytes(**arrays: Any) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def upload(client: Any, data: bytes, filename: str = "data.csv", **fields: str) -> Any:
    return client.post("/v1/datasets", files={"file": (filename, data)}, data=fields)


@pytest.fixture
def limited(client: Any) -> Iterator[Any]:
    """The client with small dataset limits (real Settings, different values)."""
    small = get_settings().model_copy(
        update={"max_upload_bytes": 4096, "max_dataset_classes": 4, "max_dataset_rows": 500}
    )
    client.app.dependency_overrides[get_settings] = lambda: small
    yield client
    client.app.dependency_overrides.clear()


def test_csv_upload_is_stored_with_shape_classes_and_hash(client: Any) -> None:
    data = make_csv()
    resp = upload(client, data, label_column="species", name="animals")
    assert resp.status_code == 201, resp.text
    body = resp.json()
    assert body["id"].startswith("ds_") and resp.headers["location"] == f"/v1/datasets/{body['id']}"
    assert body["name"] == "animals" and body["format"] == "csv"
    assert (body["n_rows"], body["n_features"], body["n_classes"]) == (30, 2, 3)
    assert body["class_names"] == ["cat", "dog", "owl"] and body["class_counts"] == [10, 10, 10]
    assert body["columns"] == ["f1", "f2"] and body["label_column"] == "species"
    assert body["image_shape"] is None and body["compatible_archs"] == ["linear", "mlp"]
    assert body["size_bytes"] == len(data)
    with session_scope() as s:
        art = s.scalar(select(Artifact).where(Artifact.key == f"datasets/{body['id']}.npz"))
        assert art is not None and art.data is not None and art.tenant_id is not None
        with np.load(io.BytesIO(art.data), allow_pickle=False) as npz:
            X, y = npz["X"], npz["y"]
    assert X.dtype == np.float32 and X.shape == (30, 2) and y.tolist()[:3] == [0, 1, 2]
    assert body["sha256"] == dataset_sha256(X, y)
    assert client.get(f"/v1/datasets/{body['id']}").json() == body


def test_same_content_twice_returns_the_existing_dataset(client: Any) -> None:
    first = upload(client, make_csv(), label_column="species", name="a")
    again = upload(client, make_csv(), "other.csv", label_column="species", name="b")
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json()["id"] == first.json()["id"] and again.json()["name"] == "a"
    assert counts() == (1, 1)
    other = upload(client, make_csv(seed=1), label_column="species")
    assert other.status_code == 201 and other.json()["sha256"] != first.json()["sha256"]


def test_raw_body_upload_with_query_parameters(client: Any) -> None:
    resp = client.post(
        "/v1/datasets?label_column=species&name=raw",
        content=make_csv(),
        headers={"content-type": "text/csv"},
    )
    assert resp.status_code == 201, resp.text
    assert resp.json()["format"] == "csv" and resp.json()["name"] == "raw"


def test_parquet_upload(client: Any) -> None:
    table = pa.table(
        {
            "x1": [0.1, 0.2, 0.3, 1.1, 1.2, 1.3],
            "x2": [1, 2, 3, 4, 5, 6],
            "label": [0, 0, 0, 1, 1, 1],
        }
    )
    buf = io.BytesIO()
    pq.write_table(table, buf)
    resp = upload(client, buf.getvalue(), "t.parquet")
    assert resp.status_code == 201, resp.text
    assert resp.json()["format"] == "parquet" and resp.json()["class_counts"] == [3, 3]


def test_npz_images_keep_their_shape_and_fit_every_arch(client: Any) -> None:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(12, 4, 5)).astype(np.float32)
    y = np.array([0, 1, 2] * 4)
    resp = upload(client, npz_bytes(X=X, y=y), "imgs.npz")
    assert resp.status_code == 201, resp.text
    body = resp.json()
    assert body["image_shape"] == [4, 5] and body["n_features"] == 20
    # 4x5 images are too small for resnet
    assert body["compatible_archs"] == ["linear", "mlp", "cnn", "gru", "transformer"]
    with session_scope() as s:
        art = s.scalar(select(Artifact).where(Artifact.key == f"datasets/{body['id']}.npz"))
        assert art is not None and art.data is not None
        with np.load(io.BytesIO(art.data), allow_pickle=False) as npz:
            assert npz["X"].shape == (12, 4, 5)
    job = client.post(
        "/v1/jobs",
        json={
            "dataset": {"source": "upload", "id": body["id"]},
            "model": {"arch": "cnn", "hidden": [4]},
        },
    )
    assert job.status_code == 202, job.text


def test_flat_upload_with_cnn_says_which_architectures_fit(client: Any) -> None:
    ds = upload(client, make_csv(), label_column="species").json()
    resp = client.post(
        "/v1/jobs", json={"dataset": {"source": "upload", "id": ds["id"]}, "model": {"arch": "cnn"}}
    )
    assert resp.status_code == 422
    assert "linear, mlp" in resp.json()["detail"]


def _pickled_npz() -> bytes:
    return npz_bytes(X=np.array([{"a": 1}] * 6, dtype=object), y=np.array([0, 1] * 3))


BAD_UPLOADS = [
    (
        "non-numeric",
        b"f1,f2,label\n1,a,0\n2,b,0\n3,c,0\n4,d,1\n5,e,1\n6,f,1\n",
        {},
        "not numeric",
        "f2",
    ),
    ("nan", b"f1,f2,label\n1,1,0\n2,nan,0\n3,1,0\n4,1,1\n5,1,1\n6,1,1\n", {}, "NaN", "f2"),
    ("missing-cell", b"f1,f2,label\n1,1,0\n2,,0\n3,1,0\n4,1,1\n5,1,1\n6,1,1\n", {}, "NaN", "f2"),
    ("inf", b"f1,f2,label\n1,1,0\ninf,1,0\n3,1,0\n4,1,1\n5,1,1\n6,1,1\n", {}, "inf", "f1"),
    ("one-class", b"f1,label\n1,a\n2,a\n3,a\n4,a\n", {}, "at least 2 classes", None),
    (
        "no-label-column",
        b"f1,f2,target\n1,1,0\n2,1,1\n",
        {},
        "label column 'label' not found",
        "label",
    ),
    (
        "named-label-missing",
        b"f1,label\n1,0\n2,1\n",
        {"label_column": "kind"},
        "label column 'kind' not found",
        "kind",
    ),
    ("too-few-per-class", b"f1,label\n1,a\n2,a\n3,a\n4,b\n5,b\n", {}, "fewer than 3 rows", None),
    ("no-header", b"1,2,0\n3,4,1\n5,6,0\n", {}, "no header row", None),
    ("duplicate-column", b"a,a,label\n1,2,0\n", {}, "more than once", "a"),
    ("empty", b"", {}, "empty", None),
    ("garbage-parquet", b"PAR1 this is not parquet", {"format": "parquet"}, "Parquet", None),
    ("npz-missing-y", npz_bytes(X=np.ones((6, 2))), {"format": "npz"}, "missing array", None),
    ("npz-pickle", _pickled_npz(), {"format": "npz"}, "pickle", None),
    ("npz-not-zip", b"not a zip file", {"format": "npz"}, "NPZ", None),
    ("unknown-format", b"a,label\n", {"format": "xlsx"}, "not supported", None),
]


@pytest.mark.parametrize(
    ("data", "fields", "needle", "column"),
    [b[1:] for b in BAD_UPLOADS],
    ids=[b[0] for b in BAD_UPLOADS],
)
def test_bad_upload_is_422_naming_the_problem_and_stores_nothing(
    client: Any, data: bytes, fields: dict[str, str], needle: str, column: str | None
) -> None:
    resp = upload(client, data, "data.csv" if "format" not in fields else "data.bin", **fields)
    assert resp.status_code == 422, resp.text
    assert resp.headers["content-type"].startswith(PROBLEM)
    body = resp.json()
    assert needle.lower() in body["detail"].lower(), body["detail"]
    if column is not None:
        assert body["errors"][0]["column"] == column, body
    assert counts() == (0, 0)


def test_too_many_classes_and_rows_against_the_configured_limits(limited: Any) -> None:
    five = b"f,label\n" + b"".join(f"{i},{i % 5}\n".encode() for i in range(15))
    resp = upload(limited, five)
    assert resp.status_code == 422
    assert "too many classes: 5 > the limit of 4" in resp.json()["detail"]
    rows = b"f,label\n" + b"".join(f"{i % 10},{i % 2}\n".encode() for i in range(501))
    resp = upload(limited, rows)
    assert resp.status_code == 422 and "too many rows" in resp.json()["detail"]
    assert counts() == (0, 0)


def _npz_declaring(shape: tuple[int, ...]) -> bytes:
    """An NPZ whose X.npy header declares `shape` but holds no data (a decompression bomb)."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f4", "fortran_order": False, "shape": shape}
    )
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("X.npy", header.getvalue())
        zf.writestr("y.npy", header.getvalue())
    return archive.getvalue()


def test_compressed_uploads_are_sized_from_their_headers_before_unpacking(
    client: Any, limited: Any
) -> None:
    resp = upload(client, _npz_declaring((10**9, 1000)), "bomb.npz")  # 4 TB if unpacked
    assert resp.status_code == 422 and "too many rows: 1000000000" in resp.json()["detail"]
    resp = upload(client, _npz_declaring((10, 10**6)), "wide.npz")
    assert resp.status_code == 422 and "too many feature columns" in resp.json()["detail"]
    buf = io.BytesIO()
    np.savez_compressed(buf, X=np.zeros((100_000, 2), np.float32), y=np.zeros(100_000, int))
    resp = upload(limited, buf.getvalue(), "zeros.npz")
    assert resp.status_code == 422 and "too many rows: 100000 > the limit of 500" in resp.text
    table = pa.table({"x": np.zeros(600), "label": np.arange(600) % 2})
    buf = io.BytesIO()
    pq.write_table(table, buf)
    resp = upload(limited, buf.getvalue(), "t.parquet")
    assert resp.status_code == 422 and "too many rows: 600" in resp.json()["detail"]
    assert counts() == (0, 0)


def test_oversized_upload_is_413_and_stores_nothing(limited: Any) -> None:
    big = make_csv(n=400)
    assert len(big) > 4096
    resp = upload(limited, big, label_column="species")
    assert resp.status_code == 413
    assert resp.headers["content-type"].startswith(PROBLEM)
    assert "4096" in resp.json()["detail"]
    chunks = iter([big[i : i + 1000] for i in range(0, len(big), 1000)])
    resp = limited.post(
        "/v1/datasets?label_column=species", content=chunks, headers={"content-type": "text/csv"}
    )
    assert resp.status_code == 413
    assert counts() == (0, 0)


@pytest.mark.parametrize(
    ("files", "needle"),
    [
        ({"name": (None, b"x")}, "exactly one `file` part"),
        (
            {"file": ("a.csv", b"f,label\n1,0\n"), "labels": (None, b"x")},
            "unknown form field 'labels'",
        ),
        ({"file": ("a.dat", b"f,label\n1,0\n")}, "cannot tell the file format"),
    ],
    ids=["no-file", "unknown-field", "no-format"],
)
def test_malformed_forms_are_422(client: Any, files: dict, needle: str) -> None:
    resp = client.post("/v1/datasets", files=files)
    assert resp.status_code == 422, resp.text
    assert needle in resp.json()["detail"]
    assert counts() == (0, 0)


def test_list_is_paginated_newest_first(client: Any) -> None:
    ids = [upload(client, make_csv(seed=i), label_column="species").json()["id"] for i in range(3)]
    page = client.get("/v1/datasets?limit=2").json()
    assert [d["id"] for d in page["items"]] == ids[::-1][:2] and page["next_cursor"]
    rest = client.get(f"/v1/datasets?limit=2&cursor={page['next_cursor']}").json()
    assert [d["id"] for d in rest["items"]] == [ids[0]] and rest["next_cursor"] is None


def test_other_tenants_dataset_is_404_like_a_missing_one(client: Any) -> None:
    from core.services.tenants import create_api_key

    ds = upload(client, make_csv(), label_column="species").json()
    with session_scope() as s:
        _, other_key = create_api_key(s, tenant_name="globex")
    other = {"Authorization": f"Bearer {other_key}"}
    theirs = client.get(f"/v1/datasets/{ds['id']}", headers=other)
    missing = client.get("/v1/datasets/ds_missing", headers=other)
    assert theirs.status_code == missing.status_code == 404
    assert theirs.json()["detail"].replace(ds["id"], "X") == missing.json()["detail"].replace(
        "ds_missing", "X"
    )
    assert client.delete(f"/v1/datasets/{ds['id']}", headers=other).status_code == 404
    assert client.get("/v1/datasets", headers=other).json()["items"] == []
    job = client.post(
        "/v1/jobs", headers=other, json={"dataset": {"source": "upload", "id": ds["id"]}}
    )
    assert job.status_code == 422
    assert (
        client.post(
            "/v1/datasets",
            headers={"Authorization": "Bearer nope"},
            files={"file": ("a.csv", make_csv())},
        ).status_code
        == 401
    )


def test_delete_is_409_while_a_job_uses_it_and_finished_jobs_keep_results(client: Any) -> None:
    ds = upload(client, make_csv(), label_column="species").json()
    job = client.post("/v1/jobs", json={"dataset": {"source": "upload", "id": ds["id"]}}).json()
    resp = client.delete(f"/v1/datasets/{ds['id']}")
    assert resp.status_code == 409 and job["id"] in resp.json()["detail"]
    with session_scope() as s:  # the job finishes (as a worker would record it)
        s.execute(
            update(Job)
            .where(Job.id == job["id"])
            .values(status="succeeded", result={"test": {"accuracy": 1.0}})
        )
    assert client.delete(f"/v1/datasets/{ds['id']}").status_code == 204
    assert client.get(f"/v1/datasets/{ds['id']}").status_code == 404
    assert client.delete(f"/v1/datasets/{ds['id']}").status_code == 404
    assert counts() == (0, 0)
    assert client.get(f"/v1/jobs/{job['id']}/result").json()["test"] == {"accuracy": 1.0}


def _send_until_response(url: str, head: bytes, chunk: bytes, *, max_chunks: int) -> bytes:
    """Send headers, then body chunks until the server answers; return the first response bytes."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(head)
        sock.settimeout(0.05)
        for _ in range(max_chunks):
            try:
                data = sock.recv(4096)
                if data:
                    return data
            except TimeoutError:
                pass
            try:
                sock.sendall(chunk)
            except OSError:
                break
        sock.settimeout(10)
        return sock.recv(4096)


def test_real_server_refuses_oversized_streams_before_reading_them(
    db: str, redis_url: str, api_key: str, tmp_path: Path
) -> None:
    from tests.processes import start_api, stop_process

    api = start_api(tmp_path / "api.log", env={"SOFTLABEL_MAX_UPLOAD_BYTES": "4096"})
    try:
        auth = f"Authorization: Bearer {api_key}\r\n".encode()
        started = time.monotonic()
        # A declared 1 GB body: answered 413 at once; the client never sends the gigabyte.
        head = (
            b"POST /v1/datasets?format=csv HTTP/1.1\r\nHost: x\r\n"
            + auth
            + b"Content-Type: text/csv\r\nContent-Length: 1000000000\r\n\r\n"
        )
        reply = _send_until_response(api.info["url"], head, b"1,2\n" * 256, max_chunks=20)
        assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
        # A chunked body of unknown length: cut off once 4 KiB have arrived (far from its end).
        head = (
            b"POST /v1/datasets?format=csv HTTP/1.1\r\nHost: x\r\n"
            + auth
            + b"Content-Type: text/csv\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        chunk = b"400\r\n" + b"1,2\n" * 256 + b"\r\n"  # 1 KiB chunks
        reply = _send_until_response(api.info["url"], head, chunk, max_chunks=1000)
        assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
        assert b"problem+json" in reply
        assert time.monotonic() - started < 30
    finally:
        stop_process(api)
    assert counts() == (0, 0)
