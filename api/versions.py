"""The process's cache of current answers, kept true by its LISTEN connection (api.longpoll).

A GET of a job (or sweep) whose answer is cached, by a key cached for the owning tenant, is
answered without a database query: 304 when its `If-None-Match` names the cached ETag, else
200 with the cached body. Entries are
trusted only while the LISTEN connection is up: every notification drops its entry (a job,
a sweep, an API key by hash), a lost connection drops them all, and an entry read from the
database is stored only when no notification for it (and no reconnect) came while it was
being read. So a cached answer is never older than the last notification this process got:
a change is seen by GETs at the same moment it wakes the long polls. A write this process
answers (any successful non-GET request) drops every entry before its answer is sent, so a
client reads its own writes through the same process at once.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from core.services.watch import CHANNEL_KEY

MAX_ENTRIES = 8192  # per kind; least recently used ones go first
MAX_MARKS = 16384  # recent invalidations kept to check reads in flight against


@dataclass(frozen=True)
class Ticket:
    """When a read began: its result may be cached if nothing it covers changed since."""

    epoch: int
    clock: int


@dataclass(frozen=True)
class Cached:
    """A job's or sweep's current answer as this process knows it: owner, ETag and body."""

    tenant_id: str
    etag: str
    body: bytes


class VersionCache:
    """Answer (owner, ETag, body) per (channel, id), and tenant per API key hash; one per loop."""

    def __init__(self) -> None:
        self._etags: OrderedDict[tuple[str, str], Cached] = OrderedDict()
        self._keys: OrderedDict[str, str] = OrderedDict()
        self._marks: dict[tuple[str, str], int] = {}  # last invalidation of each entry
        self._epoch = 0
        self._clock = 0
        self.live = False
        self.hits = 0

    def connected(self) -> None:
        """LISTEN is active from now on: reads begun from now may be cached."""
        self.reset()
        self.live = True

    def disconnected(self) -> None:
        """LISTEN is lost: nothing cached can be trusted, nor any read in flight."""
        self.live = False
        self.reset()

    def reset(self) -> None:
        """Forget every entry and every read in flight."""
        self._epoch += 1
        self._etags.clear()
        self._keys.clear()
        self._marks.clear()

    def ticket(self) -> Ticket | None:
        """Taken before a read whose result is to be cached (None: the cache is off)."""
        return Ticket(self._epoch, self._clock) if self.live else None

    def invalidate(self, kind: str, key: str) -> None:
        """A notification: the entry (kind, key) changed (CHANNEL_KEY: an API key by hash).

        (CHANNEL_KEY, "*"): a table was truncated; every entry is forgotten.
        """
        self._clock += 1
        if kind == CHANNEL_KEY and key == "*":
            self.reset()
            return
        if len(self._marks) >= MAX_MARKS:
            self.reset()  # the reads in flight are not stored; the entries are read again
        self._marks[(kind, key)] = self._clock
        if kind == CHANNEL_KEY:
            self._keys.pop(key, None)
        else:
            self._etags.pop((kind, key), None)

    def _valid(self, ticket: Ticket | None, kind: str, key: str) -> bool:
        if ticket is None or not self.live or ticket.epoch != self._epoch:
            return False
        return self._marks.get((kind, key), -1) <= ticket.clock

    def store_key(self, ticket: Ticket | None, *, key_hash: str, tenant_id: str) -> None:
        """Remember that a live key belongs to the tenant (read under `ticket`)."""
        if self._valid(ticket, CHANNEL_KEY, key_hash):
            _put(self._keys, key_hash, tenant_id)

    def store(
        self, ticket: Ticket | None, kind: str, key: str, *, tenant_id: str, etag: str,
        body: bytes,
    ) -> None:
        """Remember the current answer of a job or sweep and its owner (read under `ticket`)."""
        if self._valid(ticket, kind, key):
            _put(self._etags, (kind, key), Cached(tenant_id, etag, body))

    def tenant_of(self, key_hash: str) -> str | None:
        """The tenant of a live API key, when known."""
        return self._keys.get(key_hash) if self.live else None

    def current(self, kind: str, key: str, *, key_hash: str) -> Cached | None:
        """The entry when the key's tenant owns it; None: ask the database."""
        if not self.live:
            return None
        tenant_id = self._keys.get(key_hash)
        entry = self._etags.get((kind, key))
        if tenant_id is None or entry is None or entry.tenant_id != tenant_id:
            return None
        self._keys.move_to_end(key_hash)
        self._etags.move_to_end((kind, key))
        self.hits += 1
        return entry


def _put(entries: OrderedDict[str, str] | OrderedDict[tuple[str, str], Cached],
         key: object, value: object) -> None:
    entries[key] = value  # type: ignore[index,assignment]
    entries.move_to_end(key)  # type: ignore[arg-type]
    if len(entries) > MAX_ENTRIES:
        entries.popitem(last=False)
