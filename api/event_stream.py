"""Server-Sent Events for /v1/jobs/{id}/events without holding database connections.

All open streams of one API process share one reader (`EventHub`): at most one short
session per poll interval reads the new events and statuses of every watched job, however
many streams are open, and streams wait on the hub, not on the pool. A tenant may hold at
most `SOFTLABEL_MAX_EVENT_STREAMS_PER_TENANT` open streams per process (429 beyond), and an
idle stream sends a `: keep-alive` comment every `SOFTLABEL_EVENT_STREAM_HEARTBEAT_SECONDS`.
"""

from __future__ import annotations

import itertools
import json
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
from anyio import to_thread
from anyio.lowlevel import RunVar
from fastapi.responses import StreamingResponse

from core.db import session_scope
from core.errors import TooManyRequestsError
from core.services import event_feed
from core.states import TERMINAL_STATUSES
from core.timeutil import iso

SSE_POLL_SECONDS = 0.25
BATCH_LIMIT = 2000
_KEYS = itertools.count()
Event = tuple[int, str, str]


@dataclass
class _Watch:
    job_id: str
    after_id: int


@dataclass
class EventHub:
    """The process's shared event reader and the per-tenant count of open streams."""

    by_id: dict[int, _Watch] = field(default_factory=dict)
    open_streams: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    events: dict[str, list[Event]] = field(default_factory=dict)
    statuses: dict[str, str] = field(default_factory=dict)
    read_marks: dict[str, int] = field(default_factory=dict)  # what the cache covers, per job
    last_read: float = 0.0
    lock: anyio.Lock = field(default_factory=anyio.Lock)

    def reserve(self, tenant_id: str, cap: int) -> Callable[[], None]:
        """Count one more open stream of the tenant (429 over `cap`); returns its release."""
        if self.open_streams[tenant_id] >= cap:
            raise TooManyRequestsError(
                f"At most {cap} event streams may be open per tenant; close one "
                "(or poll GET /v1/jobs/{id}) and retry",
                retry_after=5,
            )
        self.open_streams[tenant_id] += 1
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self.open_streams[tenant_id] -= 1

        return release

    async def refresh(self) -> None:
        """Read new events for every watched job, at most once per poll interval."""
        async with self.lock:
            after: dict[str, int] = {}
            for watch in self.by_id.values():
                after[watch.job_id] = min(after.get(watch.job_id, watch.after_id), watch.after_id)
            covered = all(
                job in self.read_marks and self.read_marks[job] <= mark
                for job, mark in after.items()
            )
            if covered and time.monotonic() - self.last_read < SSE_POLL_SECONDS * 0.9:
                return  # a new stream (or one behind the cache) forces a read
            self.statuses, self.events = await to_thread.run_sync(_read, after)
            self.read_marks = after
            self.last_read = time.monotonic()

    def take(self, key: int) -> tuple[list[Event], str | None]:
        """The watch's events since its mark (advancing it) and its job's status."""
        watch = self.by_id[key]
        fresh = [e for e in self.events.get(watch.job_id, []) if e[0] > watch.after_id]
        if fresh:
            watch.after_id = fresh[-1][0]
        return fresh, self.statuses.get(watch.job_id)


def _read(after: dict[str, int]) -> tuple[dict[str, str], dict[str, list[Event]]]:
    """One short transaction: statuses first, then events (a terminal status is never early)."""
    out: dict[str, list[Event]] = defaultdict(list)
    with session_scope() as session:
        statuses = event_feed.job_statuses(session, job_ids=list(after))
        for row in event_feed.events_for_jobs(session, after=after, limit=BATCH_LIMIT):
            data = {"job_id": row.job_id, **(row.data or {}), "at": iso(row.created_at)}
            out[row.job_id].append(
                (row.id, row.kind, json.dumps(data, separators=(",", ":"), default=str))
            )
    if sum(len(rows) for rows in out.values()) >= BATCH_LIMIT:
        # the batch was cut: no stream may end while some of its events are still unread
        statuses = {job: "running" for job in statuses}
    return statuses, dict(out)


_hub: RunVar[EventHub] = RunVar("softlabel_event_hub")


def event_hub() -> EventHub:
    """The event loop's hub."""
    try:
        return _hub.get()
    except LookupError:
        hub = EventHub()
        _hub.set(hub)
        return hub


async def _stream(
    hub: EventHub, job_id: str, after_id: int, heartbeat_s: float
) -> AsyncIterator[str]:
    key = next(_KEYS)
    hub.by_id[key] = _Watch(job_id, after_id)
    last_sent = time.monotonic()
    try:
        yield ": connected\n\n"
        while True:
            await hub.refresh()
            events, job_status = hub.take(key)
            for event_id, kind, data in events:
                yield f"id: {event_id}\nevent: {kind}\ndata: {data}\n\n"
                last_sent = time.monotonic()
            if job_status is None or (job_status in TERMINAL_STATUSES and not events):
                return
            if time.monotonic() - last_sent >= heartbeat_s:
                yield ": keep-alive\n\n"
                last_sent = time.monotonic()
            await anyio.sleep(SSE_POLL_SECONDS)
    finally:
        hub.by_id.pop(key, None)


class EventStreamResponse(StreamingResponse):
    """A text/event-stream response that releases its tenant's stream slot however it ends."""

    def __init__(self, content: AsyncIterator[str], release: Callable[[], None]) -> None:
        super().__init__(
            content,
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
        self._release = release

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        """Send the stream; free the slot at the end, a disconnect or an error."""
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._release()


def open_event_stream(
    *, tenant_id: str, job_id: str, after_id: int, cap: int, heartbeat_s: float
) -> EventStreamResponse:
    """The SSE response for a job the tenant owns (checked by the caller)."""
    hub = event_hub()
    release = hub.reserve(tenant_id, cap)
    return EventStreamResponse(_stream(hub, job_id, after_id, heartbeat_s), release)
