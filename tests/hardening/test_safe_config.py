"""Safe configuration: auth-off needs a second flag on Postgres, /metrics needs a key or its
own bind address and shows no tenant's figures, every response says nosniff."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import httpx
import pytest

from api.safety import UnsafeConfigError, check_startup
from core.config import Settings
from core.db import session_scope
from core.services import tenants
from tests.processes import free_port, start_api, stop_process
from tests.worker.faults import create_job


@pytest.mark.parametrize("flag", [None, "false", "0"])
def test_auth_disabled_on_postgres_refuses_to_start(
    db: str, tmp_path: Path, flag: str | None
) -> None:
    env = {"SOFTLABEL_AUTH_DISABLED": "true"}
    if flag is not None:
        env["SOFTLABEL_I_UNDERSTAND_AUTH_IS_OFF"] = flag
    with pytest.raises(RuntimeError, match="exited during start-up") as err:
        start_api(tmp_path / "api.log", env=env, timeout=60)
    assert "SOFTLABEL_I_UNDERSTAND_AUTH_IS_OFF" in str(err.value)


def test_auth_disabled_with_the_second_flag_starts_and_warns(
    db: str, redis_url: str, tmp_path: Path
) -> None:
    env = {"SOFTLABEL_AUTH_DISABLED": "true", "SOFTLABEL_I_UNDERSTAND_AUTH_IS_OFF": "true"}
    api = start_api(tmp_path / "api.log", env=env)
    try:
        assert httpx.get(f"{api.info['url']}/v1/jobs", timeout=30).status_code == 200
    finally:
        stop_process(api)
    assert "SOFTLABEL_AUTH_DISABLED=true" in api.log_text()


def test_embedded_mode_with_auth_off_only_warns(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="softlabel.api"):
        check_startup(Settings(database_url="", auth_disabled=True))
    assert any("AUTH_DISABLED" in r.getMessage() for r in caplog.records)
    with pytest.raises(UnsafeConfigError):
        check_startup(Settings(database_url="postgresql+psycopg://x@h/db", auth_disabled=True))
    check_startup(Settings(database_url="postgresql+psycopg://x@h/db"))  # auth on: fine


def test_metrics_need_a_key_or_the_bind_address_and_show_no_tenant(
    db: str, redis_url: str, tmp_path: Path
) -> None:
    with session_scope() as s:
        key, raw = tenants.create_api_key(s, tenant_name="tenant-zebra-secret")
        tenant_id = key.tenant_id
    create_job(tenant_id, {"tags": {"project": "zebra-project"}})
    port = free_port()
    env = {"SOFTLABEL_METRICS_KEY": "m-key-1", "SOFTLABEL_METRICS_BIND": f"127.0.0.1:{port}"}
    api = start_api(tmp_path / "api.log", env=env)
    try:
        url = api.info["url"]
        for headers in ({}, {"Authorization": f"Bearer {raw}"},
                        {"Authorization": "Bearer m-key-2"}, {"Authorization": "m-key-1"}):
            resp = httpx.get(f"{url}/metrics", headers=headers, timeout=30)
            assert resp.status_code == 401, headers
            assert resp.headers["content-type"].startswith("application/problem+json")
        keyed = httpx.get(f"{url}/metrics", headers={"Authorization": "Bearer m-key-1"},
                          timeout=30)
        bound = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=30)
        assert httpx.get(f"http://127.0.0.1:{port}/v1/jobs", timeout=30).status_code == 404
    finally:
        stop_process(api)
    for resp in (keyed, bound):
        assert resp.status_code == 200 and 'softlabel_jobs{status="queued"} 1.0' in resp.text
        assert resp.headers["x-content-type-options"] == "nosniff"
        for secret in (tenant_id, "tenant-zebra-secret", "zebra-project", raw):
            assert secret not in resp.text


@pytest.mark.parametrize("path,status", [
    ("/healthz", 200), ("/v1/jobs", 200), ("/v1/jobs/job_nope", 404), ("/openapi.json", 200),
    ("/v1/nope", 404), ("/v1/jobs?limit=0", 422),
])
def test_every_response_says_nosniff(client: Any, path: str, status: int) -> None:
    resp = client.get(path)
    assert resp.status_code == status
    assert resp.headers["x-content-type-options"] == "nosniff"
