"""No input produces a 500, and nothing is stored half-way: NUL and surrogates anywhere,
overflowing sums, malformed URLs, deep nesting, underflowing α, loose types. A real 500 is
problem+json with the request id, and its traceback is logged."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from api.main import create_app
from core.db import session_scope
from core.models import Dataset, IdempotencyKey, Job, Sweep

PROBLEM = "application/problem+json"
NUL = "\x00"


def stored() -> tuple[int, int, int, int]:
    with session_scope() as s:
        models = (Job, Sweep, Dataset, IdempotencyKey)
        return tuple(  # type: ignore[return-value]
            s.scalar(select(func.count()).select_from(m)) for m in models
        )


def assert_4xx(resp: Any, *, status: int = 422) -> None:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith(PROBLEM), resp.headers
    assert resp.json()["detail"]


URLS_WITH_NUL = [
    "/v1/jobs/job_%00abc", "/v1/jobs/%00", "/v1/jobs/job_x%00/result",
    "/v1/jobs/job_x/artifacts/a%00b", "/v1/sweeps/sw_%00", "/v1/datasets/ds_%00",
    "/v1/jobs?cursor=%00", "/v1/jobs?tag=team:%00x", "/v1/jobs?tag=%00:x",
    "/v1/jobs?sweep_id=sw%00", "/v1/sweeps?cursor=abc%00", "/v1/datasets?cursor=%00",
    "/v1/jobs?limit=5&%00=1", "/v1/sweeps?cursor=&limit=3&=null",
]


@pytest.mark.parametrize("url", URLS_WITH_NUL)
def test_nul_in_path_ids_and_query_params_is_422(client: Any, url: str) -> None:
    assert_4xx(client.get(url))


BAD_SPECS: list[dict[str, Any]] = [
    {"tags": {"team": f"a{NUL}b"}},
    {"tags": {f"k{NUL}": "v"}},
    {"tags": {"team": "\ud800"}},
    {"dataset": {"source": "upload", "id": f"ds_{NUL}"}},
    {"webhook_url": f"https://example.com/{NUL}"},
    {"webhook_url": "http://[::1/"},
    {"webhook_url": "http://[zz::1]/"},
    {"webhook_url": "http://example.com:99999/"},
    {"webhook_url": "http://example.com:port/"},
    {"loss": {"variant": "prior", "prior": [1e308, 1e308, 1e308]}},
    {"loss": {"variant": "prior", "prior": [1.7976931348623157e308, 1.0]}},
    {"loss": {"alpha": 5e-324}},
    {"loss": {"alpha": 1e-310}},
    {"training": {"epochs": True}},
    {"training": {"epochs": "3"}},
    {"training": {"batch_size": 12.5}},
    {"split": {"seed": False}},
    {"calibration": {"n_bins": "15"}},
    {"model": {"hidden": [True]}},
    {"training": {"augment": "yes"}},
]


@pytest.mark.parametrize("spec", BAD_SPECS, ids=range(len(BAD_SPECS)))
def test_bad_job_specs_are_422_and_store_nothing(client: Any, spec: dict[str, Any]) -> None:
    headers = {"Content-Type": "application/json"}  # json.dumps escapes NUL and surrogates
    assert_4xx(client.post("/v1/jobs", content=json.dumps(spec), headers=headers))
    sweep = json.dumps({"base": spec, "alphas": [0.1]})
    assert_4xx(client.post("/v1/sweeps", content=sweep, headers=headers))
    assert stored() == (0, 0, 0, 0)


def test_tiny_alpha_in_a_sweep_and_non_finite_numbers(client: Any) -> None:
    assert_4xx(client.post("/v1/sweeps", json={"alphas": [0.1, 5e-324]}))
    for raw in ('{"loss": {"alpha": NaN}}', '{"loss": {"alpha": Infinity}}',
                '{"label_noise": -Infinity}'):
        resp = client.post("/v1/jobs", content=raw, headers={"Content-Type": "application/json"})
        assert_4xx(resp)
    assert stored() == (0, 0, 0, 0)


def test_deeply_nested_json_is_422_with_and_without_idempotency_key(client: Any) -> None:
    for depth in (100, 5_000, 100_000):
        body = "[" * depth + "]" * depth
        for headers in ({}, {"Idempotency-Key": f"deep-{depth}"}):
            resp = client.post("/v1/jobs", content=body,
                               headers={"Content-Type": "application/json", **headers})
            assert resp.status_code in (413, 422), (depth, resp.status_code, resp.text[:200])
            assert resp.headers["content-type"].startswith(PROBLEM)
    assert stored()[:3] == (0, 0, 0)


def test_nul_in_upload_names_is_422(client: Any) -> None:
    csv = b"a,b,label\n1,2,x\n3,4,y\n" * 20
    resp = client.post("/v1/datasets?format=csv&name=n%00", content=csv,
                       headers={"Content-Type": "text/csv"})
    assert_4xx(resp)
    resp = client.post("/v1/datasets", files={"file": (f"d{NUL}.csv", csv, "text/csv")},
                       data={"name": "ok"})
    assert_4xx(resp)
    resp = client.post("/v1/datasets", files={"file": ("d.csv", csv, "text/csv")},
                       data={"name": f"bad{NUL}name"})
    assert_4xx(resp)
    assert stored() == (0, 0, 0, 0)


def test_unexpected_errors_are_problem_json_500_with_request_id_and_logged(
    db: str, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    app = create_app()

    @app.get("/v1/_test_boom")
    def boom() -> None:  # an unexpected bug, not an AppError
        raise RuntimeError("kaboom")

    with TestClient(app, raise_server_exceptions=False) as c, caplog.at_level(logging.ERROR):
        resp = c.get("/v1/_test_boom", headers={"X-Request-ID": "req-boom-1"})
    assert resp.status_code == 500
    assert resp.headers["content-type"].startswith(PROBLEM)
    body = resp.json()
    assert body["request_id"] == "req-boom-1" and "req-boom-1" in body["detail"]
    assert resp.headers["x-request-id"] == "req-boom-1"
    assert "kaboom" not in resp.text
    assert any(r.exc_info and "kaboom" in str(r.exc_info[1]) for r in caplog.records)
