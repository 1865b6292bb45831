"""Pure ASGI middleware: request context (id, JSON access log, latency), body limits, idempotency.

Order, outermost first: RequestContext → BodyLimit → Idempotency → the app.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from anyio import to_thread
from fastapi import FastAPI, Request
from fastapi.responses import Response
from prometheus_client import Histogram
from starlette.exceptions import HTTPException as StarletteHTTPException

from api.deps import IdempotentReplay
from api.errors import PROBLEM_MEDIA_TYPE, PROBLEM_TYPE_BASE
from core.config import Settings, get_settings
from core.db import session_scope
from core.logging import job_id_var, request_id_var
from core.services import idempotency as idem_service

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

access_logger = logging.getLogger("softlabel.access")
IDEMPOTENCY_HEADER = "idempotency-key"
_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
UNMATCHED_ROUTE = "<unmatched>"

HTTP_LATENCY = Histogram(
    "softlabel_http_request_duration_seconds",
    "HTTP request latency by route template, method and status class",
    ["method", "route", "status"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return bytes(value).decode("latin-1")
    return None


def _problem_bytes(status: int, slug: str, title: str, detail: str, instance: str) -> bytes:
    body = {
        "type": PROBLEM_TYPE_BASE + slug,
        "title": title,
        "status": status,
        "detail": detail,
        "instance": instance,
    }
    return json.dumps(body, separators=(",", ":")).encode()


class RequestContextMiddleware:
    """Request id (X-Request-ID in and out), one JSON access log line, latency by route."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Wrap one HTTP request."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = _header(scope, b"x-request-id")
        request_id = incoming if incoming and _REQUEST_ID_RE.match(incoming) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        token = request_id_var.set(request_id)
        started = time.perf_counter()
        status_holder = [500]

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                status_holder[0] = int(message["status"])
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", request_id.encode()))
                message["headers"] = headers
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - started
            route = scope.get("route")
            template = getattr(route, "path", None) or UNMATCHED_ROUTE
            status = status_holder[0]
            HTTP_LATENCY.labels(scope["method"], template, f"{status // 100}xx").observe(elapsed)
            state = scope.get("state", {})
            job_id = (scope.get("path_params") or {}).get("job_id")
            access_logger.info(
                "%s %s %d",
                scope["method"],
                scope["path"],
                status,
                extra={
                    "method": scope["method"],
                    "path": scope["path"],
                    "route": template,
                    "status": status,
                    "duration_ms": round(elapsed * 1000, 3),
                    "tenant_id": state.get("tenant_id"),
                    **({"job_id": job_id} if job_id else {}),
                },
            )
            request_id_var.reset(token)
            job_id_var.set(None)


class _BodyTooLarge(StarletteHTTPException):
    """Raised from `receive` once the streamed body passes the limit."""

    def __init__(self) -> None:
        super().__init__(status_code=413, detail="Payload too large")


class BodyLimitMiddleware:
    """Refuse bodies over the limit with 413 before buffering: Content-Length or counted bytes."""

    def __init__(self, app: ASGIApp, *, settings: Settings | None = None) -> None:
        self.app = app
        self._settings = settings

    def limit_for(self, path: str) -> int:
        """Uploads (/v1/datasets) get the upload limit, every other body the JSON limit."""
        settings = self._settings or get_settings()
        if path.startswith("/v1/datasets"):
            return settings.max_upload_bytes
        return settings.max_request_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Enforce the limit on one HTTP request."""
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope["path"])
        declared = _header(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await self._reject(scope, send, limit)
            return
        received = 0
        exceeded = False
        started = False

        async def counting_receive() -> Message:
            nonlocal received, exceeded
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    exceeded = True
                    raise _BodyTooLarge()
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if exceeded:
                return  # the app's own answer is replaced by the 413 below
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        with contextlib.suppress(_BodyTooLarge):
            await self.app(scope, counting_receive, guarded_send)
        if exceeded and not started:
            await self._reject(scope, send, limit)

    async def _reject(self, scope: Scope, send: Send, limit: int) -> None:
        body = _problem_bytes(
            413,
            "payload-too-large",
            "Payload too large",
            f"The request body exceeds the limit of {limit} bytes",
            scope["path"],
        )
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", PROBLEM_MEDIA_TYPE.encode()),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


class IdempotencyMiddleware:
    """For a POST with Idempotency-Key: fingerprint the body, then store the response.

    The claim itself happens in the `idempotency_guard` dependency (it knows the tenant);
    this middleware buffers the (already size-limited) body to hash it, and once the app
    has answered stores the response before the client sees its last byte.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Handle one HTTP request."""
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        if _header(scope, IDEMPOTENCY_HEADER.encode()) is None:
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        state = scope.setdefault("state", {})
        state["idempotency_fingerprint"] = idem_service.request_fingerprint(
            method=scope["method"],
            path=scope["path"],
            body=body,
            content_type=_header(scope, b"content-type") or "",
        )
        replayed = False

        async def replay_receive() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

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


def install_middleware(app: FastAPI) -> None:
    """Add the middleware stack and the replay handler to the app."""

    @app.exception_handler(IdempotentReplay)
    async def _replay(_request: Request, exc: IdempotentReplay) -> Response:
        stored = exc.stored
        headers = {**stored.headers, "Idempotent-Replayed": "true"}
        return Response(
            content=stored.body,
            status_code=stored.status_code,
            headers=headers,
            media_type=stored.media_type,
        )

    app.add_middleware(IdempotencyMiddleware)
    app.add_middleware(BodyLimitMiddleware)
    app.add_middleware(RequestContextMiddleware)
