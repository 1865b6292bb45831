"""A Python client for the Softlabel API (httpx), mirroring its resources with typed results.

from softlabel.client import Client
with Client() as sl:                      # SOFTLABEL_API_URL, SOFTLABEL_API_KEY
    job = sl.jobs.submit({"loss": {"alpha": 0.1}}, idempotency_key="build-123")
    job = sl.jobs.wait(job.id)            # polls with backoff (or stream=True: SSE)
    if job.succeeded and sl.jobs.result(job.id).ece > 0.05: ...
"""

from __future__ import annotations

import builtins
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx

from softlabel.datasets_client import Datasets
from softlabel.waiting import watch

TERMINAL = ("succeeded", "failed", "canceled")


class ApiError(Exception):
    """An error response (RFC 9457 problem) from the API."""

    def __init__(self, status_code: int, problem: dict[str, Any]) -> None:
        self.status_code = status_code
        self.problem = problem
        self.detail = str(problem.get("detail") or problem.get("title") or status_code)
        super().__init__(f"{status_code}: {self.detail}")


class NotFound(ApiError):  # noqa: N818 - reads like the status
    """404."""


class Unauthorized(ApiError):  # noqa: N818
    """401."""


class Conflict(ApiError):  # noqa: N818
    """409."""


class InvalidRequest(ApiError):  # noqa: N818
    """422 (and 400, 413)."""


class RateLimited(ApiError):  # noqa: N818
    """429; `retry_after` seconds."""

    retry_after: float = 0.0


class WaitTimeout(TimeoutError):
    """wait() gave up before the job ended."""


_ERRORS: dict[int, type[ApiError]] = {
    400: InvalidRequest,
    401: Unauthorized,
    404: NotFound,
    409: Conflict,
    413: InvalidRequest,
    422: InvalidRequest,
    429: RateLimited,
}


@dataclass(frozen=True)
class Job:
    """A job's state as returned by GET /v1/jobs/{id}."""

    id: str
    status: str
    attempt: int
    progress: dict[str, Any]
    failure: dict[str, Any] | None
    tags: dict[str, str]
    created_at: str
    finished_at: str | None
    cancel_requested: bool = False
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Job:
        """Build from the API's JSON."""
        return cls(
            id=doc["id"],
            status=doc["status"],
            attempt=int(doc.get("attempt", 1)),
            progress=doc.get("progress") or {},
            failure=doc.get("failure"),
            tags=doc.get("tags") or {},
            created_at=doc.get("created_at", ""),
            finished_at=doc.get("finished_at"),
            cancel_requested=bool(doc.get("cancel_requested", False)),
            raw=doc,
        )

    @property
    def done(self) -> bool:
        """True once the job is in a terminal state."""
        return self.status in TERMINAL

    @property
    def succeeded(self) -> bool:
        """True when the job succeeded."""
        return self.status == "succeeded"


@dataclass(frozen=True)
class Result:
    """The result document of a succeeded job, with the headline numbers as attributes."""

    job_id: str
    accuracy: float
    ece: float
    nll: float
    brier: float
    temperature: float | None
    raw: dict[str, Any] = field(repr=False)

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Result:
        """Build from the API's JSON."""
        test = doc.get("test") or {}
        scaled = doc.get("temperature_scaled") or {}
        return cls(
            job_id=doc.get("job_id", ""),
            accuracy=float(test.get("accuracy", float("nan"))),
            ece=float(test.get("ece", float("nan"))),
            nll=float(test.get("nll", float("nan"))),
            brier=float(test.get("brier", float("nan"))),
            temperature=scaled.get("temperature"),
            raw=doc,
        )

    @property
    def test(self) -> dict[str, Any]:
        """The full `test` block (every calibration metric)."""
        return dict(self.raw.get("test") or {})


@dataclass(frozen=True)
class Event:
    """One Server-Sent Event of a job's stream."""

    id: int | None
    kind: str
    data: dict[str, Any]


class _Resource:
    def __init__(self, client: Client) -> None:
        self._c = client


