"""Job routes against the real app and real Postgres: submit, validation, 404/409, lists."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import func, select

from core.db import session_scope
from core.models import Job

PROBLEM = "application/problem+json"


def job_count() -> int:
    with session_scope() as s:
        return int(s.scalar(select(func.count()).select_from(Job)) or 0)


def test_submit_stores_queued_job_with_resolved_spec(client: Any) -> None:
    resp = client.post("/v1/jobs", json={"loss": {"alpha": 0.2}, "tags": {"team": "vision"}})
    assert resp.status_code == 202
    body = resp.json()
    assert body["id"].startswith("job_") and len(body["id"]) > 30
    assert body["status"] == "queued"
    assert resp.headers["location"] == f"/v1/jobs/{body['id']}"
    assert body["links"]["result"] == f"/v1/jobs/{body['id']}/result"
    spec = body["spec"]
    assert spec["loss"] == {"alpha": 0.2, "variant": "uniform", "prior": None, "form": "ce",
                            "method": "label_smoothing", "margin": None, "margin_weight": None,
                            "gamma": None, "beta": None}
    assert spec["model"] == {"arch": "mlp", "hidden": [256, 256], "dropout": 0.0, "depth": None}
    assert body["cost"]["parameters"] == 64 * 256 + 256 + 256 * 256 + 256 + 256 * 10 + 10
    assert spec["training"]["early_stopping"] == {"metric": "val_nll", "patience": 5}
    assert spec["calibration"]["n_bins"] == 15
    with session_scope() as s:
        row = s.get(Job, body["id"])
        assert row is not None and row.status == "queued" and row.attempt == 1
        assert row.spec == spec and row.enqueued_at is not None


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"loss": {"alpha": 1}}, "loss.alpha"),
        ({"loss": {"alpha": -0.1}}, "loss.alpha"),
        ({"status": "succeeded"}, "status"),
        ({"attempt": 5}, "attempt"),
        ({"model": {"arch": "mlp", "layers": 3}}, "model.layers"),
        ({"dataset": {"source": "builtin", "name": "mnist"}}, "dataset.builtin.name"),
        ({"training": {"epochs": -1}}, "training.epochs"),
        ({"training": {"epochs": "ten"}}, "training.epochs"),
        (
            {"model": {"arch": "cnn"}, "dataset": {"source": "builtin", "name": "iris"}},
            "model.arch",
        ),
        ({"loss": {"alpha": 0.1, "variant": "binary"}}, "loss.variant"),
        ({"loss": {"variant": "prior", "prior": [0.5, 0.5]}}, "loss.prior"),
        ({"dataset": {"source": "upload", "id": "ds_missing"}}, "dataset.id"),
        ({"webhook_url": "ftp://example.com/hook"}, "webhook_url"),
        (
            {"training": {"augment": True}, "dataset": {"source": "builtin", "name": "wine"}},
            "training.augment",
        ),
        ({"model": {"arch": "transformer", "hidden": [30]}}, "model"),
        ({"calibration": {"n_bins": 0}}, "calibration.n_bins"),
        (
            {
                "calibration": {"projection_classes": [0, 1, 5]},
                "dataset": {"source": "builtin", "name": "iris"},
            },
            "calibration.projection_classes",
        ),
        ({"label_noise": 1.0}, "label_noise"),
        ({"split": {"val": 0.6}}, "split.val"),
        ({"optimizer": {"name": "rmsprop"}}, "optimizer.name"),
    ],
)
def test_bad_spec_is_422_problem_and_stores_nothing(client: Any, spec: dict, field: str) -> None:
    resp = client.post("/v1/jobs", json=spec)
    assert resp.status_code == 422, resp.text
    assert resp.headers["content-type"].startswith(PROBLEM)
    body = resp.json()
    assert body["status"] == 422 and body["type"].endswith("validation-error")
    assert body["detail"]
    fields = [e["field"] for e in body["errors"]]
    assert any(f.startswith(field) for f in fields), fields
    assert job_count() == 0


def test_arch_mismatch_says_which_architectures_fit(client: Any) -> None:
    resp = client.post(
        "/v1/jobs",
        json={"model": {"arch": "gru"}, "dataset": {"source": "builtin", "name": "wine"}},
    )
    assert resp.status_code == 422
    assert "linear, mlp" in resp.json()["detail"]


def test_not_json_is_422(client: Any) -> None:
    resp = client.post(
        "/v1/jobs", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert resp.status_code == 422
    assert resp.headers["content-type"].startswith(PROBLEM)


def test_body_that_is_not_utf8_is_422(client: Any) -> None:
    resp = client.post(
        "/v1/jobs", content=b"\xff\xfe{", headers={"content-type": "application/json"}
    )
    assert resp.status_code == 422
    assert resp.headers["content-type"].startswith(PROBLEM)
    assert "could not be parsed" in resp.json()["detail"]


def test_unknown_job_is_404_problem(client: Any) -> None:
    resp = client.get("/v1/jobs/job_doesnotexist")
    assert resp.status_code == 404
    assert resp.headers["content-type"].startswith(PROBLEM)
    assert resp.json()["detail"] == "Job job_doesnotexist does not exist"


def test_result_of_queued_job_is_409(client: Any) -> None:
    job_id = client.post("/v1/jobs", json={}).json()["id"]
    resp = client.get(f"/v1/jobs/{job_id}/result")
    assert resp.status_code == 409
    assert resp.json()["job_status"] == "queued"
    assert "queued" in resp.json()["detail"]


def test_missing_or_bad_key_is_401_with_www_authenticate(client: Any) -> None:
    for headers in ({"Authorization": ""}, {"Authorization": "Bearer sl_wrong"}):
        resp = client.get("/v1/jobs", headers=headers)
        assert resp.status_code == 401
        assert resp.headers["www-authenticate"].startswith("Bearer")
        assert resp.headers["content-type"].startswith(PROBLEM)


def test_list_is_newest_first_and_cursor_paginated(client: Any) -> None:
    ids = [client.post("/v1/jobs", json={"tags": {"n": str(i)}}).json()["id"] for i in range(5)]
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 2}
        if cursor:
            params["cursor"] = cursor
        page = client.get("/v1/jobs", params=params).json()
        seen += [j["id"] for j in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == list(reversed(ids))
    tagged = client.get("/v1/jobs", params={"tag": "n:3"}).json()["items"]
    assert [j["id"] for j in tagged] == [ids[3]]
    assert client.get("/v1/jobs", params={"status": "running"}).json()["items"] == []
    assert client.get("/v1/jobs", params={"limit": 201}).status_code == 422
    assert client.get("/v1/jobs", params={"cursor": "%%%"}).status_code == 422


def test_health_and_readiness(client: Any) -> None:
    assert client.get("/healthz").json() == {"status": "ok", "checks": {}}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"database": True, "broker": True}
