"""ETag / If-None-Match and long polls (`?wait=SECONDS`) on top of Postgres LISTEN/NOTIFY.

One listener per API process (per event loop): a single autocommit connection LISTENs on the
job, sweep and API key channels (core.services.watch). Each notification drops the entry of
the process's answer cache (api.versions), so a GET of an unchanged job or sweep is answered
without a query (304 for a current ETag), and is fanned out to the requests waiting on that
id: the changed job or sweep is read once and the same body handed to every waiter, so a
change costs one read per API process however many clients wait. Without Postgres (embedded
SQLite) there is no cache and waiters re-check once a second instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg
from anyio.lowlevel import RunVar
from fastapi import Request, Response

from api.deps import bearer_token
from api.versions import Cached, Ticket, VersionCache
from core.db import QUERIES, get_engine
from core.services.tenants import hash_key
from core.services.watch import CHANNEL_JOB, CHANNEL_KEY, CHANNEL_SWEEP

logger = logging.getLogger("softlabel.api")
MAX_WAIT_SECONDS = 60.0
FALLBACK_RECHECK_SECONDS = 1.0
RECONNECT_SECONDS = 0.5
IDLE_CLOSE_S = 60.0  # no long poll for this long: the LISTEN connection is closed
# A peer that vanished without closing (a network partition) is noticed within ~25 s, and the
# cache dropped then; a closed connection (Postgres restarted, backend ended) at once.
LISTEN_KEEPALIVES = {"keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5,
                     "keepalives_count": 3}
RECHECK = object()  # a wake-up without a row: the waiter reloads by itself


@dataclass(frozen=True)
class Fetched:
    """A job or sweep read by id for the waiters: its owner and its JSON body."""

    tenant_id: str
    body: bytes
    cacheable: bool = True


BodyFetcher = Callable[[str], Awaitable[Fetched | None]]


def etag_of(body: bytes) -> str:
    """A strong ETag of a response body."""
    return '"' + hashlib.blake2b(body, digest_size=12).hexdigest() + '"'


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    """Whether an If-None-Match header names this ETag (or is `*`)."""
    if not if_none_match:
        return False
    tags = [t.strip().removeprefix("W/") for t in if_none_match.split(",")]
    return "*" in tags or etag in tags


def not_modified(etag: str) -> Response:
    """304: the client's copy (this ETag) is current."""
    return Response(status_code=304, headers={"ETag": etag, "Cache-Control": "no-cache"})


def conditional_response(body: bytes, if_none_match: str | None) -> Response:
    """200 with the body and its ETag, or 304 when the client already has it."""
    etag = etag_of(body)
    headers = {"ETag": etag, "Cache-Control": "no-cache"}
    if etag_matches(if_none_match, etag):
        return not_modified(etag)
    return Response(content=body, media_type="application/json", headers=headers)


@dataclass(eq=False)  # hashed by identity: one per waiting request
class Subscription:
    """One waiting request: woken with a Fetched job or sweep, or RECHECK."""

    channel: str
    key: str
    queue: asyncio.Queue[Any] = field(default_factory=asyncio.Queue)

    async def next(self, timeout: float) -> Any:
        """The next wake-up (Fetched or RECHECK); raises TimeoutError when none comes in time."""
        return await asyncio.wait_for(self.queue.get(), timeout)


