"""Typed dependencies: settings, the DB session, the calling tenant."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from core.config import Settings, get_settings
from core.db import get_sessionmaker
from core.errors import UnauthorizedError
from core.models import Tenant
from core.services import tenants


def get_db() -> Iterator[Session]:
    """A session per request; handlers commit, anything uncommitted is rolled back."""
    session = get_sessionmaker()()
    try:
        yield session
    finally:
        session.rollback()
        session.close()


SettingsDep = Annotated[Settings, Depends(get_settings)]
SessionDep = Annotated[Session, Depends(get_db)]


def get_tenant(request: Request, session: SessionDep, settings: SettingsDep) -> Tenant:
    """The tenant of the Bearer key; 401 with WWW-Authenticate otherwise."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        tenant = tenants.authenticate(session, raw_key=token.strip())
        if tenant is not None:
            request.state.tenant_id = tenant.id
            return tenant
        raise UnauthorizedError("The API key is invalid or revoked")
    if settings.auth_disabled:
        tenant = tenants.get_or_create_tenant(session, name="local")
        session.commit()
        return tenant
    raise UnauthorizedError("Send an API key as 'Authorization: Bearer <key>'")


TenantDep = Annotated[Tenant, Depends(get_tenant)]
