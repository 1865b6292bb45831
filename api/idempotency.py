"""Idempotency-Key middleware: authenticate first, then hash the body as it streams.

Nothing heavy happens before the key is checked: a POST with an Idempotency-Key and no
valid API key is a 401 before one body byte is read. The body is hashed chunk by chunk and
spooled (memory up to SPOOL_MEMORY_BYTES, then a temporary file) so the app can read it
again; only a JSON body within the JSON request limit is parsed, to hash it canonically
(key order and spacing do not matter), and a body nested too deeply to parse is hashed raw.
"""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Awaitable, Callable, MutableMapping
from typing import IO, Any

from anyio import to_thread
from fastapi import Request

from core.config import Settings, get_settings
from core.db import get_sessionmaker, session_scope
from core.errors import AppError
from core.services import idempotency as idem_service

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

IDEMPOTENCY_HEADER = b"idempotency-key"
SPOOL_MEMORY_BYTES = 1 << 20
REPLAY_CHUNK_BYTES = 1 << 16


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return bytes(value).decode("latin-1")
    return None


class BodyFingerprint:
    """Incremental request_fingerprint: the same digest, without holding or parsing big bodies."""

    def __init__(self, *, method: str, path: str, content_type: str, json_limit: int) -> None:
        self.method, self.path, self.content_type = method, path, content_type
        media = content_type.split(";", 1)[0].strip().lower()
        self.json = media in ("application/json", "")
        self.json_limit = json_limit
        self.size = 0
        self._digest = hashlib.sha256(f"{method.upper()} {path}\n".encode())
        self._boundary = b""
        if media.startswith("multipart/") and "boundary=" in content_type:
            boundary = content_type.split("boundary=", 1)[1].split(";", 1)[0].strip().strip('"')
            self._boundary = boundary.encode()
        self._tail = b""

    def update(self, chunk: bytes) -> None:
        """Feed the next body chunk."""
        self.size += len(chunk)
        if not self._boundary:
            self._digest.update(chunk)
            return
        data, start = self._tail + chunk, 0
        while (found := data.find(self._boundary, start)) != -1:
            self._digest.update(data[start:found] + b"BOUNDARY")
            start = found + len(self._boundary)
        rest, keep = data[start:], len(self._boundary) - 1
        cut = max(len(rest) - keep, 0)
        self._digest.update(rest[:cut])
        self._tail = rest[cut:]

    def hexdigest(self, spool: IO[bytes]) -> str:
        """The fingerprint once the body has ended (`spool` holds it, for the JSON case)."""
        if self.json and 0 < self.size <= self.json_limit:
            spool.seek(0)
            try:
                return idem_service.request_fingerprint(
                    method=self.method,
                    path=self.path,
                    body=spool.read(),
                    content_type=self.content_type,
                )
            except RecursionError:  # too deep to parse: the raw bytes identify it
                pass
        self._digest.update(self._tail)
        self._tail = b""
        return self._digest.hexdigest()


def _authenticate(scope: Scope, settings: Settings) -> str:
    """The tenant id of the request's API key (AppError 401 otherwise)."""
    from api.deps import resolve_tenant

    session = get_sessionmaker()()
    try:
        return resolve_tenant(Request(scope), session, settings).id
    finally:
        session.rollback()
        session.close()


async def _send_error(scope: Scope, send: Send, exc: AppError) -> None:
    from api.middleware import _problem_bytes, send_problem

    body = _problem_bytes(exc.status_code, exc.type_slug, exc.title, exc.detail, scope["path"])
    extra = [(k.lower().encode(), v.encode()) for k, v in (exc.headers or {}).items()]
    await send_problem(send, exc.status_code, body, *extra)


class IdempotencyMiddleware:
    """For a POST with Idempotency-Key: authenticate, fingerprint the body, store the response.

    The claim itself happens in the `idempotency_guard` dependency; once the app has
    answered, the response is stored before the client sees its last byte.
    """

    def __init__(self, app: ASGIApp, *, settings: Settings | None = None) -> None:
        self.app = app
        self._settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Handle one HTTP request."""
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        if _header(scope, IDEMPOTENCY_HEADER) is None:
            await self.app(scope, receive, send)
            return
        settings = self._settings or get_settings()
        state = scope.setdefault("state", {})
        try:
            state["idempotency_tenant_id"] = await to_thread.run_sync(
                _authenticate, scope, settings
            )
        except AppError as exc:
            await _send_error(scope, send, exc)
            return
        with tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY_BYTES) as spool:
            if not await self._spool_body(scope, receive, spool, settings):
                return
            await self._run(scope, receive, send, spool)

    async def _spool_body(
        self, scope: Scope, receive: Receive, spool: IO[bytes], settings: Settings
    ) -> bool:
        """Read the body into `spool`, hashing it; False if the client went away."""
        fingerprint = BodyFingerprint(
            method=scope["method"],
            path=scope["path"],
            content_type=_header(scope, b"content-type") or "",
            json_limit=settings.max_request_bytes,
        )
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return False
            chunk = bytes(message.get("body", b""))
            fingerprint.update(chunk)
            spool.write(chunk)
            if not message.get("more_body", False):
                break
        scope["state"]["idempotency_fingerprint"] = fingerprint.hexdigest(spool)
        spool.seek(0)
        return True

    async def _run(self, scope: Scope, receive: Receive, send: Send, spool: IO[bytes]) -> None:
        state = scope["state"]
        body_done = False

        async def replay_receive() -> Message:
            nonlocal body_done
            if body_done:
                return await receive()
            chunk = spool.read(REPLAY_CHUNK_BYTES)
            body_done = len(chunk) < REPLAY_CHUNK_BYTES
            return {"type": "http.request", "body": chunk, "more_body": not body_done}

        start: Message | None = None
        parts: list[bytes] = []

        async def capture_send(message: Message) -> None:
            nonlocal start
            claim = state.get("idempotency_claim")
            if claim is None:
                await send(message)
                return
            if message["type"] == "http.response.start":
                start = message
                return
            if message["type"] == "http.response.body":
                parts.append(message.get("body", b""))
                if message.get("more_body", False):
                    return
                assert start is not None
                await to_thread.run_sync(_store_response, claim, start, b"".join(parts))
                state.pop("idempotency_claim", None)
                await send(start)
                await send({"type": "http.response.body", "body": b"".join(parts)})
                return
            await send(message)

        try:
            await self.app(scope, replay_receive, capture_send)
        finally:
            claim = state.pop("idempotency_claim", None)
            if claim is not None:  # no complete response: let a retry run again
                await to_thread.run_sync(_release, claim)


def _store_response(claim: tuple[str, str], start: Message, body: bytes) -> None:
    tenant_id, key = claim
    headers = {
        bytes(k).decode("latin-1").lower(): bytes(v).decode("latin-1")
        for k, v in start.get("headers", [])
    }
    kept = {k: v for k, v in headers.items() if k in ("location", "retry-after")}
    with session_scope() as session:
        idem_service.complete_key(
            session,
            tenant_id=tenant_id,
            key=key,
            status_code=int(start["status"]),
            body=body,
            media_type=headers.get("content-type", "application/json"),
            headers=kept,
        )


def _release(claim: tuple[str, str]) -> None:
    tenant_id, key = claim
    with session_scope() as session:
        idem_service.release_key(session, tenant_id=tenant_id, key=key)
