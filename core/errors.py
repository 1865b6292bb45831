"""The one error hierarchy: every AppError becomes an RFC 9457 problem document."""

from __future__ import annotations

from typing import Any


class AppError(Exception):
    """Base of all errors that reach a client; carries an HTTP status and a problem type."""

    status_code = 500
    type_slug = "internal"
    title = "Internal error"

    def __init__(self, detail: str, *, extra: dict[str, Any] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra or {}
        self.headers: dict[str, str] = {}


class NotFoundError(AppError):
    """The resource does not exist (or belongs to another tenant)."""

    status_code = 404
    type_slug = "not-found"
    title = "Not found"


class ConflictError(AppError):
    """The resource is not in a state that allows the request."""

    status_code = 409
    type_slug = "conflict"
    title = "Conflict"


class ValidationAppError(AppError):
    """The request is well-formed but its content is invalid."""

    status_code = 422
    type_slug = "validation-error"
    title = "Invalid request"


class UnauthorizedError(AppError):
    """No valid API key."""

    status_code = 401
    type_slug = "unauthorized"
    title = "Unauthorized"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.headers = {"WWW-Authenticate": 'Bearer realm="softlabel"'}


class TooManyRequestsError(AppError):
    """A per-tenant limit is reached."""

    status_code = 429
    type_slug = "too-many-requests"
    title = "Too many requests"

    def __init__(self, detail: str, *, retry_after: int) -> None:
        super().__init__(detail)
        self.headers = {"Retry-After": str(retry_after)}


class PayloadTooLargeError(AppError):
    """The request body exceeds the configured limit."""

    status_code = 413
    type_slug = "payload-too-large"
    title = "Payload too large"
