"""ETag / If-None-Match and long polls (`?wait=SECONDS`) on top of Postgres LISTEN/NOTIFY.

One listener per API process (per event loop): a single autocommit connection LISTENs on the
job and sweep channels (core.services.watch) and fans each notification out to the requests
waiting on that id. For a job it also fetches the changed row once and hands the same row to
every waiter, so a change costs one query per API process however many clients wait. Without
Postgres (embedded SQLite) waiters re-check once a second instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg
from anyio.lowlevel import RunVar
from fastapi import Response

from core.db import get_engine
from core.services.watch import CHANNEL_JOB, CHANNEL_SWEEP

logger = logging.getLogger("softlabel.api")
MAX_WAIT_SECONDS = 60.0
FALLBACK_RECHECK_SECONDS = 1.0
RECONNECT_SECONDS = 0.5
IDLE_CLOSE_S = 60.0  # no long poll for this long: the LISTEN connection is closed
RECHECK = object()  # a wake-up without a row: the waiter reloads by itself

RowFetcher = Callable[[str], Awaitable[Any]]


def etag_of(body: bytes) -> str:
    """A strong ETag of a response body."""
    return '"' + hashlib.blake2b(body, digest_size=12).hexdigest() + '"'


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    """Whether an If-None-Match header names this ETag (or is `*`)."""
    if not if_none_match:
        return False
    tags = [t.strip().removeprefix("W/") for t in if_none_match.split(",")]
    return "*" in tags or etag in tags


def conditional_response(body: bytes, if_none_match: str | None) -> Response:
    """200 with the body and its ETag, or 304 when the client already has it."""
    etag = etag_of(body)
    headers = {"ETag": etag, "Cache-Control": "no-cache"}
    if etag_matches(if_none_match, etag):
        return Response(status_code=304, headers=headers)
    return Response(content=body, media_type="application/json", headers=headers)


@dataclass(eq=False)  # hashed by identity: one per waiting request
class Subscription:
    """One waiting request: woken with a fetched row, or RECHECK."""

    channel: str
    key: str
    queue: asyncio.Queue[Any] = field(default_factory=asyncio.Queue)

    async def next(self, timeout: float) -> Any:
        """The next wake-up's row (or RECHECK); raises TimeoutError when none comes in time."""
        return await asyncio.wait_for(self.queue.get(), timeout)


class ChangeListener:
    """The process's LISTEN connection and the waiters it fans notifications out to."""

    def __init__(self, fetchers: dict[str, RowFetcher]) -> None:
        self._fetchers = fetchers
        self._waiters: dict[tuple[str, str], set[Subscription]] = {}
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.notifications = 0
        self.fetches = 0
        self._last_wait = time.monotonic()

    @property
    def live(self) -> bool:
        """Whether LISTEN is active (notifications are being received)."""
        return self._ready.is_set()

    @contextlib.asynccontextmanager
    async def subscribe(self, channel: str, key: str) -> AsyncIterator[Subscription]:
        """Register a waiter before the caller reads the current state (no change is lost)."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="softlabel-listen")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._ready.wait(), 5.0)
        sub = Subscription(channel, key)
        self._last_wait = time.monotonic()
        self._waiters.setdefault((channel, key), set()).add(sub)
        try:
            yield sub
        finally:
            waiters = self._waiters.get((channel, key), set())
            waiters.discard(sub)
            self._last_wait = time.monotonic()
            if not waiters:
                self._waiters.pop((channel, key), None)

    async def _run(self) -> None:
        args, kwargs = get_engine().dialect.create_connect_args(get_engine().url)
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(*args, autocommit=True, **kwargs)
                async with conn:
                    for channel in (CHANNEL_JOB, CHANNEL_SWEEP):
                        await conn.execute(f"LISTEN {channel}")
                    self._ready.set()
                    while self._waiters or time.monotonic() - self._last_wait < IDLE_CLOSE_S:
                        async for note in conn.notifies(timeout=IDLE_CLOSE_S / 4):
                            self._dispatch(note.channel, note.payload)
                    self._ready.clear()
                    return  # idle: the next long poll listens again
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - reconnect; waiters re-check meanwhile
                logger.warning("LISTEN connection lost (%s); reconnecting", exc)
            self._ready.clear()
            for key in list(self._waiters):  # a change may have been missed while down
                self._wake(key, RECHECK)
            await asyncio.sleep(RECONNECT_SECONDS)

    def _dispatch(self, channel: str, key: str) -> None:
        self.notifications += 1
        if (channel, key) not in self._waiters:
            return
        fetch = self._fetchers.get(channel)
        if fetch is None:
            self._wake((channel, key), RECHECK)
        else:
            asyncio.create_task(self._fetch_and_wake(fetch, channel, key))

    async def _fetch_and_wake(self, fetch: RowFetcher, channel: str, key: str) -> None:
        self.fetches += 1
        try:
            row = await fetch(key)
        except Exception as exc:  # noqa: BLE001 - the waiters reload by themselves
            logger.warning("long-poll fetch failed: %s", exc)
            row = RECHECK
        self._wake((channel, key), RECHECK if row is None else row)

    def _wake(self, key: tuple[str, str], value: Any) -> None:
        for sub in self._waiters.get(key, ()):
            sub.queue.put_nowait(value)


_listener: RunVar[ChangeListener | None] = RunVar("softlabel_change_listener")


def change_listener(fetchers: dict[str, RowFetcher]) -> ChangeListener | None:
    """The event loop's listener (created on first use); None without Postgres."""
    try:
        return _listener.get()
    except LookupError:
        listener = ChangeListener(fetchers) if get_engine().dialect.name == "postgresql" else None
        _listener.set(listener)
        return listener


async def wait_for_change(
    *,
    listener: ChangeListener | None,
    channel: str,
    key: str,
    load: Callable[[], Awaitable[bytes]],
    render: Callable[[Any], bytes] | None,
    if_none_match: str | None,
    wait: float,
    settled: Callable[[bytes], bool],
) -> Response:
    """Answer at once if the state differs from the client's; else when it changes or at `wait`.

    `load` reads the current body (and checks access: it raises 401/404); `render` turns a
    row fetched by the listener into a body (None: reload with `load`). Without an
    If-None-Match, the state at the request is the baseline; a settled (terminal) one returns
    at once.
    """
    deadline = time.monotonic() + min(wait, MAX_WAIT_SECONDS)
    async with _maybe_subscribe(listener, channel, key) as sub:
        body = await load()
        baseline = if_none_match or etag_of(body)
        if not if_none_match and settled(body):
            return conditional_response(body, None)
        while etag_matches(baseline, etag_of(body)):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                woken = await _next(sub, remaining)
            except TimeoutError:
                break
            body = render(woken) if render and woken is not RECHECK else await load()
    return conditional_response(body, if_none_match)


@contextlib.asynccontextmanager
async def _maybe_subscribe(
    listener: ChangeListener | None, channel: str, key: str
) -> AsyncIterator[Subscription | None]:
    if listener is None:
        yield None
        return
    async with listener.subscribe(channel, key) as sub:
        yield sub if listener.live else None


async def _next(sub: Subscription | None, remaining: float) -> Any:
    if sub is None:  # no LISTEN (SQLite, or Postgres unreachable for now): re-check
        await asyncio.sleep(min(remaining, FALLBACK_RECHECK_SECONDS))
        return RECHECK
    return await sub.next(remaining)
