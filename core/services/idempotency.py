"""Idempotency keys: a POST repeated with the same key replays the original response.

A key is claimed by inserting its row with `status_code` NULL ("in flight") in a
transaction of its own, so a concurrent duplicate hits the primary key (tenant_id,
key) and sees the claim. When the request completes its status and exact body bytes
are stored; a failed or rate-limited request releases the key instead, so a retry
with the same key runs again. Rows expire `idempotency_ttl_hours` after creation; an
in-flight row older than STALE_IN_FLIGHT (the process handling it died) is replaced.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal

from sqlalchemy import delete
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from core.models import IdempotencyKey
from core.timeutil import as_utc, utcnow

STALE_IN_FLIGHT = timedelta(minutes=10)
MAX_KEY_LENGTH = 200
# Statuses that are not remembered: the key is released so that a retry runs again.
RELEASED_STATUSES = frozenset({408, 409, 425, 429})


def request_fingerprint(*, method: str, path: str, body: bytes, content_type: str) -> str:
    """SHA-256 of method, path and the canonical body (JSON re-serialised with sorted keys)."""
    canonical = body
    media = content_type.split(";", 1)[0].strip().lower()
    if media in ("application/json", "") and body:
        try:
            canonical = json.dumps(
                json.loads(body), sort_keys=True, separators=(",", ":")
            ).encode()
        except (ValueError, UnicodeDecodeError):
            canonical = body
    elif media.startswith("multipart/") and "boundary=" in content_type:
        # A client picks a fresh boundary per request: the same upload must hash the same.
        boundary = content_type.split("boundary=", 1)[1].split(";", 1)[0].strip().strip('"')
        if boundary:
            canonical = body.replace(boundary.encode(), b"BOUNDARY")
    digest = hashlib.sha256()
    digest.update(f"{method.upper()} {path}\n".encode())
    digest.update(canonical)
    return digest.hexdigest()


@dataclass(frozen=True)
class StoredResponse:
    """A remembered response, replayed byte for byte."""

    status_code: int
    body: bytes
    media_type: str
    headers: dict[str, str]


@dataclass(frozen=True)
class Claim:
    """The outcome of claiming a key."""

    state: Literal["new", "replay", "in_flight", "mismatch"]
    stored: StoredResponse | None = None


def _stored(row: IdempotencyKey) -> StoredResponse:
    doc: dict[str, Any] = row.response_body or {}
    return StoredResponse(
        status_code=int(row.status_code or 0),
        body=str(doc.get("text", "")).encode(),
        media_type=str(doc.get("media_type", "application/json")),
        headers={str(k): str(v) for k, v in (doc.get("headers") or {}).items()},
    )


def claim_key(
    session: Session,
    *,
    tenant_id: str,
    key: str,
    method: str,
    path: str,
    request_hash: str,
    ttl_hours: float,
) -> Claim:
    """Claim `key` for a request, or say how an earlier request with it stands."""
    now = utcnow()
    existing = session.get(IdempotencyKey, (tenant_id, key))
    if existing is not None:
        expires = as_utc(existing.expires_at)
        created = as_utc(existing.created_at)
        expired = expires is not None and expires <= now
        stale = existing.status_code is None and created is not None and (
            now - created > STALE_IN_FLIGHT
        )
        if not (expired or stale):
            return _judge(existing, request_hash)
        session.delete(existing)
        session.flush()
    row = IdempotencyKey(
        tenant_id=tenant_id,
        key=key,
        method=method.upper(),
        path=path,
        request_hash=request_hash,
        status_code=None,
        response_body=None,
        created_at=now,
        expires_at=now + timedelta(hours=ttl_hours),
    )
    try:
        with session.begin_nested():
            session.add(row)
    except IntegrityError:
        # A concurrent request claimed the key between our read and our insert.
        session.expire_all()
        other = session.get(IdempotencyKey, (tenant_id, key))
        if other is None:  # pragma: no cover - it was released again at once
            return Claim("in_flight")
        return _judge(other, request_hash)
    return Claim("new")


def _judge(row: IdempotencyKey, request_hash: str) -> Claim:
    if row.request_hash != request_hash:
        return Claim("mismatch")
    if row.status_code is None:
        return Claim("in_flight")
    return Claim("replay", _stored(row))


def complete_key(
    session: Session,
    *,
    tenant_id: str,
    key: str,
    status_code: int,
    body: bytes,
    media_type: str,
    headers: dict[str, str],
) -> None:
    """Remember the response of a claimed key (or release it for statuses not remembered)."""
    row = session.get(IdempotencyKey, (tenant_id, key))
    if row is None:
        return
    if status_code >= 500 or status_code in RELEASED_STATUSES:
        session.delete(row)
        session.flush()
        return
    row.status_code = status_code
    row.response_body = {
        "text": body.decode("utf-8", errors="replace"),
        "media_type": media_type,
        "headers": headers,
    }
    session.flush()


def release_key(session: Session, *, tenant_id: str, key: str) -> None:
    """Forget an in-flight claim (the request failed before producing a response)."""
    session.execute(
        delete(IdempotencyKey).where(
            IdempotencyKey.tenant_id == tenant_id,
            IdempotencyKey.key == key,
            IdempotencyKey.status_code.is_(None),
        )
    )


def purge_expired(session: Session) -> int:
    """Delete expired keys; returns how many."""
    result = session.execute(delete(IdempotencyKey).where(IdempotencyKey.expires_at <= utcnow()))
    return int(result.rowcount or 0)  # type: ignore[attr-defined]