class ChangeListener:
    """The process's LISTEN connection, its ETag cache and the waiters it wakes."""

    def __init__(self) -> None:
        self.fetchers: dict[str, BodyFetcher] = {}
        self.cache = VersionCache()
        self._waiters: dict[tuple[str, str], set[Subscription]] = {}
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.notifications = 0
        self.fetches = 0
        self.connects = 0
        self._fetching: dict[tuple[str, str], int] = {}  # reads under way for waiters
        self.waiting = 0  # long polls waiting now
        self._last_use = time.monotonic()

    @property
    def live(self) -> bool:
        """Whether LISTEN is active (notifications are being received)."""
        return self._ready.is_set()

    def fetching(self, channel: str, key: str) -> bool:
        """Whether a read of (channel, key) for its waiters is under way."""
        return (channel, key) in self._fetching

    def start(self) -> None:
        """Listen (from the next moment) and keep listening while requests come."""
        self._last_use = time.monotonic()
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="softlabel-listen")

    @contextlib.asynccontextmanager
    async def subscribe(self, channel: str, key: str) -> AsyncIterator[Subscription]:
        """Register a waiter before the caller reads the current state (no change is lost)."""
        self.start()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._ready.wait(), 5.0)
        sub = Subscription(channel, key)
        self._waiters.setdefault((channel, key), set()).add(sub)
        self.waiting += 1
        try:
            yield sub
        finally:
            self.waiting -= 1
            waiters = self._waiters.get((channel, key), set())
            waiters.discard(sub)
            self._last_use = time.monotonic()
            if not waiters:
                self._waiters.pop((channel, key), None)

    def _in_use(self) -> bool:
        return bool(self._waiters) or time.monotonic() - self._last_use < IDLE_CLOSE_S

    async def _run(self) -> None:
        args, kwargs = get_engine().dialect.create_connect_args(get_engine().url)
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(
                    *args, autocommit=True, **{**LISTEN_KEEPALIVES, **kwargs}
                )
                async with conn:
                    for channel in (CHANNEL_JOB, CHANNEL_SWEEP, CHANNEL_KEY):
                        QUERIES.add()
                        await conn.execute(f"LISTEN {channel}")
                    self.connects += 1
                    self.cache.connected()
                    self._ready.set()
                    while self._in_use():
                        async for note in conn.notifies(timeout=IDLE_CLOSE_S / 4):
                            self._dispatch(note.channel, note.payload)
                    self._ready.clear()
                    self.cache.disconnected()
                    return  # idle: the next request listens again
            except asyncio.CancelledError:
                self._ready.clear()
                self.cache.disconnected()
                raise
            except Exception as exc:  # noqa: BLE001 - reconnect; waiters re-check meanwhile
                logger.warning("LISTEN connection lost (%s); reconnecting", exc)
            self._ready.clear()
            self.cache.disconnected()
            for key in list(self._waiters):  # a change may have been missed while down
                self._wake(key, RECHECK)
            await asyncio.sleep(RECONNECT_SECONDS)

    def _dispatch(self, channel: str, key: str) -> None:
        self.notifications += 1
        self.cache.invalidate(channel, key)
        if (channel, key) not in self._waiters:
            return
        fetch = self.fetchers.get(channel)
        if fetch is None:
            self._wake((channel, key), RECHECK)
        else:
            ticket = self.cache.ticket()
            self._fetching[(channel, key)] = self._fetching.get((channel, key), 0) + 1
            asyncio.create_task(self._fetch_and_wake(fetch, channel, key, ticket))

    async def _fetch_and_wake(
        self, fetch: BodyFetcher, channel: str, key: str, ticket: Ticket | None
    ) -> None:
        self.fetches += 1
        woken: Any = RECHECK
        try:
            found = await fetch(key)
        except Exception as exc:  # noqa: BLE001 - the waiters reload by themselves
            logger.warning("long-poll fetch failed: %s", exc)
            found = None
        if found is not None and found.cacheable:
            self.cache.store(ticket, channel, key, tenant_id=found.tenant_id,
                             etag=etag_of(found.body), body=found.body)
        if found is not None:
            woken = found
        left = self._fetching.pop((channel, key), 1) - 1
        if left:
            self._fetching[(channel, key)] = left
        self._wake((channel, key), woken)

    def _wake(self, key: tuple[str, str], value: Any) -> None:
        for sub in self._waiters.get(key, ()):
            sub.queue.put_nowait(value)


_listener: RunVar[ChangeListener | None] = RunVar("softlabel_change_listener")
LISTENERS: weakref.WeakSet[ChangeListener] = weakref.WeakSet()  # for /metrics


def change_listener(channel: str, fetcher: BodyFetcher | None = None) -> ChangeListener | None:
    """The event loop's listener (created on first use); None without Postgres.

    `fetcher` reads a `channel` entry by id for the waiters (once per change and process);
    without one, every waiter reloads by itself.
    """
    try:
        listener = _listener.get()
    except LookupError:
        listener = ChangeListener() if get_engine().dialect.name == "postgresql" else None
        _listener.set(listener)
        if listener is not None:
            LISTENERS.add(listener)
    if listener is not None and fetcher is not None:
        listener.fetchers.setdefault(channel, fetcher)
    return listener


