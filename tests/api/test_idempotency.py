"""Idempotency-Key on POSTs: replay, 422 on another body, 409 in flight, expiry, release."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import func, select, update

from core.db import session_scope
from core.models import IdempotencyKey, Job, Tenant
from core.services import idempotency
from core.timeutil import utcnow

SPEC = {"model": {"hidden": [32]}, "training": {"epochs": 3}, "tags": {"k": "v"}}


def job_count() -> int:
    with session_scope() as s:
        return int(s.scalar(select(func.count()).select_from(Job)) or 0)


def test_same_key_same_body_replays_the_original_response(client: Any) -> None:
    headers = {"Idempotency-Key": "submit-1"}
    first = client.post("/v1/jobs", json=SPEC, headers=headers)
    assert first.status_code == 202
    # same JSON, other key order and spacing: the same request
    again = client.post(
        "/v1/jobs",
        content=b'{"tags": {"k": "v"}, "training": {"epochs": 3},  "model": {"hidden": [32]}}',
        headers={**headers, "content-type": "application/json"},
    )
    assert again.status_code == 202
    assert again.content == first.content
    assert again.headers["content-type"] == first.headers["content-type"]
    assert again.headers["location"] == first.headers["location"]
    assert again.headers["idempotent-replayed"] == "true"
    assert job_count() == 1


def test_same_key_other_body_is_422_and_other_path_too(client: Any) -> None:
    headers = {"Idempotency-Key": "submit-2"}
    job_id = client.post("/v1/jobs", json=SPEC, headers=headers).json()["id"]
    other = client.post("/v1/jobs", json={**SPEC, "label_noise": 0.1}, headers=headers)
    assert other.status_code == 422
    assert other.headers["content-type"].startswith("application/problem+json")
    assert "different request body" in other.json()["detail"]
    cancel = client.post(f"/v1/jobs/{job_id}/cancel", headers=headers)
    assert cancel.status_code == 422
    assert job_count() == 1


def test_in_flight_original_is_409(client: Any) -> None:
    with session_scope() as s:
        tenant = s.scalar(select(Tenant).where(Tenant.name == "acme"))
        assert tenant is not None
        fingerprint = idempotency.request_fingerprint(
            method="POST",
            path="/v1/jobs",
            body=b'{"model": {"hidden": [32]}}',
            content_type="application/json",
        )
        claim = idempotency.claim_key(
            s,
            tenant_id=tenant.id,
            key="busy",
            method="POST",
            path="/v1/jobs",
            request_hash=fingerprint,
            ttl_hours=1,
        )
        assert claim.state == "new"
    resp = client.post("/v1/jobs", json={"model": {"hidden": [32]}},
                       headers={"Idempotency-Key": "busy"})
    assert resp.status_code == 409
    assert "still being processed" in resp.json()["detail"]
    assert job_count() == 0


def test_expired_key_runs_again_and_keys_are_per_tenant(client: Any) -> None:
    headers = {"Idempotency-Key": "submit-3"}
    first = client.post("/v1/jobs", json=SPEC, headers=headers).json()["id"]
    with session_scope() as s:
        s.execute(update(IdempotencyKey).values(expires_at=utcnow() - timedelta(seconds=1)))
    second = client.post("/v1/jobs", json=SPEC, headers=headers)
    assert second.status_code == 202 and second.json()["id"] != first
    assert "idempotent-replayed" not in second.headers
    from core.services.tenants import create_api_key

    with session_scope() as s:
        _, other_key = create_api_key(s, tenant_name="globex")
    third = client.post(
        "/v1/jobs", json=SPEC, headers={**headers, "Authorization": f"Bearer {other_key}"}
    )
    assert third.status_code == 202 and third.json()["id"] not in (first, second.json()["id"])
    assert job_count() == 3


def test_validation_errors_are_remembered_rate_limits_are_not(client: Any) -> None:
    headers = {"Idempotency-Key": "bad-1"}
    bad = client.post("/v1/jobs", json={"loss": {"alpha": 2}}, headers=headers)
    assert bad.status_code == 422
    replay = client.post("/v1/jobs", json={"loss": {"alpha": 2}}, headers=headers)
    assert replay.content == bad.content and replay.headers["idempotent-replayed"] == "true"

    from core.config import get_settings

    settings = get_settings()
    old = settings.max_active_jobs_per_tenant
    settings.max_active_jobs_per_tenant = 1
    try:
        assert client.post("/v1/jobs", json=SPEC).status_code == 202
        limited = client.post("/v1/jobs", json=SPEC, headers={"Idempotency-Key": "rl"})
        assert limited.status_code == 429 and int(limited.headers["retry-after"]) > 0
    finally:
        settings.max_active_jobs_per_tenant = old
    # the 429 released the key: the retry runs
    retried = client.post("/v1/jobs", json=SPEC, headers={"Idempotency-Key": "rl"})
    assert retried.status_code == 202 and "idempotent-replayed" not in retried.headers


def test_unauthenticated_post_with_key_is_401_and_stores_nothing(client: Any) -> None:
    resp = client.post("/v1/jobs", json=SPEC,
                       headers={"Idempotency-Key": "x", "Authorization": "Bearer nope"})
    assert resp.status_code == 401
    with session_scope() as s:
        assert s.scalar(select(func.count()).select_from(IdempotencyKey)) == 0


def test_ttl_is_documented_in_openapi(client: Any) -> None:
    schema = client.get("/openapi.json").json()
    params = schema["paths"]["/v1/jobs"]["post"]["parameters"]
    header = next(p for p in params if p["name"] == "Idempotency-Key")
    assert "24 hours" in header["description"]