class Jobs(_Resource):
    """/v1/jobs."""

    def submit(self, spec: dict[str, Any], *, idempotency_key: str | None = None) -> Job:
        """POST a job spec; returns the queued job."""
        return Job.from_json(
            self._c.request("POST", "/v1/jobs", json=spec, idempotency_key=idempotency_key)
        )

    def get(self, job_id: str) -> Job:
        """The job's current state."""
        return Job.from_json(self._c.request("GET", f"/v1/jobs/{job_id}"))

    def list(self, *, limit: int = 50, **filters: Any) -> Iterator[Job]:
        """Every job matching the filters (status, tag="k:v", created_after, ...), newest first."""
        params: dict[str, Any] = {"limit": limit, **{k: v for k, v in filters.items() if v}}
        while True:
            page = self._c.request("GET", "/v1/jobs", params=params)
            yield from (Job.from_json(j) for j in page["items"])
            if not page.get("next_cursor"):
                return
            params["cursor"] = page["next_cursor"]

    def result(self, job_id: str) -> Result:
        """The result document (Conflict if the job has not succeeded)."""
        return Result.from_json(self._c.request("GET", f"/v1/jobs/{job_id}/result"))

    def cancel(self, job_id: str) -> Job:
        """Cancel the job (Conflict if it has already finished)."""
        return Job.from_json(self._c.request("POST", f"/v1/jobs/{job_id}/cancel"))

    def artifact(self, job_id: str, name: str) -> bytes:
        """Download an artifact's bytes."""
        return self._c.request_bytes(f"/v1/jobs/{job_id}/artifacts/{name}")

    def webhook_deliveries(self, job_id: str) -> builtins.list[dict[str, Any]]:
        """The logged webhook delivery attempts."""
        return builtins.list(self._c.request("GET", f"/v1/jobs/{job_id}/webhooks")["items"])

    def events(self, job_id: str, *, last_event_id: int | None = None) -> Iterator[Event]:
        """Follow the job's Server-Sent Events until the job ends."""
        yield from self._c.stream_events(f"/v1/jobs/{job_id}/events", last_event_id)

    def wait(
        self,
        job_id: str,
        *,
        timeout: float | None = None,
        stream: bool = False,
        on_update: Callable[[Job], None] | None = None,
        poll_initial: float = 0.25,
        poll_max: float = 5.0,
    ) -> Job:
        """Block until the job ends: long poll (`?wait=`), else backoff polling, or SSE."""
        deadline = None if timeout is None else time.monotonic() + timeout
        if stream:
            for event in self.events(job_id):
                if on_update is not None and event.kind in ("status", "progress"):
                    on_update(self.get(job_id))
                if deadline is not None and time.monotonic() > deadline:
                    raise WaitTimeout(f"job {job_id} did not finish in {timeout}s")
            return self.get(job_id)
        doc = self._c.watch(
            f"/v1/jobs/{job_id}",
            done=lambda d: d.get("status") in TERMINAL,
            on_update=None if on_update is None else (lambda d: on_update(Job.from_json(d))),
            timeout=timeout,
            **{"poll_initial": poll_initial, "poll_max": poll_max},
        )
        return Job.from_json(doc)