def cached_answer(
    listener: ChangeListener | None, channel: str, key: str, request: Request
) -> Cached | None:
    """The answer this process knows is current for the caller's job/sweep (None: ask the DB).

    Also starts the listener, so the next reads can be cached.
    """
    if listener is None:
        return None
    listener.start()
    token = bearer_token(request)
    if token is None:
        return None
    found = listener.cache.current(channel, key, key_hash=hash_key(token))
    if found is None:
        return None
    request.state.tenant_id = found.tenant_id
    return found


def cached_response(entry: Cached, if_none_match: str | None) -> Response:
    """A cached answer as 304 (the client's ETag is current) or 200 with its body."""
    if etag_matches(if_none_match, entry.etag):
        return not_modified(entry.etag)
    return Response(content=entry.body, media_type="application/json",
                    headers={"ETag": entry.etag, "Cache-Control": "no-cache"})


def forget_cached_answers() -> None:
    """Drop this event loop's cached answers (a write of this process was just committed)."""
    try:
        listener = _listener.get()
    except LookupError:
        return
    if listener is not None:
        listener.cache.reset()


def caller_tenant(listener: ChangeListener, request: Request) -> str | None:
    """The tenant of the request's key when this process's cache knows it (None: unknown)."""
    token = bearer_token(request)
    tenant = listener.cache.tenant_of(hash_key(token)) if token is not None else None
    if tenant is not None:
        request.state.tenant_id = tenant
    return tenant


async def wait_for_change(
    *,
    listener: ChangeListener | None,
    channel: str,
    key: str,
    request: Request,
    load: Callable[[], Awaitable[bytes]],
    if_none_match: str | None,
    wait: float,
    settled: Callable[[bytes], bool],
) -> Response:
    """Answer at once if the state differs from the client's; else when it changes or at `wait`.

    `load` reads the current body (and checks access: it raises 401/404, and leaves the
    caller's tenant in `request.state.tenant_id`). A client's ETag that the cache knows is
    current spares that read, and so does a read for every waiter already under way (the
    change's fan-out). Without an If-None-Match, the state at the request is the baseline;
    a settled (terminal) one returns at once.
    """
    deadline = time.monotonic() + min(wait, MAX_WAIT_SECONDS)
    async with _maybe_subscribe(listener, channel, key) as sub:
        body, etag = await _start(listener, sub, channel, key, request, load, if_none_match)
        if body is not None and not if_none_match and settled(body):
            return conditional_response(body, None)
        baseline = if_none_match or etag
        while etag is None or etag_matches(baseline, etag):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                woken = await _next(sub, remaining)
            except TimeoutError:
                break
            body = await _body_of(woken, request, load)
            etag = etag_of(body)
        if etag is None:  # the read under way never answered: read now
            body = await load()
            etag = etag_of(body)
    if body is None:
        return not_modified(etag)
    return conditional_response(body, if_none_match)


async def _start(
    listener: ChangeListener | None,
    sub: Subscription | None,
    channel: str,
    key: str,
    request: Request,
    load: Callable[[], Awaitable[bytes]],
    if_none_match: str | None,
) -> tuple[bytes | None, str | None]:
    """The state at the request: (None, ETag) cached, (None, None) a read under way, or read."""
    if listener is not None and sub is not None and if_none_match:
        cached = cached_answer(listener, channel, key, request)
        if cached is not None and etag_matches(if_none_match, cached.etag):
            return None, cached.etag  # the client's state is the current one
        if cached is None and listener.fetching(channel, key) and caller_tenant(listener, request):
            return None, None  # the change's read for every waiter is under way: wait for it
    body = await load()
    return body, etag_of(body)


async def _body_of(woken: Any, request: Request, load: Callable[[], Awaitable[bytes]]) -> bytes:
    """A wake-up's body when it is the caller's tenant's; else read (RECHECK; 404)."""
    if isinstance(woken, Fetched) and woken.tenant_id == getattr(request.state, "tenant_id", None):
        return woken.body
    return await load()


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
