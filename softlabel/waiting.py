"""Waiting on a job or sweep: long polls (`?wait=` + If-None-Match), backoff as a fallback."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from softlabel.client import Client

LONG_POLL_SECONDS = 30.0


def _backoff(initial: float, cap: float) -> Iterator[float]:
    delay = initial
    while True:
        yield delay
        delay = min(delay * 1.6, cap)


def watch(
    client: Client,
    path: str,
    *,
    done: Callable[[dict[str, Any]], bool],
    on_update: Callable[[dict[str, Any]], None] | None,
    timeout: float | None,
    poll_initial: float = 0.25,
    poll_max: float = 5.0,
) -> dict[str, Any]:
    """Follow a resource until `done`: long polls while the server supports them.

    A server that sends no ETag, or answers a long poll early without a change, gets
    backoff polling instead.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    delays = _backoff(poll_initial, poll_max)
    etag: str | None = None
    long_poll = True
    doc: dict[str, Any] = {}
    while True:
        left = None if deadline is None else deadline - time.monotonic()
        wait = LONG_POLL_SECONDS if left is None else max(0.0, min(LONG_POLL_SECONDS, left))
        started = time.monotonic()
        fresh, etag = client.poll(path, etag=etag, wait=wait if long_poll and etag else None)
        if fresh is not None:
            doc = fresh
            if on_update is not None:
                on_update(doc)
            if done(doc):
                return doc
        early = fresh is None and time.monotonic() - started < wait / 2
        if etag is None or (wait >= 2 and early):
            long_poll = False  # the server does not long-poll: back off instead
        if deadline is not None and time.monotonic() >= deadline:
            raise _timeout(f"{path} is still {doc.get('status')} after {timeout}s")
        if not long_poll or etag is None:
            delay = next(delays)
            if deadline is not None and time.monotonic() + delay > deadline:
                raise _timeout(f"{path} is still {doc.get('status')} after {timeout}s")
            time.sleep(delay)


def _timeout(message: str) -> Exception:
    from softlabel.client import WaitTimeout

    return WaitTimeout(message)
