"""The dashboard's session, CSRF, headers and tenant isolation over the real app (no browser)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from core.db import session_scope
from core.services.jobs import create_job
from core.services.tenants import create_api_key, revoke_api_key
from core.spec import JobSpec

CSRF_FIELD = re.compile(r'name="csrf" value="([^"]*)"')


@pytest.fixture
def browser(db: str, redis_url: str) -> Iterator[TestClient]:
    """The app as a browser sees it: no Authorization header, cookies kept."""
    with TestClient(create_app(), follow_redirects=False) as c:
        yield c


def _login(browser: TestClient, key: str) -> Any:
    page = browser.get("/ui/login")
    token = CSRF_FIELD.search(page.text)
    assert token is not None
    return browser.post(
        "/ui/login", data={"api_key": key, "csrf": token.group(1), "next": "/ui/jobs"}
    )


def _job(tenant: str) -> str:
    with session_scope() as s:
        spec = JobSpec.model_validate({"dataset": {"source": "builtin", "name": "iris"}})
        from core.models import Tenant
        from core.services.tenants import get_or_create_tenant

        owner: Tenant = get_or_create_tenant(s, name=tenant)
        job = create_job(s, tenant_id=owner.id, spec=spec.model_dump(mode="json"), max_attempts=3)
        return job.id


def test_pages_redirect_to_login_and_login_sets_a_strict_httponly_cookie(
    browser: TestClient, api_key: str
) -> None:
    first = browser.get("/ui/jobs?status=running")
    assert first.status_code == 303
    assert first.headers["location"] == "/ui/login?next=/ui/jobs%3Fstatus%3Drunning"
    bad = _login(browser, "sl_not_a_key")
    assert bad.status_code == 401 and "invalid or revoked" in bad.text
    ok = _login(browser, api_key)
    assert ok.status_code == 303 and ok.headers["location"] == "/ui/jobs"
    cookie = next(c for c in ok.headers.get_list("set-cookie") if "softlabel_session=" in c)
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/" in cookie
    assert "Secure" not in cookie  # plain HTTP here; set when the request came over HTTPS
    page = browser.get("/ui/jobs")
    assert page.status_code == 200 and "tenant <strong>acme</strong>" in page.text
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert "<script>" not in page.text and " on" + "click=" not in page.text


def test_login_refuses_a_form_without_its_csrf_token(browser: TestClient, api_key: str) -> None:
    browser.get("/ui/login")
    resp = browser.post("/ui/login", data={"api_key": api_key, "csrf": "forged", "next": "/ui/"})
    assert resp.status_code == 401
    assert "softlabel_session=" not in resp.headers.get("set-cookie", "")
    assert "expired" in resp.text


def test_cookie_session_uses_the_json_api_and_writes_need_the_csrf_header(
    browser: TestClient, api_key: str
) -> None:
    _login(browser, api_key)
    job_id = _job("acme")
    assert browser.get(f"/v1/jobs/{job_id}").json()["id"] == job_id
    refused = browser.post(f"/v1/jobs/{job_id}/cancel")
    assert refused.status_code == 403
    assert refused.headers["content-type"].startswith("application/problem+json")
    assert "CSRF" in refused.json()["detail"]
    page = browser.get(f"/ui/jobs/{job_id}")
    token = CSRF_FIELD.search(page.text)
    assert token is not None and token.group(1)
    cross = browser.post(
        f"/v1/jobs/{job_id}/cancel",
        headers={"X-CSRF-Token": token.group(1), "Origin": "https://evil.example"},
    )
    assert cross.status_code == 403
    done = browser.post(f"/v1/jobs/{job_id}/cancel", headers={"X-CSRF-Token": token.group(1)})
    assert done.status_code == 202 and done.json()["status"] == "canceled"


def test_revoking_the_key_ends_the_session(browser: TestClient, db: str) -> None:
    with session_scope() as s:
        key, raw = create_api_key(s, tenant_name="acme")
        key_id = key.id
    _login(browser, raw)
    assert browser.get("/ui/jobs").status_code == 200
    with session_scope() as s:
        revoke_api_key(s, key_id=key_id)
    assert browser.get("/ui/jobs").status_code == 303
    assert browser.get("/v1/jobs").status_code == 401


def test_another_tenants_job_page_is_the_missing_page(browser: TestClient, api_key: str) -> None:
    theirs = _job("other")
    _login(browser, api_key)
    absent = "job_" + "0" * (len(theirs) - 4)
    a = browser.get(f"/ui/jobs/{theirs}")
    b = browser.get(f"/ui/jobs/{absent}")
    assert a.status_code == b.status_code == 404
    assert a.content == b.content and theirs not in a.text
    assert browser.get(f"/ui/sweeps/swp_{'0' * 32}").content == a.content
    assert browser.get("/ui/nothing/here").content == a.content


def test_embedded_mode_skips_the_login(
    db: str, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from core.config import get_settings

    monkeypatch.setenv("SOFTLABEL_AUTH_DISABLED", "true")
    monkeypatch.setenv("SOFTLABEL_I_UNDERSTAND_AUTH_IS_OFF", "true")  # the suite's Postgres
    get_settings.cache_clear()
    try:
        with TestClient(create_app(), follow_redirects=False) as c:
            page = c.get("/ui/jobs")
            assert page.status_code == 200 and "tenant <strong>local</strong>" in page.text
            assert c.get("/ui/login").status_code == 303
    finally:
        monkeypatch.delenv("SOFTLABEL_AUTH_DISABLED")
        monkeypatch.delenv("SOFTLABEL_I_UNDERSTAND_AUTH_IS_OFF")
        get_settings.cache_clear()


def test_static_files_are_ours_and_carry_the_vendored_licence(browser: TestClient) -> None:
    for path in ("/ui/static/ui.js", "/ui/static/ui.css", "/ui/static/vendor/uplot/LICENSE",
                 "/ui/static/vendor/uplot/uPlot.iife.min.js"):
        assert browser.get(path).status_code == 200, path
    assert "MIT" in browser.get("/ui/static/vendor/uplot/LICENSE").text


def test_softlabel_ui_prints_the_dashboard_url(monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from core.config import get_settings
    from softlabel.cli import app

    monkeypatch.setenv("SOFTLABEL_API_URL", "http://example.test:8000/")
    get_settings.cache_clear()
    try:
        runner = CliRunner()
        plain = runner.invoke(app, ["ui", "--no-open"])
        sweep = runner.invoke(app, ["ui", "--no-open", "--sweep", "swp_1"])
    finally:
        monkeypatch.delenv("SOFTLABEL_API_URL")
        get_settings.cache_clear()
    assert plain.exit_code == 0 and plain.output.strip() == "http://example.test:8000/ui/jobs"
    assert sweep.output.strip() == "http://example.test:8000/ui/sweeps/swp_1"
