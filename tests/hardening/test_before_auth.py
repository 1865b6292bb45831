"""Nothing heavy before authentication, and the body limit holds on every route.

Measured on a real API process (uvicorn subprocess): its RSS before and after.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from core.db import session_scope
from core.models import Dataset, IdempotencyKey, Job
from tests.processes import Proc

BODY_MB = 40


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.fixture
def api(db: str, module_api: Proc) -> Proc:
    """The module's real API process, on a clean database."""
    return module_api


def _post_stream(url: str, path: str, headers: dict[str, str], total: int) -> tuple[bytes, int]:
    """Send headers and up to `total` body bytes; stop at the first response byte."""
    host, port = url.removeprefix("http://").split(":")
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {total}\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    chunk = b"[" * 65536  # deep JSON: what the old middleware parsed before the key check
    sent = 0
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(head.encode())
        sock.settimeout(0.02)
        while sent < total:
            try:
                data = sock.recv(4096)
                if data:
                    return data, sent
            except TimeoutError:
                pass
            try:
                sock.sendall(chunk)
            except OSError:
                break
            sent += len(chunk)
        sock.settimeout(10)
        return sock.recv(4096), sent


def counts() -> tuple[int, int, int]:
    with session_scope() as s:
        return tuple(  # type: ignore[return-value]
            s.scalar(select(func.count()).select_from(m)) for m in (Job, Dataset, IdempotencyKey)
        )


@pytest.mark.parametrize("path,content_type", [
    ("/v1/jobs", "application/json"),
    ("/v1/sweeps", "application/json"),
    ("/v1/datasets?format=csv", "text/csv"),
    ("/v1/datasets", "application/json"),
])
def test_idempotent_post_without_a_key_is_401_before_the_body(
    api: Proc, path: str, content_type: str
) -> None:
    before = rss_mb(api.popen.pid)
    for auth in ({}, {"Authorization": "Bearer sl_wrong"}):
        headers = {"Idempotency-Key": "k1", "Content-Type": content_type, **auth}
        reply, sent = _post_stream(api.info["url"], path, headers, BODY_MB << 20)
        assert reply.startswith(b"HTTP/1.1 401") or reply.startswith(b"HTTP/1.1 413"), reply[:300]
        assert b"problem+json" in reply
    grown = rss_mb(api.popen.pid) - before
    assert grown < 30, f"API RSS grew {grown:.0f} MB for a refused {BODY_MB} MB body"
    assert counts() == (0, 0, 0)


def test_authenticated_deep_body_with_key_is_hashed_not_parsed(api: Proc, api_key: str) -> None:
    before = rss_mb(api.popen.pid)
    body = b"[" * 900_000  # under the 1 MB JSON limit, far beyond any parser's depth
    resp = httpx.post(f"{api.info['url']}/v1/jobs", content=body, timeout=60, headers={
        "Authorization": f"Bearer {api_key}", "Idempotency-Key": "deep",
        "Content-Type": "application/json"})
    assert resp.status_code == 422 and resp.headers["content-type"].startswith(
        "application/problem+json"), resp.text[:300]
    assert rss_mb(api.popen.pid) - before < 100
    assert counts()[:2] == (0, 0)


@pytest.mark.parametrize("method,path", [
    ("GET", "/v1/jobs"), ("GET", "/healthz"), ("DELETE", "/v1/datasets/ds_x"),
    ("GET", "/v1/jobs/job_x"), ("OPTIONS", "/v1/jobs"),
])
def test_the_body_limit_applies_to_every_route(client: Any, method: str, path: str) -> None:
    resp = client.request(method, path, content=b"x" * 1_100_000)
    assert resp.status_code == 413, (method, path, resp.status_code)
    assert resp.headers["content-type"].startswith("application/problem+json")
