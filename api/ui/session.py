"""The dashboard's browser session: an HttpOnly cookie, CSRF checks, the page tenant."""

from __future__ import annotations

import hmac
import secrets

from fastapi import Request, Response
from sqlalchemy.orm import Session

from core.config import Settings
from core.errors import AppError
from core.models import Tenant
from core.services import browser_sessions, tenants

SESSION_COOKIE = "softlabel_session"
LOGIN_CSRF_COOKIE = "softlabel_login_csrf"
CSRF_HEADER = "x-csrf-token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class CsrfError(AppError):
    """A cookie-authenticated request without the session's CSRF token."""

    status_code = 403
    type_slug = "csrf"
    title = "Forbidden"


def is_https(request: Request) -> bool:
    """Whether the browser reached us over HTTPS (directly or through a proxy that says so)."""
    return request.url.scheme == "https"


def set_cookie(request: Request, response: Response, name: str, value: str, max_age: int) -> None:
    """Set an HttpOnly, SameSite=Strict cookie for /, Secure when the request came over HTTPS."""
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path="/",
        httponly=True,
        samesite="strict",
        secure=is_https(request),
    )


def new_login_csrf() -> str:
    """A random token for the login form (the double-submit cookie before a session exists)."""
    return secrets.token_urlsafe(24)


def tokens_match(expected: str | None, given: str | None) -> bool:
    """Constant-time comparison of two tokens; missing ones never match."""
    return bool(expected) and bool(given) and hmac.compare_digest(str(expected), str(given))


def _same_origin(request: Request) -> bool:
    origin = request.headers.get("origin")
    if origin is None:  # same-origin GETs and older browsers send none; SameSite still holds
        return True
    return origin == f"{request.url.scheme}://{request.url.netloc}"


def current_session(
    request: Request, session: Session
) -> browser_sessions.BrowserSession | None:
    """The verified session of the request's cookie, or None."""
    token = request.cookies.get(SESSION_COOKIE)
    if not token:
        return None
    return browser_sessions.verify_session(session, token=token)


def browser_tenant(request: Request, session: Session) -> Tenant | None:
    """The tenant of a dashboard session cookie (the JSON API's cookie path), or None.

    A state-changing request must come from our origin and carry the session's CSRF token in
    X-CSRF-Token; SameSite=Strict already keeps the cookie off cross-site requests.
    """
    found = current_session(request, session)
    if found is None:
        return None
    unsafe = request.method not in SAFE_METHODS
    token_ok = tokens_match(found.csrf_token, request.headers.get(CSRF_HEADER))
    if unsafe and not (_same_origin(request) and token_ok):
        raise CsrfError(
            "This browser request lacks the dashboard's CSRF token; send the page's "
            "X-CSRF-Token header, or use an API key in Authorization: Bearer"
        )
    request.state.tenant_id = found.tenant.id
    return found.tenant


def page_session(
    request: Request, session: Session, settings: Settings
) -> tuple[Tenant, str] | None:
    """The tenant and CSRF token of a dashboard page; None means: log in first.

    With SOFTLABEL_AUTH_DISABLED=true the page belongs to tenant `local` and needs no login.
    """
    found = current_session(request, session)
    if found is not None:
        return found.tenant, found.csrf_token
    if settings.auth_disabled:
        tenant = tenants.get_or_create_tenant(session, name="local")
        session.commit()
        return tenant, ""
    return None
