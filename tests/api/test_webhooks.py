"""Webhooks: private URLs refused, signed POST on terminal states, retries logged via the API."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from core.config import get_settings
from core.services.webhooks import verify
from tests.processes import start_worker, stop_process, wait_for_job


class Receiver:
    """A tiny real HTTP server on loopback that records POSTs; fails the first `fail` of each
    delivery id (the order in which two jobs' deliveries arrive is not fixed)."""

    def __init__(self, fail: int = 0) -> None:
        self.received: list[dict[str, Any]] = []
        self.fail = fail
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                delivery = self.headers.get("X-Softlabel-Delivery")
                receiver.received.append(
                    {"headers": dict(self.headers), "body": body, "delivery": delivery}
                )
                seen = sum(1 for r in receiver.received if r["delivery"] == delivery)
                code = 500 if seen <= receiver.fail else 200
                self.send_response(code)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def allow_private(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("SOFTLABEL_WEBHOOK_ALLOW_PRIVATE", "true")
    get_settings.cache_clear()
    yield
    monkeypatch.delenv("SOFTLABEL_WEBHOOK_ALLOW_PRIVATE")
    get_settings.cache_clear()


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:9/hook", "http://localhost/hook", "http://10.1.2.3/x",
     "http://169.254.169.254/latest/meta-data", "http://[::1]/x", "http://192.168.0.1/"],
)
def test_private_loopback_and_link_local_urls_are_refused(client: Any, url: str) -> None:
    resp = client.post("/v1/jobs", json={"webhook_url": url})
    assert resp.status_code == 422, resp.text
    assert resp.json()["errors"][0]["field"] == "webhook_url"
    assert "private, loopback or link-local" in resp.json()["detail"]


def test_terminal_states_are_delivered_signed_and_retried(
    client: Any, allow_private: None, tmp_path: Path
) -> None:
    receiver = Receiver(fail=1)
    worker = start_worker(
        tmp_path / "worker.log",
        env={"SOFTLABEL_WEBHOOK_ALLOW_PRIVATE": "true", "SOFTLABEL_WEBHOOK_BACKOFF_SECONDS": "0.3"},
    )
    try:
        spec = {"model": {"hidden": [32]}, "training": {"epochs": 3}, "webhook_url": receiver.url,
                "tags": {"pipeline": "ci"}}
        job_id = client.post("/v1/jobs", json=spec).json()["id"]
        assert wait_for_job(client, job_id, timeout=60)["status"] == "succeeded"
        long_spec = {**spec, "training": {"epochs": 300}}
        canceled_id = client.post("/v1/jobs", json=long_spec).json()["id"]
        client.post(f"/v1/jobs/{canceled_id}/cancel")

        deliveries: list[dict[str, Any]] = []
        import time

        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            deliveries = client.get(f"/v1/jobs/{job_id}/webhooks").json()["items"]
            done = [d for d in deliveries if d["status_code"] == 200]
            other = client.get(f"/v1/jobs/{canceled_id}/webhooks").json()["items"]
            if done and other and other[-1]["status_code"] == 200:
                break
            time.sleep(0.2)
        else:
            raise AssertionError(f"no delivery: {deliveries}\n{worker.log_text()[-3000:]}")
    finally:
        stop_process(worker)
        receiver.close()

    assert [(d["attempt"], d["status_code"]) for d in deliveries] == [(1, 500), (2, 200)]
    assert deliveries[0]["error"].startswith("HTTP 500") and deliveries[0]["url"] == receiver.url

    secret = client.get("/v1/webhooks/secret").json()["secret"]
    by_event: dict[str, dict[str, Any]] = {}
    for hit in receiver.received:
        headers = {k.lower(): v for k, v in hit["headers"].items()}
        assert verify(secret, headers["x-softlabel-timestamp"], hit["body"],
                      headers["x-softlabel-signature"])
        assert not verify("wrong", headers["x-softlabel-timestamp"], hit["body"],
                          headers["x-softlabel-signature"])
        by_event[headers["x-softlabel-event"]] = json.loads(hit["body"])
    succeeded = by_event["job.succeeded"]
    assert succeeded["job"]["id"] == job_id and succeeded["job"]["tags"] == {"pipeline": "ci"}
    assert 0 <= succeeded["metrics"]["ece"] <= 1 and 0 <= succeeded["metrics"]["accuracy"] <= 1
    assert by_event["job.canceled"]["job"]["id"] == canceled_id
    assert by_event["job.canceled"]["job"]["failure"]["reason"] == "canceled"


def test_every_trial_of_a_stacked_sweep_is_announced(
    client: Any, allow_private: None, tmp_path: Path
) -> None:
    """The trials of one stacked group end in one transaction; each gets its own webhook."""
    import time

    from tests.test_sweep_e2e import wait_for_sweep

    receiver = Receiver()
    worker = start_worker(tmp_path / "worker.log",
                          env={"SOFTLABEL_WEBHOOK_ALLOW_PRIVATE": "true"})
    try:
        base = {"model": {"hidden": [16]}, "training": {"epochs": 2}, "webhook_url": receiver.url}
        resp = client.post("/v1/sweeps", json={"base": base, "alphas": [0.0, 0.1, 0.2]})
        assert resp.status_code == 202, resp.text
        sweep_id = resp.json()["id"]
        assert wait_for_sweep(client, sweep_id, timeout=120)["status"] == "succeeded"
        trials = client.get("/v1/jobs", params={"sweep_id": sweep_id}).json()["items"]
        assert len(trials) == 3
        delivered: dict[str, list[Any]] = {}
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            delivered = {t["id"]: [d["status_code"] for d in client.get(
                f"/v1/jobs/{t['id']}/webhooks").json()["items"]] for t in trials}
            if all(codes == [200] for codes in delivered.values()):
                break
            time.sleep(0.2)
    finally:
        stop_process(worker)
        receiver.close()
    assert all(codes == [200] for codes in delivered.values()), delivered
    events = {json.loads(hit["body"])["job"]["id"]:
              {k.lower(): v for k, v in hit["headers"].items()}["x-softlabel-event"]
              for hit in receiver.received}
    assert events == {t["id"]: "job.succeeded" for t in trials}
