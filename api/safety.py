"""Start-up safety checks and the /metrics access rule."""

from __future__ import annotations

import hmac
import logging

from fastapi import Request

from core.config import Settings
from core.errors import UnauthorizedError

logger = logging.getLogger("softlabel.api")


class UnsafeConfigError(RuntimeError):
    """The configuration would expose the service; the API refuses to start."""


def check_startup(settings: Settings) -> None:
    """Warn whenever authentication is off; refuse it on Postgres without the second flag."""
    if not settings.auth_disabled:
        return
    logger.warning(
        "SOFTLABEL_AUTH_DISABLED=true: every request without an API key acts as tenant 'local'"
    )
    if not settings.embedded and not settings.i_understand_auth_is_off:
        raise UnsafeConfigError(
            "SOFTLABEL_AUTH_DISABLED=true with a Postgres database would let anyone who can "
            "reach the API act as a tenant; unset it, or also set "
            "SOFTLABEL_I_UNDERSTAND_AUTH_IS_OFF=true"
        )


def require_metrics_key(request: Request, settings: Settings) -> None:
    """401 unless the request carries `Authorization: Bearer <SOFTLABEL_METRICS_KEY>`."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    expected = settings.metrics_key
    if expected and scheme.lower() == "bearer" and hmac.compare_digest(token.strip(), expected):
        return
    raise UnauthorizedError(
        "GET /metrics needs `Authorization: Bearer <SOFTLABEL_METRICS_KEY>`; or scrape the "
        "keyless listener at SOFTLABEL_METRICS_BIND"
    )