class Sweeps(_Resource):
    """/v1/sweeps."""

    def submit(self, body: dict[str, Any], *, idempotency_key: str | None = None) -> dict[str, Any]:
        """POST a sweep (base spec, alphas, seeds ...)."""
        return dict(
            self._c.request("POST", "/v1/sweeps", json=body, idempotency_key=idempotency_key)
        )

    def get(self, sweep_id: str) -> dict[str, Any]:
        """The sweep's state."""
        return dict(self._c.request("GET", f"/v1/sweeps/{sweep_id}"))

    def report(self, sweep_id: str) -> dict[str, Any]:
        """The comparison report."""
        return dict(self._c.request("GET", f"/v1/sweeps/{sweep_id}/report"))

    def wait(
        self,
        sweep_id: str,
        *,
        timeout: float | None = None,
        on_update: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        """Block until the sweep's status is terminal (long poll; backoff polling as fallback)."""
        return self._c.watch(
            f"/v1/sweeps/{sweep_id}",
            done=lambda d: d.get("status") in TERMINAL,
            on_update=on_update,
            timeout=timeout,
            poll_initial=0.5,
        )


class Client:
    """The API client; `base_url`/`api_key` default to SOFTLABEL_API_URL/SOFTLABEL_API_KEY."""

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        url = base_url or os.environ.get("SOFTLABEL_API_URL") or "http://127.0.0.1:8000"
        key = api_key if api_key is not None else os.environ.get("SOFTLABEL_API_KEY", "")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._http = httpx.Client(
            base_url=url.rstrip("/"), headers=headers, timeout=timeout, transport=transport
        )
        self.jobs = Jobs(self)
        self.sweeps = Sweeps(self)
        self.datasets = Datasets(self)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    @staticmethod
    def _raise_for(response: httpx.Response) -> None:
        if response.status_code < 400:
            return
        try:
            problem = response.json()
        except ValueError:
            problem = {"detail": response.text[:500]}
        if not isinstance(problem, dict):
            problem = {"detail": str(problem)}
        error_cls = _ERRORS.get(response.status_code, ApiError)
        error = error_cls(response.status_code, problem)
        if isinstance(error, RateLimited):
            error.retry_after = float(response.headers.get("retry-after", "1") or 1)
        raise error

    def request(
        self, method: str, path: str, *, idempotency_key: str | None = None, **kwargs: Any
    ) -> Any:
        """Send a request and return the decoded JSON (raises ApiError on 4xx/5xx)."""
        headers = dict(kwargs.pop("headers", None) or {})
        if idempotency_key:
            headers["Idempotency-Key"] = idempotency_key
        response = self._http.request(method, path, headers=headers, **kwargs)
        self._raise_for(response)
        if response.status_code == 204 or not response.content:
            return None
        return response.json()

    def poll(
        self, path: str, *, etag: str | None, wait: float | None
    ) -> tuple[dict[str, Any] | None, str | None]:
        """GET with If-None-Match (and a long poll): (the document, or None if 304; its ETag)."""
        headers = {"If-None-Match": etag} if etag else {}
        params = {} if wait is None else {"wait": f"{wait:g}"}
        timeout = (
            None if wait is None else httpx.Timeout(self._http.timeout.connect, read=wait + 30)
        )
        kwargs: dict[str, Any] = {} if timeout is None else {"timeout": timeout}
        response = self._http.get(path, headers=headers, params=params, **kwargs)
        self._raise_for(response)
        tag = response.headers.get("etag")
        return (None if response.status_code == 304 else response.json()), tag

    def watch(self, path: str, **options: Any) -> dict[str, Any]:
        """Follow a resource until `done(doc)` (see softlabel.waiting.watch)."""
        return watch(self, path, **options)

    def request_bytes(self, path: str) -> bytes:
        """GET raw bytes."""
        response = self._http.get(path)
        self._raise_for(response)
        return response.content

    def stream_events(self, path: str, last_event_id: int | None = None) -> Iterator[Event]:
        """Parse a text/event-stream response into events."""
        headers = {"Accept": "text/event-stream"}
        if last_event_id is not None:
            headers["Last-Event-ID"] = str(last_event_id)
        timeout = httpx.Timeout(self._http.timeout.connect, read=60.0)
        with self._http.stream("GET", path, headers=headers, timeout=timeout) as response:
            if response.status_code >= 400:
                response.read()
                self._raise_for(response)
            event_id: int | None = None
            kind = "message"
            data: list[str] = []
            for line in response.iter_lines():
                if not line:
                    if data:
                        yield Event(event_id, kind, json.loads("\n".join(data)))
                    event_id, kind, data = None, "message", []
                elif line.startswith(":"):
                    continue
                elif line.startswith("id:"):
                    event_id = int(line[3:].strip())
                elif line.startswith("event:"):
                    kind = line[6:].strip()
                elif line.startswith("data:"):
                    data.append(line[5:].strip())
