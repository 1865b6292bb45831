"""Browser sessions for the dashboard: a signed token per API key, no table.

The token is `<key id>.<expiry>.<HMAC-SHA256(key hash, "<key id>.<expiry>")>`. The key's
stored hash is the signing secret, so only the server (or the key's holder) can make one, and
revoking the key ends every session signed with it: the row must be unrevoked at each use.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.models import ApiKey, Tenant
from core.services.tenants import hash_key

SESSION_SECONDS = 12 * 3600


@dataclass(frozen=True)
class BrowserSession:
    """A verified session: its tenant and the CSRF token its forms must carry."""

    tenant: Tenant
    csrf_token: str


def _sign(key_hash: str, message: str) -> str:
    return hmac.new(key_hash.encode(), message.encode(), hashlib.sha256).hexdigest()


def _csrf(key_hash: str, token: str) -> str:
    return _sign(key_hash, f"csrf.{token}")[:40]


def open_session(
    session: Session, *, raw_key: str, now: float | None = None, ttl_seconds: int = SESSION_SECONDS
) -> str | None:
    """A session token for a valid, unrevoked API key, or None."""
    key = session.execute(
        select(ApiKey).where(ApiKey.key_hash == hash_key(raw_key), ApiKey.revoked_at.is_(None))
    ).scalar_one_or_none()
    if key is None:
        return None
    expires = int((time.time() if now is None else now) + ttl_seconds)
    message = f"{key.id}.{expires}"
    return f"{message}.{_sign(key.key_hash, message)}"


def verify_session(
    session: Session, *, token: str, now: float | None = None
) -> BrowserSession | None:
    """The session of a token that is well signed, unexpired and whose key is unrevoked."""
    parts = token.split(".")
    if len(parts) != 3 or not parts[1].isdigit() or len(token) > 300:
        return None
    key_id, expires, signature = parts
    if int(expires) < (time.time() if now is None else now):
        return None
    row = session.execute(
        select(ApiKey, Tenant)
        .join(Tenant, Tenant.id == ApiKey.tenant_id)
        .where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None))
    ).first()
    if row is None:
        return None
    key, tenant = row
    if not hmac.compare_digest(_sign(key.key_hash, f"{key_id}.{expires}"), signature):
        return None
    return BrowserSession(tenant=tenant, csrf_token=_csrf(key.key_hash, token))
