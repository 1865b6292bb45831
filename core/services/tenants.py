"""Tenants and API keys (keys are stored as SHA-256 hashes only)."""

from __future__ import annotations

import hashlib
import secrets

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.errors import ConflictError, NotFoundError
from core.ids import new_id
from core.models import ApiKey, Tenant
from core.timeutil import utcnow

KEY_PREFIX = "sl_"


def hash_key(raw_key: str) -> str:
    """The stored form of an API key (keys carry 256 random bits, so SHA-256 suffices)."""
    return hashlib.sha256(raw_key.encode()).hexdigest()


def get_or_create_tenant(session: Session, *, name: str) -> Tenant:
    """Return the tenant called `name`, creating it if needed."""
    tenant = session.scalar(select(Tenant).where(Tenant.name == name))
    if tenant is None:
        tenant = Tenant(id=new_id("ten"), name=name, webhook_secret=secrets.token_hex(32))
        session.add(tenant)
        session.flush()
    return tenant


def create_api_key(session: Session, *, tenant_name: str, key_name: str = "") -> tuple[ApiKey, str]:
    """Create a key for a tenant; the raw key is returned once and never stored."""
    tenant = get_or_create_tenant(session, name=tenant_name)
    raw = KEY_PREFIX + secrets.token_urlsafe(32)
    key = ApiKey(
        id=new_id("key"),
        tenant_id=tenant.id,
        key_hash=hash_key(raw),
        prefix=raw[:10],
        name=key_name,
    )
    session.add(key)
    session.flush()
    return key, raw


def list_api_keys(session: Session, *, tenant_name: str | None = None) -> list[tuple[ApiKey, str]]:
    """All keys (with their tenant's name), optionally of one tenant."""
    query = select(ApiKey, Tenant.name).join(Tenant, Tenant.id == ApiKey.tenant_id)
    if tenant_name is not None:
        query = query.where(Tenant.name == tenant_name)
    return [(key, name) for key, name in session.execute(query.order_by(ApiKey.created_at))]


def revoke_api_key(session: Session, *, key_id: str) -> ApiKey:
    """Revoke a key by id; revoking twice is a conflict."""
    key = session.get(ApiKey, key_id)
    if key is None:
        raise NotFoundError(f"API key {key_id} does not exist")
    if key.revoked_at is not None:
        raise ConflictError(f"API key {key_id} is already revoked")
    key.revoked_at = utcnow()
    session.flush()
    return key


def authenticate(session: Session, *, raw_key: str) -> Tenant | None:
    """The tenant owning a valid, unrevoked key, or None."""
    row = session.execute(
        select(Tenant)
        .join(ApiKey, ApiKey.tenant_id == Tenant.id)
        .where(ApiKey.key_hash == hash_key(raw_key), ApiKey.revoked_at.is_(None))
    ).scalar_one_or_none()
    return row
