"""Webhooks cannot reach inside: non-global addresses refused, one pinned resolution, bounded
attempts (deadline, bytes read), sanitised logs. Local servers on 127.0.0.1 only."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import func, select

from core.config import Settings
from core.db import session_scope
from core.models import Job, WebhookDelivery
from core.services import webhooks
from core.webhook_net import MAX_RESPONSE_BYTES, is_global_address
from tests.worker.faults import create_job, make_tenant

NON_GLOBAL = [
    "127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254",
    "100.100.100.200", "100.64.0.1", "0.0.0.0", "224.0.0.1", "255.255.255.255", "192.0.2.1",
    "198.18.0.1", "::1", "::", "fe80::1", "fc00::1", "::ffff:127.0.0.1", "::ffff:10.0.0.1",
    "2002:7f00:1::1", "2002:a00:1::1", "64:ff9b::7f00:1", "2001:0:4136:e378:8000:63bf:80ff:fffe",
    "ff02::1",
]
GLOBAL = ["8.8.8.8", "1.1.1.1", "93.184.216.34", "2606:4700:4700::1111"]


@pytest.mark.parametrize("address", NON_GLOBAL)
def test_every_non_global_address_is_refused(address: str) -> None:
    assert not is_global_address(address)
    host = f"[{address}]" if ":" in address else address
    with pytest.raises(webhooks.WebhookUrlError):
        webhooks.check_url(f"http://{host}/hook", allow_private=False,
                           resolver=lambda h, p: [address])


@pytest.mark.parametrize("address", GLOBAL)
def test_global_addresses_pass(address: str) -> None:
    assert is_global_address(address)


def test_submission_refuses_non_global_and_malformed_urls(client: Any) -> None:
    urls = ["http://100.100.100.200/latest", "http://[2002:7f00:1::1]/x", "http://[::1/",
            "http://[::ffff:127.0.0.1]/", "https://host:99999/", "http://0.0.0.0:80/",
            "ftp://example.com/", "http:///nohost"]
    for url in urls:
        resp = client.post("/v1/jobs", json={"webhook_url": url})
        assert resp.status_code == 422, (url, resp.text)
        assert resp.headers["content-type"].startswith("application/problem+json")
    with session_scope() as s:
        assert s.scalar(select(func.count()).select_from(Job)) == 0


class Server:
    """A raw TCP server on 127.0.0.1 answering each connection with `respond(conn)`."""

    def __init__(self, respond: Any) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.hits = 0
        self.respond = respond
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.hits += 1
            with conn:
                conn.settimeout(10)
                try:
                    conn.recv(65536)
                    self.respond(conn)
                except OSError:
                    pass

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def job_for(db: str) -> Iterator[Any]:
    def make(url: str) -> str:
        tenant_id, _ = make_tenant()
        job_id = create_job(tenant_id, {"training": {"epochs": 1}})
        with session_scope() as s:
            job = s.get(Job, job_id)
            assert job is not None
            job.spec = {**job.spec, "webhook_url": url}
            job.status = "failed"
        return job_id

    yield make


def _deliver(job_id: str, resolver: Any, **settings: Any) -> tuple[bool | None, WebhookDelivery]:
    config = Settings(webhook_allow_private=True, webhook_timeout_seconds=2.0, **settings)
    with session_scope() as s:
        outcome = webhooks.deliver(s, job_id=job_id, event="job.failed", attempt=1,
                                   settings=config, resolver=resolver)
    with session_scope() as s:
        row = s.scalars(select(WebhookDelivery).where(WebhookDelivery.job_id == job_id)).one()
        s.expunge(row)
    return outcome, row


def test_rebinding_cannot_redirect_a_delivery(job_for: Any) -> None:
    """The host resolves to 127.0.0.1 once, then to 127.0.0.2 (where nothing listens)."""
    server = Server(lambda c: c.sendall(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n"))
    calls: list[str] = []

    def rebinding(host: str, port: int) -> list[str]:
        calls.append(host)
        return ["127.0.0.1"] if len(calls) == 1 else ["127.0.0.2"]

    try:
        job_id = job_for(f"http://hooks.example.test:{server.port}/x")
        outcome, row = _deliver(job_id, rebinding)
    finally:
        server.close()
    assert outcome is True and row.status_code == 204
    assert calls == ["hooks.example.test"] and server.hits == 1


def test_rebinding_to_inside_is_refused_at_delivery(job_for: Any) -> None:
    job_id = job_for("http://hooks.example.test/x")
    config = Settings(webhook_allow_private=False)
    with session_scope() as s:
        outcome = webhooks.deliver(s, job_id=job_id, event="job.failed", attempt=1,
                                   settings=config, resolver=lambda h, p: ["100.100.100.200"])
    assert outcome is None
    with session_scope() as s:
        row = s.scalars(select(WebhookDelivery).where(WebhookDelivery.job_id == job_id)).one()
        assert row.status_code is None and "100.100.100.200" in (row.error or "")


def test_slow_drip_server_is_cut_at_the_total_deadline(job_for: Any) -> None:
    def drip(conn: socket.socket) -> None:
        for byte in b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 100:
            conn.sendall(bytes([byte]))
            time.sleep(0.2)  # the server's pace, not a guess at ours: 28 s in all

    server = Server(drip)
    try:
        job_id = job_for(f"http://127.0.0.1:{server.port}/x")
        started = time.monotonic()
        outcome, row = _deliver(job_id, lambda h, p: ["127.0.0.1"])
        took = time.monotonic() - started
    finally:
        server.close()
    assert outcome is False and row.status_code is None
    assert "TimeoutError" in (row.error or "")
    assert took < 12, took  # the 2 s deadline, far below the 28 s the server would take


def test_huge_or_hostile_bodies_are_capped_and_sanitised(job_for: Any) -> None:
    sent = {"bytes": 0}

    def flood(conn: socket.socket) -> None:
        head = b"HTTP/1.1 500 Oops\r\nContent-Length: 200000000\r\n\r\n"
        conn.sendall(head + b"<b>\x00inside\x1b[31m secret\r\n\t</b>")
        chunk = b"A" * 65536
        for _ in range(3000):  # 200 MB unless the reader hangs up
            conn.sendall(chunk)
            sent["bytes"] += len(chunk)

    server = Server(flood)
    try:
        job_id = job_for(f"http://127.0.0.1:{server.port}/x")
        outcome, row = _deliver(job_id, lambda h, p: ["127.0.0.1"])
    finally:
        server.close()
    assert outcome is False and row.status_code == 500
    error = row.error or ""
    assert error.startswith("HTTP 500: <b> inside [31m secret </b>")
    assert len(error) <= 220 and all(ch.isprintable() for ch in error)
    assert sent["bytes"] < 50_000_000, sent  # the sender stopped reading after the cap
    assert MAX_RESPONSE_BYTES <= 65536
