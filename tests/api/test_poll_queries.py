"""Waiting is cheap: the database statements a real API process on Postgres issues (P5).

The API counts every SQL statement it sends (`softlabel_db_queries_total` on /metrics). With
its LISTEN connection up, a GET of an unchanged job is answered from the process's cache
without a query (a 304 for a current ETag, else the cached body), and a change wakes every
long-polling client for one read per API process. Each scrape of /metrics costs a fixed
number of statements of its own, measured and subtracted.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text

from tests.api.test_long_poll import SPEC, Poll, set_progress
from tests.processes import start_api, stop_process

METRICS_KEY = "poll-metrics-key"
CLIENTS = 10
CHANGES = 3


class Api:
    """A real API process and a reader of its own counters."""

    def __init__(self, client: httpx.Client) -> None:
        self.client = client
        self.scrapes = 0

    def metric(self, name: str) -> float:
        """One series of this process's /metrics (a scrape: it costs its own statements)."""
        self.scrapes += 1
        response = self.client.get("/metrics", headers={"Authorization": f"Bearer {METRICS_KEY}"})
        found = re.search(rf"^{name} ([\d.e+]+)$", response.text, re.M)
        assert found, f"{name} not in /metrics"
        return float(found.group(1))

    def until(self, name: str, ok: object, what: str) -> float:
        """Scrape until the series satisfies `ok` (a bound, not a timing assertion)."""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            value = self.metric(name)
            if ok(value):  # type: ignore[operator]
                return value
            time.sleep(0.05)
        raise AssertionError(f"{what}: {name} stayed {value}")


@pytest.fixture
def api(db: str, redis_url: str, api_key: str, tmp_path: Path) -> Iterator[Api]:
    """A real API process with a metrics key; no worker: the test moves the jobs itself."""
    proc = start_api(tmp_path / "api.log", env={"SOFTLABEL_METRICS_KEY": METRICS_KEY})
    headers = {"Authorization": f"Bearer {api_key}"}
    with httpx.Client(base_url=proc.info["url"], headers=headers, timeout=90) as client:
        yield Api(client)
    stop_process(proc)


def scrape_cost(api: Api) -> float:
    """Statements one scrape of /metrics issues (the same every time)."""
    first, second, third = (api.metric("softlabel_db_queries_total") for _ in range(3))
    assert second - first == third - second
    return second - first


def listening_job(api: Api) -> tuple[str, str]:
    """A new job, the API listening, its current ETag cached; (job id, ETag)."""
    job_id = api.client.post("/v1/jobs", json=SPEC).json()["id"]
    api.client.get(f"/v1/jobs/{job_id}")  # starts the process's LISTEN connection
    api.until("softlabel_listen_connected", lambda v: v == 1, "LISTEN never came up")
    return job_id, api.client.get(f"/v1/jobs/{job_id}").headers["ETag"]


def queries_of(api: Api, cost: float, action: object) -> float:
    """Statements the API issued for `action()` (the scrapes around it subtracted)."""
    before, scrapes = api.metric("softlabel_db_queries_total"), api.scrapes
    action()  # type: ignore[operator]
    after = api.metric("softlabel_db_queries_total")
    return after - before - cost * (api.scrapes - scrapes)


