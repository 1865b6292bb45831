"""The whole path over real HTTP: uvicorn API → Postgres → Redis → Celery worker → result."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.processes import Proc, wait_for_job


@pytest.fixture
def http(db: str, api_key: str, module_worker: Proc, module_api: Proc) -> Iterator[httpx.Client]:
    """An HTTP client to a real uvicorn process, with a real worker running."""
    with httpx.Client(
        base_url=module_api.info["url"], timeout=30, headers={"Authorization": f"Bearer {api_key}"}
    ) as client:
        yield client


def test_digits_job_succeeds_with_calibrated_result(http: httpx.Client) -> None:
    spec = {
        "dataset": {"source": "builtin", "name": "digits"},
        "loss": {"alpha": 0.1},
        "model": {"arch": "mlp", "hidden": [128]},
        "training": {"epochs": 25},
    }
    submitted = http.post("/v1/jobs", json=spec)
    assert submitted.status_code == 202
    job_id = submitted.json()["id"]

    job = wait_for_job(http, job_id, timeout=180)
    assert job["status"] == "succeeded", job
    assert job["attempt"] == 1
    assert job["started_at"] and job["finished_at"]
    assert job["progress"]["epochs"] == 25 and job["progress"]["epoch"] >= 1

    result = http.get(f"/v1/jobs/{job_id}/result").json()
    assert result["job_id"] == job_id
    assert result["spec"]["loss"]["alpha"] == 0.1
    test = result["test"]
    assert test["accuracy"] >= 0.95
    for name in (
        "nll",
        "brier",
        "ece",
        "ece_adaptive",
        "mce",
        "classwise_ece",
        "mean_confidence",
        "overconfidence",
        "mean_entropy",
    ):
        assert isinstance(test[name], float), name
    assert 0.0 <= test["ece"] <= 1.0
    assert len(test["reliability"]) == 15
    assert sum(b["count"] for b in test["reliability"]) == result["dataset"]["n_test"]
    assert result["dataset"]["n_classes"] == 10
    assert (
        result["dataset"]["n_train"] + result["dataset"]["n_val"] + result["dataset"]["n_test"]
        == 1797
    )
    history = result["history"]
    assert [h["epoch"] for h in history] == list(range(1, len(history) + 1))
    assert {"train_loss", "val_nll", "val_accuracy", "val_ece"} <= set(history[0])
    assert result["timing"]["train_s"] > 0 and result["timing"]["queued_s"] >= 0
    assert result["environment"]["device"] == "cpu"
    scaled = result["temperature_scaled"]
    assert scaled["temperature"] > 0 and "ece" in scaled["test"]

    png = http.get(f"/v1/jobs/{job_id}/artifacts/reliability.png")
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert png.content[:8] == b"\x89PNG\r\n\x1a\n"
    # Figures are drawn by the API from the result on first request; the links are there.
    assert {"reliability.png", "penultimate.png", "model.safetensors"} <= set(result["artifacts"])
    proj = http.get(result["artifacts"]["penultimate.png"])
    assert proj.status_code == 200 and proj.content[:8] == b"\x89PNG\r\n\x1a\n"
    assert http.get(f"/v1/jobs/{job_id}/artifacts/reliability.png").content == png.content
    model = http.get(f"/v1/jobs/{job_id}/artifacts/model.safetensors")
    assert model.status_code == 200
    header_len = int.from_bytes(model.content[:8], "little")
    header = json.loads(io.BytesIO(model.content[8 : 8 + header_len]).read())
    assert any(k.startswith("head.") for k in header)
    for private in ("checkpoint.safetensors", "checkpoint.pt"):
        assert http.get(f"/v1/jobs/{job_id}/artifacts/{private}").status_code == 404


def test_failing_job_ends_failed_with_reason_not_stuck_running(http: httpx.Client) -> None:
    spec = {"training": {"epochs": 2, "device": "cuda"}, "model": {"hidden": [16]}}
    job_id = http.post("/v1/jobs", json=spec).json()["id"]
    job = wait_for_job(http, job_id, timeout=60)
    import torch

    if torch.cuda.is_available():
        assert job["status"] == "succeeded"
    else:
        assert job["status"] == "failed"
        assert job["failure"]["reason"] == "device_unavailable"
        assert "cuda" in job["failure"]["message"].lower()
        problem = http.get(f"/v1/jobs/{job_id}/result")
        assert problem.status_code == 409
        assert "device_unavailable" in problem.json()["detail"]


def _events(client: Any, job_id: str) -> list[dict[str, Any]]:
    from sqlalchemy import select

    from core.db import session_scope
    from core.models import JobEvent

    with session_scope() as s:
        return [
            {"kind": e.kind, **e.data}
            for e in s.scalars(
                select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id)
            )
        ]


def test_transitions_are_recorded_once(http: httpx.Client) -> None:
    job_id = http.post(
        "/v1/jobs", json={"training": {"epochs": 3}, "model": {"hidden": [16]}}
    ).json()["id"]
    assert wait_for_job(http, job_id)["status"] == "succeeded"
    statuses = [e["status"] for e in _events(http, job_id) if e["kind"] == "status"]
    assert statuses == ["queued", "running", "succeeded"]
    progress = [e for e in _events(http, job_id) if e["kind"] == "progress"]
    assert [p["epoch"] for p in progress] == [1, 2, 3]
