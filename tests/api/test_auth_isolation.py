"""Tenancy and auth on every route: 401 without a key; another tenant's ids are a 404.

The 404 is byte-identical to an absent id. Routes are discovered from the app, so new
routes are covered.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from sqlalchemy import select
from typer.testing import CliRunner

from api.main import create_app
from core import storage
from core.db import session_scope
from core.ids import new_id
from core.models import Dataset, Sweep, Tenant
from core.services.tenants import create_api_key
from softlabel.cli import app as cli_app
from tests.processes import cli

PUBLIC_PATHS = {"/healthz", "/readyz", "/openapi.json", "/docs", "/redoc",
                "/docs/oauth2-redirect"}
PARAM = re.compile(r"\{([^}]+)\}")


def _routes() -> list[tuple[str, str]]:
    """Every (method, path) the app serves, from its route table (via the OpenAPI generator,
    which walks `app.routes` including included routers), plus hidden API routes."""
    app = create_app()
    found = {
        (method.upper(), path)
        for path, item in app.openapi()["paths"].items()
        for method in item
    }
    for route in app.routes:  # routes hidden from the schema, if any
        if isinstance(route, APIRoute):
            found |= {(m, route.path) for m in route.methods - {"HEAD", "OPTIONS"}}
    # the dashboard's HTML pages (cookie sessions, login redirects) are tested in tests/ui/
    return sorted(r for r in found if not r[1].startswith("/ui"))


ROUTES = _routes()
ID_ROUTES = [(m, p) for m, p in ROUTES if PARAM.search(p)]


@pytest.fixture
def tenant_a_objects(client: Any) -> dict[str, str]:
    """A job (with an artifact), a dataset and a sweep of tenant acme."""
    job_id = client.post("/v1/jobs", json={"model": {"hidden": [32]}}).json()["id"]
    with session_scope() as s:
        tenant = s.scalar(select(Tenant).where(Tenant.name == "acme"))
        assert tenant is not None
        storage.put_artifact(
            s,
            key=storage.job_artifact_key(job_id, "model.safetensors"),
            data=b"weights",
            tenant_id=tenant.id,
            job_id=job_id,
        )
        dataset = Dataset(
            id=new_id("ds"), tenant_id=tenant.id, name="d", format="npz", sha256="0" * 64,
            n_rows=10, n_features=2, n_classes=2, info={}, size_bytes=10,
        )
        sweep = Sweep(
            id=new_id("swp"), tenant_id=tenant.id, status="queued", request={}, tags={},
            n_trials=1,
        )
        s.add_all([dataset, sweep])
        return {"job": job_id, "dataset": dataset.id, "sweep": sweep.id}


@pytest.fixture
def client_b(client: Any) -> Iterator[TestClient]:
    with session_scope() as s:
        _, raw = create_api_key(s, tenant_name="globex")
    with TestClient(create_app(), headers={"Authorization": f"Bearer {raw}"}) as c:
        yield c


def _fill(path: str, objects: dict[str, str]) -> tuple[str, str, dict[str, str]]:
    """The URL with tenant A's ids, the URL with absent ids of the same shape, and the swaps."""
    real, fake, swaps = path, path, {}
    for name in PARAM.findall(path):
        segment = path.split("{" + name + "}")[0].rstrip("/").rsplit("/", 1)[-1]
        kind = next((k for k in objects if segment.startswith(k)), None)
        if kind is None:
            value = absent = "model.safetensors" if name == "name" else "anything"
        else:
            value = objects[kind]
            prefix = value.split("_", 1)[0]
            absent = prefix + "_" + "0" * (len(value) - len(prefix) - 1)
            swaps[value] = absent
        real = real.replace("{" + name + "}", value)
        fake = fake.replace("{" + name + "}", absent)
    return real, fake, swaps


def test_id_routes_exist_for_every_resource() -> None:
    paths = {p for _, p in ID_ROUTES}
    for expected in ("/v1/jobs/{job_id}", "/v1/jobs/{job_id}/result", "/v1/jobs/{job_id}/events",
                     "/v1/jobs/{job_id}/cancel", "/v1/jobs/{job_id}/artifacts/{name}"):
        assert expected in paths


