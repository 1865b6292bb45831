"""Pure ASGI middleware: request context (id, JSON access log, latency), body limits, idempotency.

Order, outermost first: RequestContext → BodyLimit → Idempotency (api/idempotency.py) → the app.
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
from urllib.parse import parse_qsl

from fastapi import FastAPI, Request
from fastapi.responses import Response
from prometheus_client import Histogram
from starlette.exceptions import HTTPException as StarletteHTTPException

from api.deps import IdempotentReplay
from api.errors import PROBLEM_MEDIA_TYPE, PROBLEM_TYPE_BASE
from api.idempotency import IdempotencyMiddleware
from api.longpoll import forget_cached_answers
from core.config import Settings, get_settings
from core.logging import job_id_var, request_id_var
from core.validation import text_problem

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

access_logger = logging.getLogger("softlabel.access")
logger = logging.getLogger("softlabel.api")
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


def _problem_bytes(
    status: int, slug: str, title: str, detail: str, instance: str, **extra: Any
) -> bytes:
    body = {
        "type": PROBLEM_TYPE_BASE + slug,
        "title": title,
        "status": status,
        "detail": detail,
        "instance": instance,
        **extra,
    }
    return json.dumps(body, separators=(",", ":")).encode()


async def send_problem(send: Send, status: int, body: bytes, *extra: tuple[bytes, bytes]) -> None:
    """Send a complete problem+json response."""
    headers = [
        (b"content-type", PROBLEM_MEDIA_TYPE.encode()),
        (b"content-length", str(len(body)).encode()),
        *extra,
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def unsafe_url_text(scope: Scope) -> str | None:
    """What in the path or query string the database could not store (NUL...), or None."""
    problem = text_problem(scope.get("path", ""))
    if problem is not None:
        return f"The URL path {problem}"
    query = bytes(scope.get("query_string", b""))
    if query:
        for name, value in parse_qsl(query.decode("latin-1"), keep_blank_values=True):
            if not name:
                return f"The query string has a parameter without a name (={value[:40]!r})"
            problem = text_problem(name) or text_problem(value)
            if problem is not None:
                return f"The query parameter {name[:40]!r} {problem}"
    return None


def _log_access(scope: Scope, status: int, elapsed: float) -> None:
    """Record one request's latency by route and write its access log line."""
    route = scope.get("route")
    template = getattr(route, "path", None) or UNMATCHED_ROUTE
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


_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


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
        started_holder = [False]

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                started_holder[0] = True
                status_holder[0] = int(message["status"])
                if scope["method"] not in _SAFE_METHODS and status_holder[0] < 400:
                    forget_cached_answers()  # committed: this process's next GETs read anew
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", request_id.encode()))
                headers.append((b"x-content-type-options", b"nosniff"))
                message["headers"] = headers
            await send(message)

        try:
            problem = unsafe_url_text(scope)
            if problem is not None:
                body = _problem_bytes(
                    422, "validation-error", "Invalid request", problem, scope["path"]
                )
                await send_problem(send_with_id, 422, body)
            else:
                await self.app(scope, receive, send_with_id)
        except Exception:  # the last resort: any unexpected error is a problem+json 500
            logger.exception("unhandled error in %s %s", scope["method"], scope["path"])
            if started_holder[0]:
                raise  # a response is half sent: nothing to do but drop the connection
            body = _problem_bytes(
                500,
                "internal",
                "Internal server error",
                f"An unexpected error occurred; quote request id {request_id} when reporting it",
                scope["path"],
                request_id=request_id,
            )
            await send_problem(send_with_id, 500, body)
        finally:
            _log_access(scope, status_holder[0], time.perf_counter() - started)
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

    def limit_for(self, path: str, method: str = "POST") -> int:
        """Uploads (POST /v1/datasets) get the upload limit, every other body the JSON limit."""
        settings = self._settings or get_settings()
        if method == "POST" and path.rstrip("/") == "/v1/datasets":
            return settings.max_upload_bytes
        return settings.max_request_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Enforce the limit on one HTTP request."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope["path"], scope["method"])
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
