"""Cancel (queued at once, running within 5 s with its checkpoint kept, finished 409) and SSE."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from core import storage
from core.db import session_scope
from core.ml.pause import PAUSE_ENV
from tests.processes import start_worker, stop_process, wait_for_job
from worker.checkpoints import CHECKPOINT_NAME

FAST = {"model": {"hidden": [32]}, "training": {"epochs": 3}}
LONG = {"model": {"hidden": [32]}, "training": {"epochs": 400, "early_stopping": None}}


@pytest.fixture
def worker(db: str, redis_url: str, tmp_path: Path) -> Iterator[object]:
    """A worker whose training holds after epoch 2 until stopped: the job cannot finish first."""
    proc = start_worker(tmp_path / "worker.log", env={PAUSE_ENV: "2"})
    yield proc
    stop_process(proc)


def parse_sse(text: str) -> list[dict[str, Any]]:
    events = []
    for block in text.strip().split("\n\n"):
        lines = [line for line in block.splitlines() if not line.startswith(":")]
        fields = dict(line.split(": ", 1) for line in lines)
        if fields:
            events.append({"id": int(fields["id"]), "event": fields["event"],
                           "data": json.loads(fields["data"])})
    return events


def test_cancel_queued_job_is_immediate_and_cancel_again_is_409(client: Any) -> None:
    job_id = client.post("/v1/jobs", json=FAST).json()["id"]
    resp = client.post(f"/v1/jobs/{job_id}/cancel")
    assert resp.status_code == 202
    body = resp.json()
    assert body["status"] == "canceled" and body["failure"]["reason"] == "canceled"
    assert body["finished_at"] is not None
    again = client.post(f"/v1/jobs/{job_id}/cancel")
    assert again.status_code == 409
    assert again.headers["content-type"].startswith("application/problem+json")
    assert "already canceled" in again.json()["detail"]
    # the event stream of a finished job replays its history and ends
    events = parse_sse(client.get(f"/v1/jobs/{job_id}/events").text)
    assert [e["data"]["status"] for e in events] == ["queued", "canceled"]
    assert client.get("/v1/jobs/job_nope/events").status_code == 404


def test_running_job_stops_within_5s_keeps_checkpoint_and_streams_events(
    client: Any, worker: Any
) -> None:
    job_id = client.post("/v1/jobs", json=LONG).json()["id"]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["status"] == "running" and (job["progress"].get("epoch") or 0) >= 2:
            break
        time.sleep(0.1)
    else:
        raise AssertionError(f"job never ran: {worker.log_text()[-2000:]}")
    asked = time.monotonic()
    resp = client.post(f"/v1/jobs/{job_id}/cancel")
    assert resp.status_code == 202
    assert resp.json()["status"] == "running" and resp.json()["cancel_requested"] is True
    final = wait_for_job(client, job_id, timeout=10)
    took = time.monotonic() - asked
    assert final["status"] == "canceled", final
    assert took <= 5.0, f"cancel took {took:.2f}s"
    assert final["failure"]["reason"] == "canceled"
    assert final["progress"]["epoch"] < 400
    with session_scope() as s:
        found = storage.get_artifact(s, key=storage.job_artifact_key(job_id, CHECKPOINT_NAME))
    assert found is not None and len(found[1]) > 0
    assert client.post(f"/v1/jobs/{job_id}/cancel").status_code == 409

    events = parse_sse(client.get(f"/v1/jobs/{job_id}/events").text)
    kinds = [(e["event"], e["data"].get("status")) for e in events]
    assert kinds[0] == ("status", "queued") and kinds[1] == ("status", "running")
    assert ("cancel_requested", None) in kinds and kinds[-1] == ("status", "canceled")
    epochs = [e["data"]["epoch"] for e in events if e["event"] == "progress"]
    assert epochs[:2] == [1, 2] and epochs == sorted(epochs)
    ids = [e["id"] for e in events]
    assert ids == sorted(ids)
    # resuming after an event id skips what was seen
    tail = parse_sse(
        client.get(f"/v1/jobs/{job_id}/events", headers={"Last-Event-ID": str(ids[-2])}).text
    )
    assert [e["id"] for e in tail] == [ids[-1]]