def test_gets_of_an_unchanged_job_issue_no_query(api: Api, api_key: str) -> None:
    job_id, etag = listening_job(api)
    cost = scrape_cost(api)
    path = f"/v1/jobs/{job_id}"
    first = api.client.get(path)

    def conditional_gets() -> None:
        for _ in range(20):
            response = api.client.get(path, headers={"If-None-Match": etag})
            assert response.status_code == 304 and response.headers["ETag"] == etag

    hits = api.metric("softlabel_etag_cache_hits_total")
    assert queries_of(api, cost, conditional_gets) == 0
    assert api.metric("softlabel_etag_cache_hits_total") - hits == 20
    plain: list[httpx.Response] = []
    assert queries_of(api, cost, lambda: plain.extend(api.client.get(path) for _ in range(5))) == 0
    for response in plain:  # the cached answer: the same bytes and ETag as the read
        assert response.status_code == 200 and response.content == first.content
        assert response.headers["ETag"] == etag

    # A change: once its notification reached the process, the old ETag is a 200 again.
    seen = api.metric("softlabel_listen_notifications_total")
    set_progress(job_id, 1)
    api.until("softlabel_listen_notifications_total", lambda v: v > seen, "no notification")
    changed = api.client.get(path, headers={"If-None-Match": etag})
    assert changed.status_code == 200 and changed.json()["progress"]["epoch"] == 1
    assert api.client.get(path).json()["progress"]["epoch"] == 1  # plain GETs see it too

    # A revoked key is refused at once, although its tenant and the job were cached.
    etag = changed.headers["ETag"]
    assert api.client.get(path, headers={"If-None-Match": etag}).status_code == 304
    seen = api.metric("softlabel_listen_notifications_total")
    with api_engine_begin() as conn:
        conn.execute(text("UPDATE api_key SET revoked_at = now()"))
    api.until("softlabel_listen_notifications_total", lambda v: v > seen, "no notification")
    assert api.client.get(path, headers={"If-None-Match": etag}).status_code == 401


def test_a_write_through_the_process_is_read_back_at_once(api: Api) -> None:
    job_id, _ = listening_job(api)
    path = f"/v1/jobs/{job_id}"
    assert api.client.get(path).json()["status"] == "queued"  # answered from the cache
    hits = api.metric("softlabel_etag_cache_hits_total")
    assert api.client.get(path).json()["status"] == "queued"
    assert api.metric("softlabel_etag_cache_hits_total") == hits + 1
    canceled = api.client.post(f"{path}/cancel")
    assert canceled.status_code == 202, canceled.text
    # No wait for the notification: the cancel's own answer dropped the cached one first.
    assert api.client.get(path).json()["status"] == canceled.json()["status"]


def api_engine_begin():  # type: ignore[no-untyped-def]
    """A transaction on the test database."""
    from core.db import get_engine

    return get_engine().begin()


def test_losing_the_listen_connection_drops_the_cache(api: Api) -> None:
    job_id, etag = listening_job(api)
    cost = scrape_cost(api)
    path = f"/v1/jobs/{job_id}"
    assert queries_of(api, cost, lambda: api.client.get(path, headers={"If-None-Match": etag})) == 0
    connects = api.metric("softlabel_listen_connects_total")
    with api_engine_begin() as conn:
        conn.execute(text(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND query LIKE 'LISTEN %'"
        ))
    api.until("softlabel_listen_connects_total", lambda v: v > connects, "no reconnect")
    # Reconnected: a change may have been missed meanwhile, so the ETag is checked again.
    response_holder: list[httpx.Response] = []
    assert queries_of(
        api, cost,
        lambda: response_holder.append(api.client.get(path, headers={"If-None-Match": etag})),
    ) == 1
    assert response_holder[0].status_code == 304


class Poller(threading.Thread):
    """One client long-polling a job until it has seen `CHANGES` epochs."""

    def __init__(self, client: httpx.Client, path: str, etag: str) -> None:
        super().__init__(daemon=True)
        self.client, self.path, self.etag = client, path, etag
        self.seen: list[int] = []
        self.requests = 0

    def run(self) -> None:
        while not self.seen or self.seen[-1] < CHANGES:
            response = self.client.get(
                self.path, params={"wait": 60}, headers={"If-None-Match": self.etag}
            )
            self.requests += 1
            if response.status_code == 200:
                self.etag = response.headers["ETag"]
                self.seen.append(response.json()["progress"]["epoch"])


