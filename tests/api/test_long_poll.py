"""ETag / If-None-Match (304) and `?wait=` long polls over a real uvicorn API and Postgres."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from tests.processes import Proc

SPEC = {"model": {"arch": "mlp", "hidden": [8]}, "training": {"epochs": 2}}


@pytest.fixture
def http(db: str, api_key: str, module_api: Proc) -> Iterator[httpx.Client]:
    """A client of a real API process; no worker, so jobs stay queued until the test moves them."""
    headers = {"Authorization": f"Bearer {api_key}"}
    with httpx.Client(base_url=module_api.info["url"], headers=headers, timeout=90) as client:
        yield client


def set_progress(job_id: str, epoch: int) -> None:
    """Change a job the way a worker does: one committed UPDATE."""
    from core.db import get_engine

    with get_engine().begin() as conn:
        conn.execute(
            text("UPDATE job SET progress = CAST(:p AS jsonb) WHERE id = :id"),
            {"p": f'{{"epoch": {epoch}, "epochs": 2}}', "id": job_id},
        )


def touch_lease(job_id: str) -> None:
    """A heartbeat: a column clients do not see."""
    from core.db import get_engine

    with get_engine().begin() as conn:
        conn.execute(text("UPDATE job SET lease_expires_at = now() WHERE id = :id"), {"id": job_id})


class Poll(threading.Thread):
    """One long poll in the background."""

    def __init__(self, client: httpx.Client, path: str, etag: str | None, wait: float) -> None:
        super().__init__(daemon=True)
        self.args = (client, path, etag, wait)
        self.response: httpx.Response | None = None

    def run(self) -> None:
        client, path, etag, wait = self.args
        headers = {"If-None-Match": etag} if etag else {}
        self.response = client.get(path, params={"wait": wait}, headers=headers)


def test_etag_and_304_until_the_job_changes(http: httpx.Client) -> None:
    job_id = http.post("/v1/jobs", json=SPEC).json()["id"]
    first = http.get(f"/v1/jobs/{job_id}")
    etag = first.headers["ETag"]
    assert first.status_code == 200 and etag.startswith('"')
    same = http.get(f"/v1/jobs/{job_id}", headers={"If-None-Match": etag})
    assert same.status_code == 304 and same.content == b"" and same.headers["ETag"] == etag
    touch_lease(job_id)
    assert http.get(f"/v1/jobs/{job_id}", headers={"If-None-Match": etag}).status_code == 304
    set_progress(job_id, 1)
    # The API learns of the change by its NOTIFY (at most as late as a long poll does): once
    # a long poll has returned it, the old ETag is stale for conditional GETs too.
    woken = http.get(f"/v1/jobs/{job_id}", params={"wait": 30}, headers={"If-None-Match": etag})
    assert woken.status_code == 200
    changed = http.get(f"/v1/jobs/{job_id}", headers={"If-None-Match": etag})
    assert changed.status_code == 200 and changed.headers["ETag"] != etag
    assert changed.json()["progress"]["epoch"] == 1
    other = http.get(
        f"/v1/jobs/{job_id}", headers={"If-None-Match": f'"x", {changed.headers["ETag"]}'}
    )
    assert other.status_code == 304


def test_long_poll_answers_with_the_change(http: httpx.Client) -> None:
    job_id = http.post("/v1/jobs", json=SPEC).json()["id"]
    etag = http.get(f"/v1/jobs/{job_id}").headers["ETag"]
    polls = [Poll(http, f"/v1/jobs/{job_id}", etag, 60) for _ in range(5)]
    for poll in polls:
        poll.start()
    time.sleep(1.0)  # let them wait (if a poll starts late, it sees the change at once)
    touch_lease(job_id)  # invisible: nobody is woken with it
    set_progress(job_id, 2)
    for poll in polls:
        poll.join(timeout=90)
        assert poll.response is not None and poll.response.status_code == 200
        assert poll.response.json()["progress"]["epoch"] == 2
        assert poll.response.headers["ETag"] != etag


def test_long_poll_times_out_with_304_and_ends_at_once_for_a_finished_job(
    http: httpx.Client,
) -> None:
    job_id = http.post("/v1/jobs", json=SPEC).json()["id"]
    etag = http.get(f"/v1/jobs/{job_id}").headers["ETag"]
    waited = http.get(f"/v1/jobs/{job_id}", params={"wait": 1}, headers={"If-None-Match": etag})
    assert waited.status_code == 304
    canceled = http.post(f"/v1/jobs/{job_id}/cancel").json()
    assert canceled["status"] == "canceled"
    done = http.get(f"/v1/jobs/{job_id}", params={"wait": 60})  # no ETag, terminal: at once
    assert done.status_code == 200 and done.json()["status"] == "canceled"
    stale = http.get(f"/v1/jobs/{job_id}", params={"wait": 60}, headers={"If-None-Match": etag})
    assert stale.status_code == 200 and stale.json()["status"] == "canceled"


@pytest.mark.parametrize("wait", ["61", "-1", "soon"])
def test_wait_is_bounded(http: httpx.Client, wait: str) -> None:
    job_id = http.post("/v1/jobs", json=SPEC).json()["id"]
    response = http.get(f"/v1/jobs/{job_id}", params={"wait": wait})
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "wait"


def test_long_poll_of_another_tenants_job_is_404(http: httpx.Client) -> None:
    from core.db import session_scope
    from core.services.tenants import create_api_key

    job_id = http.post("/v1/jobs", json=SPEC).json()["id"]
    with session_scope() as s:
        _, other = create_api_key(s, tenant_name="globex")
    response = http.get(
        f"/v1/jobs/{job_id}", params={"wait": 5}, headers={"Authorization": f"Bearer {other}"}
    )
    assert response.status_code == 404


def test_sweep_etag_and_long_poll_wake_on_a_trial_change(http: httpx.Client) -> None:
    body: dict[str, Any] = {"base": SPEC, "alphas": [0.0, 0.1]}
    sweep_id = http.post("/v1/sweeps", json=body).json()["id"]
    first = http.get(f"/v1/sweeps/{sweep_id}")
    etag = first.headers["ETag"]
    assert http.get(f"/v1/sweeps/{sweep_id}", headers={"If-None-Match": etag}).status_code == 304
    trial = http.get("/v1/jobs", params={"sweep_id": sweep_id}).json()["items"][0]["id"]
    poll = Poll(http, f"/v1/sweeps/{sweep_id}", etag, 60)
    poll.start()
    time.sleep(1.0)
    http.post(f"/v1/jobs/{trial}/cancel")  # one trial ends: the sweep's progress changes
    poll.join(timeout=90)
    assert poll.response is not None and poll.response.status_code == 200
    assert poll.response.json()["progress"]["done"] == 1


class CountingTransport(httpx.HTTPTransport):
    """A real HTTP transport that counts the requests sent."""

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[str] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        """Send the request, remembering its URL."""
        self.requests.append(str(request.url))
        return super().handle_request(request)


def test_python_client_wait_uses_the_long_poll(http: httpx.Client, api_key: str) -> None:
    from softlabel.client import Client

    job_id = http.post("/v1/jobs", json=SPEC).json()["id"]
    transport = CountingTransport()
    outcome: list[Any] = []
    with Client(str(http.base_url), api_key, transport=transport) as client:
        waiter = threading.Thread(target=lambda: outcome.append(client.jobs.wait(job_id)))
        waiter.start()
        time.sleep(3.0)  # backoff polling (0.25 s, growing) would send about 8 requests by now
        http.post(f"/v1/jobs/{job_id}/cancel")
        waiter.join(timeout=90)
    assert outcome and outcome[0].status == "canceled"
    assert len(transport.requests) <= 3, transport.requests
    assert any("wait=" in url for url in transport.requests)