def test_other_tenants_ids_are_byte_identical_to_absent_ones(
    client: Any, client_b: TestClient, tenant_a_objects: dict[str, str]
) -> None:
    for method, path in ID_ROUTES:
        real, fake, swaps = _fill(path, tenant_a_objects)
        theirs = client_b.request(method, real)
        absent = client_b.request(method, fake)
        assert theirs.status_code == 404, (method, path, theirs.text)
        body = theirs.content
        for value, replacement in swaps.items():
            body = body.replace(value.encode(), replacement.encode())
        assert body == absent.content, (method, path)
        assert theirs.headers["content-type"] == absent.headers["content-type"], (method, path)
        assert theirs.headers["content-length"] == absent.headers["content-length"], path
    # and nothing happened to tenant A's objects
    mine = client.get(f"/v1/jobs/{tenant_a_objects['job']}").json()
    assert mine["status"] == "queued" and mine["cancel_requested"] is False
    assert client.get(f"/v1/jobs/{tenant_a_objects['job']}/artifacts/model.safetensors").content \
        == b"weights"
    if any(p == "/v1/datasets/{dataset_id}" for _, p in ROUTES):
        assert client.get(f"/v1/datasets/{tenant_a_objects['dataset']}").status_code == 200


def test_lists_show_only_the_callers_objects(
    client: Any, client_b: TestClient, tenant_a_objects: dict[str, str]
) -> None:
    for method, path in ROUTES:
        if method == "GET" and path.startswith("/v1/") and not PARAM.search(path):
            resp = client_b.get(path)
            assert resp.status_code == 200, path
            text = resp.text
            assert not any(v in text for v in tenant_a_objects.values()), path
    assert client.get("/v1/jobs").json()["items"][0]["id"] == tenant_a_objects["job"]


def test_every_non_public_route_refuses_missing_and_invalid_keys(client: Any) -> None:
    guarded = [(m, p) for m, p in ROUTES if p not in PUBLIC_PATHS]
    assert all(p.startswith("/v1/") or p == "/metrics" for _, p in guarded)
    for method, path in guarded:
        url = PARAM.sub("x", path)
        for headers in ({"Authorization": ""}, {"Authorization": "Bearer sl_nope"},
                        {"Authorization": "Basic dXNlcjpwYXNz"}):
            resp = client.request(method, url, headers=headers)
            assert resp.status_code == 401, (method, path, resp.text)
            assert resp.headers["www-authenticate"] == 'Bearer realm="softlabel"'
            assert resp.headers["content-type"].startswith("application/problem+json")


def test_keys_are_hashed_and_cli_create_revoke_work(client: Any, db: str) -> None:
    created = subprocess.run(  # the installed entry point, once, as an operator runs it
        cli("keys", "create", "--tenant", "initech", "--name", "ci"),
        capture_output=True, text=True, check=True,
    )
    doc = json.loads(created.stdout)
    raw = doc["key"]
    with session_scope() as s:
        from core.models import ApiKey

        stored = s.get(ApiKey, doc["id"])
        assert stored is not None and raw not in (stored.key_hash, stored.prefix)
    auth = {"Authorization": f"Bearer {raw}"}
    assert client.get("/v1/jobs", headers=auth).status_code == 200
    runner = CliRunner()
    listed = runner.invoke(cli_app, ["keys", "list", "--tenant", "initech"])
    assert listed.exit_code == 0
    assert raw not in listed.stdout and doc["id"] in listed.stdout
    revoked = runner.invoke(cli_app, ["keys", "revoke", doc["id"]])
    assert revoked.exit_code == 0
    resp = client.get("/v1/jobs", headers=auth)
    assert resp.status_code == 401 and "revoked" in resp.json()["detail"]
    assert runner.invoke(cli_app, ["keys", "revoke", doc["id"]]).exit_code == 2