def test_long_polls_cost_one_query_per_change_per_process(api: Api) -> None:
    job_id, etag = listening_job(api)
    cost = scrape_cost(api)
    pollers = [Poller(api.client, f"/v1/jobs/{job_id}", etag) for _ in range(CLIENTS)]

    def changes() -> None:
        for poller in pollers:
            poller.start()
        for epoch in range(1, CHANGES + 1):
            api.until("softlabel_long_polls_waiting", lambda v: v == CLIENTS, "not all waiting")
            set_progress(job_id, epoch)
            deadline = time.monotonic() + 60
            while not all(epoch in p.seen for p in pollers) and time.monotonic() < deadline:
                time.sleep(0.02)
        for poller in pollers:
            poller.join(timeout=90)

    issued = queries_of(api, cost, changes)
    for poller in pollers:
        assert poller.seen == list(range(1, CHANGES + 1))
    assert sum(p.requests for p in pollers) >= CLIENTS * CHANGES
    # One read per change for all the clients (and their re-polls, answered from the cache).
    assert issued <= CHANGES, issued


def test_a_sweeps_conditional_get_is_answered_from_the_cache_until_a_trial_changes(
    api: Api,
) -> None:
    sweep_id = api.client.post("/v1/sweeps", json={"base": SPEC, "alphas": [0.0, 0.1]}).json()["id"]
    path = f"/v1/sweeps/{sweep_id}"
    api.client.get(path)
    api.until("softlabel_listen_connected", lambda v: v == 1, "LISTEN never came up")
    etag = api.client.get(path).headers["ETag"]
    cost = scrape_cost(api)
    assert queries_of(api, cost, lambda: api.client.get(path, headers={"If-None-Match": etag})) == 0
    trial = api.client.get("/v1/jobs", params={"sweep_id": sweep_id}).json()["items"][0]["id"]
    seen = api.metric("softlabel_listen_notifications_total")
    set_progress(trial, 1)
    api.until("softlabel_listen_notifications_total", lambda v: v > seen, "no notification")
    again = api.client.get(path, headers={"If-None-Match": etag})
    assert again.status_code == 304  # the trial's progress is not part of the sweep's JSON
    api.client.post(f"/v1/jobs/{trial}/cancel")  # one trial ends: the sweep's progress changes
    done = api.client.get(path, params={"wait": 30}, headers={"If-None-Match": etag})
    assert done.status_code == 200 and done.json()["progress"]["done"] == 1
    assert api.client.get(path, headers={"If-None-Match": etag}).status_code == 200


def test_sweep_long_polls_read_the_sweep_once_per_change(api: Api) -> None:
    sweep_id = api.client.post("/v1/sweeps", json={"base": SPEC, "alphas": [0.0, 0.1]}).json()["id"]
    path = f"/v1/sweeps/{sweep_id}"
    api.client.get(path)
    api.until("softlabel_listen_connected", lambda v: v == 1, "LISTEN never came up")
    cost = scrape_cost(api)
    etag = api.client.get(path).headers["ETag"]
    # key, sweep, trials: a poll without an ETag reads (a plain GET is answered from the cache)
    one_read = queries_of(api, cost, lambda: api.client.get(path, params={"wait": 0}))
    trial = api.client.get("/v1/jobs", params={"sweep_id": sweep_id}).json()["items"][0]["id"]
    polls = [Poll(api.client, path, etag, 60) for _ in range(CLIENTS)]

    def change() -> None:
        for poll in polls:
            poll.start()
        api.until("softlabel_long_polls_waiting", lambda v: v == CLIENTS, "not all waiting")
        with api_engine_begin() as conn:  # a trial ends, as a worker would end it
            conn.execute(
                text("UPDATE job SET status = 'canceled', finished_at = now() WHERE id = :id"),
                {"id": trial},
            )
        for poll in polls:
            poll.join(timeout=90)

    issued = queries_of(api, cost, change)
    for poll in polls:
        assert poll.response is not None and poll.response.status_code == 200
        assert poll.response.json()["progress"]["done"] == 1
    assert 0 < issued <= one_read, (issued, one_read)  # one read for all, not one per client
