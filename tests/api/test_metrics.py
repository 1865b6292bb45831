"""Operations: /metrics, request ids and JSON logs, body-size limits (413 before buffering)."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest

from core.db import session_scope
from core.logging import JsonFormatter
from core.services import jobs as job_service

PROBLEM = "application/problem+json"
METRICS_KEY = "metrics-test-key"


@pytest.fixture(autouse=True)
def metrics_key(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """This module's app requires METRICS_KEY on /metrics."""
    from core.config import get_settings

    monkeypatch.setenv("SOFTLABEL_METRICS_KEY", METRICS_KEY)
    get_settings.cache_clear()
    yield
    monkeypatch.delenv("SOFTLABEL_METRICS_KEY")
    get_settings.cache_clear()


def _metric(text: str, line_start: str) -> float:
    for line in text.splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{line_start} not in metrics")


def test_metrics_report_jobs_queue_durations_and_latency(client: Any) -> None:
    ids = [client.post("/v1/jobs", json={"model": {"hidden": [32]}}).json()["id"] for _ in range(3)]
    with session_scope() as s:  # one job through claim → complete, as a worker would
        assert job_service.claim_job(s, job_id=ids[0], owner="w1", lease_seconds=30)
        assert job_service.complete_job(s, job_id=ids[0], owner="w1", result={"ok": True})
    client.get(f"/v1/jobs/{ids[1]}")
    client.get("/v1/jobs/job_missing")
    assert client.get("/metrics", headers={"Authorization": ""}).status_code == 401
    resp = client.get("/metrics", headers={"Authorization": f"Bearer {METRICS_KEY}"})
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/plain")
    text = resp.text
    assert _metric(text, 'softlabel_jobs{status="queued"}') == 2
    assert _metric(text, 'softlabel_jobs{status="succeeded"}') == 1
    assert _metric(text, 'softlabel_jobs{status="failed"}') == 0
    assert _metric(text, 'softlabel_queue_depth{queue="training"}') == 2
    assert _metric(text, 'softlabel_job_duration_seconds_count{status="succeeded"}') == 1
    assert _metric(text, 'softlabel_job_duration_seconds_bucket{le="+Inf",status="succeeded"}') == 1
    route = 'softlabel_http_request_duration_seconds_count{method="GET",route="/v1/jobs/{job_id}"'
    assert _metric(text, route + ',status="2xx"}') >= 1
    assert _metric(text, route + ',status="4xx"}') >= 1
    assert 'route="/v1/jobs",status="2xx"' in text


def test_request_id_is_echoed_or_generated(client: Any) -> None:
    resp = client.get("/v1/jobs", headers={"X-Request-ID": "pipeline-42"})
    assert resp.headers["x-request-id"] == "pipeline-42"
    generated = client.get("/v1/jobs", headers={"X-Request-ID": "bad id with spaces"})
    assert len(generated.headers["x-request-id"]) == 32


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(JsonFormatter())
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture
def access_log() -> Iterator[_Capture]:
    handler = _Capture()
    logger = logging.getLogger("softlabel.access")
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)


def test_access_log_is_json_with_request_id_tenant_and_job_id(
    client: Any, access_log: _Capture
) -> None:
    job_id = client.post("/v1/jobs", json={}).json()["id"]
    client.get(f"/v1/jobs/{job_id}", headers={"X-Request-ID": "req-7"})
    docs = [json.loads(line) for line in access_log.lines]
    hit = next(d for d in docs if d.get("request_id") == "req-7")
    assert hit["job_id"] == job_id
    assert hit["route"] == "/v1/jobs/{job_id}" and hit["status"] == 200
    assert hit["tenant_id"].startswith("ten_") and hit["duration_ms"] >= 0
    assert hit["level"] == "info" and hit["logger"] == "softlabel.access"


def test_oversized_json_is_413_by_content_length(client: Any) -> None:
    body = b'{"tags": {"a": "' + b"x" * 1_100_000 + b'"}}'
    resp = client.post("/v1/jobs", content=body, headers={"content-type": "application/json"})
    assert resp.status_code == 413
    assert resp.headers["content-type"].startswith(PROBLEM)
    assert resp.json()["type"].endswith("payload-too-large")


def test_oversized_chunked_body_is_413_by_counting(client: Any) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"tags": {"a": "'
        for _ in range(40):
            yield b"x" * 50_000
        yield b'"}}'

    resp = client.post("/v1/jobs", content=chunks(), headers={"content-type": "application/json"})
    assert resp.status_code == 413
    assert resp.headers["content-type"].startswith(PROBLEM)
    assert "1000000 bytes" in resp.json()["detail"]


def test_413_over_a_real_socket_with_streamed_body(tmp_path: Any, db: str, api_key: str) -> None:
    import httpx

    from tests.processes import start_api, stop_process

    api = start_api(tmp_path / "api.log")
    try:
        def chunks() -> Iterator[bytes]:
            for _ in range(100):
                yield b" " * 20_000

        resp = httpx.post(
            f"{api.info['url']}/v1/jobs",
            content=chunks(),
            headers={"Authorization": f"Bearer {api_key}", "content-type": "application/json"},
            timeout=30,
        )
        assert resp.status_code == 413
        assert resp.headers["content-type"].startswith(PROBLEM)
    finally:
        stop_process(api)
