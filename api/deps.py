"""Typed dependencies: settings, the DB session, the calling tenant."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Annotated, TypeVar, TypeVarTuple

from anyio import CapacityLimiter, to_thread
from anyio.lowlevel import RunVar
from fastapi import Depends, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from api.ui.session import browser_tenant
from core.config import Settings, get_settings
from core.db import POOL_SIZE, session_scope
from core.errors import ConflictError, UnauthorizedError, ValidationAppError
from core.models import Tenant
from core.services import idempotency, tenants


def get_db() -> Iterator[Session]:
    """The request's unit of work: commits when the handler returns, rolls back if it raises.

    Services only flush; the effects they collect (enqueue, announce) run after this commit.
    Its scope is the handler (`scope="function"`), so the commit comes before the response.
    """
    with session_scope() as session:
        yield session


# Threads that hot read paths (GET /v1/jobs/{id}) may run DB work in at once, per event loop:
# below the pool size, so bursts queue here (cheap) instead of opening overflow connections
# (a Postgres backend fork each) or waiting for the pool inside a thread.
DB_THREADS = POOL_SIZE - 2
_db_limiter: RunVar[CapacityLimiter] = RunVar("softlabel_db_limiter")


def db_limiter() -> CapacityLimiter:
    """The event loop's limiter for DB work in threads (see DB_THREADS)."""
    try:
        return _db_limiter.get()
    except LookupError:
        limiter = CapacityLimiter(DB_THREADS)
        _db_limiter.set(limiter)
        return limiter


T = TypeVar("T")
Args = TypeVarTuple("Args")


async def in_db_thread(func: Callable[[*Args], T], *args: *Args) -> T:
    """`func(*args)` (blocking DB work) in a worker thread, under the DB thread limiter."""
    return await to_thread.run_sync(func, *args, limiter=db_limiter())


SettingsDep = Annotated[Settings, Depends(get_settings)]
SessionDep = Annotated[Session, Depends(get_db, scope="function")]


bearer_scheme = HTTPBearer(
    auto_error=False,
    scheme_name="ApiKey",
    description="An API key from `softlabel keys create --tenant NAME`",
)


BearerCredentials = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)]


def bearer_token(request: Request) -> str | None:
    """The API key of an `Authorization: Bearer <key>` header, or None."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return None


def request_settings(request: Request) -> Settings:
    """The settings, honouring `app.dependency_overrides[get_settings]` like `SettingsDep`.

    For dependencies that must not cost a threadpool hop per request (FastAPI runs a sync
    dependency such as `get_settings` in a worker thread).
    """
    factory = request.app.dependency_overrides.get(get_settings, get_settings)
    settings: Settings = factory()
    return settings


def resolve_tenant(request: Request, session: Session, settings: Settings) -> Tenant:
    """The tenant of the request's Bearer key; 401 with WWW-Authenticate otherwise."""
    token = bearer_token(request)
    if token is not None:
        tenant = tenants.authenticate(session, raw_key=token)
        if tenant is not None:
            request.state.tenant_id = tenant.id
            return tenant
        raise UnauthorizedError("The API key is invalid or revoked")
    browser = browser_tenant(request, session)  # the dashboard's session cookie
    if browser is not None:
        return browser
    if settings.auth_disabled:
        return tenants.get_or_create_tenant(session, name="local")  # the caller commits
    raise UnauthorizedError("Send an API key as 'Authorization: Bearer <key>'")


def get_tenant(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    _credentials: BearerCredentials,
) -> Tenant:
    """The tenant of the Bearer key; 401 with WWW-Authenticate otherwise."""
    return resolve_tenant(request, session, settings)


TenantDep = Annotated[Tenant, Depends(get_tenant)]


class IdempotentReplay(Exception):  # noqa: N818 - not an error: a remembered answer
    """Raised by the guard to answer with a stored response."""

    def __init__(self, stored: idempotency.StoredResponse) -> None:
        super().__init__("idempotent replay")
        self.stored = stored


async def idempotency_guard(request: Request) -> None:
    """Claim the POST's Idempotency-Key, or replay / refuse (422 other body, 409 in flight).

    An app-wide dependency, so it is async and returns at once for everything but a POST
    with an Idempotency-Key: a sync dependency (or one needing a session) would cost every
    GET threadpool hops and a session of its own.
    """
    fingerprint = getattr(request.state, "idempotency_fingerprint", None)
    key = request.headers.get("idempotency-key")
    if request.method != "POST" or key is None or fingerprint is None:
        return
    if not 1 <= len(key) <= idempotency.MAX_KEY_LENGTH or not key.isprintable():
        raise ValidationAppError(
            f"Idempotency-Key must be 1 to {idempotency.MAX_KEY_LENGTH} printable characters",
            extra={"errors": [{"loc": ["header", "Idempotency-Key"], "msg": "invalid key"}]},
        )
    settings = request_settings(request)
    await to_thread.run_sync(_claim_idempotency_key, request, settings, key, fingerprint)


def _claim_idempotency_key(
    request: Request, settings: Settings, key: str, fingerprint: str
) -> None:
    with session_scope() as own:
        # the idempotency middleware authenticated first; resolving here is the fallback
        tenant_id = getattr(request.state, "idempotency_tenant_id", None)
        if tenant_id is None:
            tenant_id = resolve_tenant(request, own, settings).id
        claim = idempotency.claim_key(
            own,
            tenant_id=tenant_id,
            key=key,
            method=request.method,
            path=request.url.path,
            request_hash=fingerprint,
            ttl_hours=settings.idempotency_ttl_hours,
        )
    if claim.state == "mismatch":
        raise ValidationAppError(
            "This Idempotency-Key was used with a different request body or path; "
            "use a new key for a new request",
            extra={"errors": [{"loc": ["header", "Idempotency-Key"], "msg": "key reused"}]},
        )
    if claim.state == "in_flight":
        raise ConflictError(
            "A request with this Idempotency-Key is still being processed; retry shortly"
        )
    if claim.state == "replay":
        assert claim.stored is not None
        raise IdempotentReplay(claim.stored)
    request.state.idempotency_claim = (tenant_id, key)


LimitQuery = Annotated[int, Query(ge=1, le=200, description="Page size (at most 200)")]
CursorQuery = Annotated[
    str | None, Query(max_length=500, description="The next_cursor of the previous page")
]
