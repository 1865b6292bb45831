"""One handler turns every error into an RFC 9457 application/problem+json response."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from core.errors import AppError

PROBLEM_TYPE_BASE = "https://softlabel.dev/problems/"
PROBLEM_MEDIA_TYPE = "application/problem+json"
logger = logging.getLogger("softlabel.api")


def problem_response(
    *,
    status: int,
    slug: str,
    title: str,
    detail: str,
    instance: str,
    headers: dict[str, str] | None = None,
    extra: dict[str, Any] | None = None,
) -> JSONResponse:
    """Build a problem+json response."""
    body: dict[str, Any] = {
        "type": PROBLEM_TYPE_BASE + slug,
        "title": title,
        "status": status,
        "detail": detail,
        "instance": instance,
    }
    body.update(extra or {})
    return JSONResponse(body, status_code=status, headers=headers, media_type=PROBLEM_MEDIA_TYPE)


def _field_errors(exc: RequestValidationError) -> list[dict[str, Any]]:
    errors = []
    for err in exc.errors():
        loc = [str(part) for part in err.get("loc", ())]
        errors.append(
            {
                "loc": loc,
                "field": ".".join(loc[1:]) or loc[0] if loc else "",
                "msg": str(err.get("msg", "")),
                "type": str(err.get("type", "")),
            }
        )
    return errors


def allowed_methods(request: Request) -> str:
    """Every method some route of this path accepts (Starlette's 405 names one route's only)."""
    methods: set[str] = set()
    for route in request.app.router.routes:
        match, _ = route.matches({**request.scope, "method": "\x00"})
        if match is not Match.NONE:
            methods.update(getattr(route, "methods", None) or ())
    return ", ".join(sorted(methods))


def _http_problem(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    """A Starlette HTTP error as problem+json; a 405 lists every allowed method."""
    slug = {404: "not-found", 405: "method-not-allowed"}.get(exc.status_code, "http-error")
    headers = dict(getattr(exc, "headers", None) or {})
    if exc.status_code == 405:
        headers["Allow"] = allowed_methods(request)
    return problem_response(
        status=exc.status_code,
        slug=slug,
        title=str(exc.detail),
        detail=str(exc.detail),
        instance=request.url.path,
        headers=headers or None,
    )


def install_error_handlers(app: FastAPI) -> None:
    """Register the problem+json handlers on the app."""

    @app.exception_handler(AppError)
    async def _app_error(request: Request, exc: AppError) -> JSONResponse:
        return problem_response(
            status=exc.status_code,
            slug=exc.type_slug,
            title=exc.title,
            detail=exc.detail,
            instance=request.url.path,
            headers=exc.headers or None,
            extra=exc.extra,
        )

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = _field_errors(exc)
        summary = "; ".join(f"{e['field']}: {e['msg']}" for e in errors[:5])
        return problem_response(
            status=422,
            slug="validation-error",
            title="Invalid request",
            detail=f"The request is invalid — {summary}",
            instance=request.url.path,
            extra={"errors": errors},
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400:
            # FastAPI answers 400 for a body it cannot decode (e.g. not UTF-8); to a client that
            # is an invalid request body like any other, so it gets the documented 422.
            return problem_response(
                status=422,
                slug="validation-error",
                title="Invalid request",
                detail=f"The request body could not be parsed ({exc.detail}); send UTF-8 JSON",
                instance=request.url.path,
                extra={
                    "errors": [
                        {
                            "loc": ["body"],
                            "field": "body",
                            "msg": str(exc.detail),
                            "type": "body_parse_error",
                        }
                    ]
                },
            )
        return _http_problem(request, exc)
