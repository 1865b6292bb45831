"""OpenAPI additions shared by every route: Idempotency-Key on POSTs, 413 and 401 problems."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from core.config import get_settings

PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}


def _problem(description: str) -> dict[str, Any]:
    content = {"application/problem+json": {"schema": PROBLEM_REF}}
    return {"description": description, "content": content}


def idempotency_description() -> str:
    """How Idempotency-Key works, with the configured retention."""
    ttl = get_settings().idempotency_ttl_hours
    return (
        "Optional. Repeating a POST with the same key and the same body returns the original "
        "status and body (header `Idempotent-Replayed: true`) instead of running it again; the "
        "same key with a different body or path is 422, and while the original request is "
        f"still being processed it is 409. Keys are kept for {ttl:g} hours "
        "(SOFTLABEL_IDEMPOTENCY_TTL_HOURS), then forgotten. Responses with 5xx, 408, 409 or "
        "429 are not kept, so a retry with the same key runs again."
    )


def install_openapi(app: FastAPI) -> None:
    """Replace app.openapi with a generator that adds the shared parameters and responses."""

    def custom_openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(
            title=app.title,
            version=app.version,
            description=app.description,
            routes=app.routes,
        )
        header = {
            "name": "Idempotency-Key",
            "in": "header",
            "required": False,
            "description": idempotency_description(),
            "schema": {"type": "string", "minLength": 1, "maxLength": 200},
        }
        for item in schema.get("paths", {}).values():
            for method, operation in item.items():
                responses = operation.setdefault("responses", {})
                for code, response in responses.items():
                    # every error body is RFC 9457 problem+json (see api/errors.py)
                    if code.isdigit() and int(code) >= 400 and "content" in response:
                        response["content"] = {"application/problem+json": {"schema": PROBLEM_REF}}
                if operation.get("security"):
                    responses.setdefault("401", _problem("Missing or invalid API key"))
                if method == "post":
                    operation.setdefault("parameters", []).append(header)
                    responses.setdefault("413", _problem("The request body is too large"))
                    if operation.get("security"):
                        responses.setdefault(
                            "409", _problem("A request with this Idempotency-Key is in flight")
                        )
                    responses.setdefault("422", _problem("Invalid request"))
        app.openapi_schema = schema
        return schema

    app.openapi = custom_openapi  # type: ignore[method-assign]
