"""OpenAPI additions shared by every route: Idempotency-Key on POSTs, 413 and 401 problems."""

from __future__ import annotations

import re
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

from api.documents import Catalog, JobResult, SweepReport
from api.errors import PROBLEM_TYPE_BASE
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


# operationIds are the route functions' names (stable, snake_case, unique); where two
# routers use the same name, the path decides.
OPERATION_ID_OVERRIDES = {
    ("get", "/v1/jobs/{job_id}/artifacts/{name}"): "get_job_artifact",
    ("get", "/v1/sweeps/{sweep_id}/artifacts/{name}"): "get_sweep_artifact",
}
# Routes that return a stored JSON document: their 200 gets a named schema.
NAMED_DOCUMENTS: dict[tuple[str, str], type[BaseModel]] = {
    ("get", "/v1/jobs/{job_id}/result"): JobResult,
    ("get", "/v1/sweeps/{sweep_id}/report"): SweepReport,
    ("get", "/v1/catalog"): Catalog,
}
TEXT_SCHEMAS = {
    "Binary": {"type": "string", "format": "binary", "description": "The file's bytes"},
    "EventStream": {"type": "string", "description": "text/event-stream (Server-Sent Events)"},
    "PlainText": {"type": "string", "description": "Plain text (Prometheus exposition format)"},
}
TEXT_MEDIA = {"text/event-stream": "EventStream", "text/plain": "PlainText"}
# Every problem `type` the API answers with: slug -> (status, when).
PROBLEM_TYPES: dict[str, tuple[int, str]] = {
    "unauthorized": (401, "The API key is missing, invalid or revoked"),
    "not-found": (404, "No such resource for this tenant (another tenant's is 404 too)"),
    "method-not-allowed": (405, "The path exists but not with this method"),
    "conflict": (409, "The resource's state does not allow it (e.g. result of a running job)"),
    "payload-too-large": (413, "The body is over the configured limit"),
    "validation-error": (422, "The request is invalid; `errors` names each field"),
    "too-many-requests": (429, "Too many active jobs; retry after `Retry-After` seconds"),
    "internal": (500, "An unexpected error (reported, never a half-stored request)"),
    "unavailable": (503, "A dependency (database, broker) is not reachable"),
    "http-error": (400, "Any other HTTP error, with its status"),
}


def problem_types_markdown() -> str:
    """The documented problem types as a Markdown list."""
    return "\n".join(
        f"- `{PROBLEM_TYPE_BASE}{slug}` ({status}): {when}"
        for slug, (status, when) in PROBLEM_TYPES.items()
    )


def _component(schema: dict[str, Any], model: type[BaseModel]) -> dict[str, Any]:
    """Add a model (and the models it uses) to components; returns its $ref."""
    doc = model.model_json_schema(ref_template="#/components/schemas/{model}")
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components.update(doc.pop("$defs", {}))
    components[model.__name__] = doc
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _route_name(operation_id: str, method: str, path: str) -> str:
    """The route function's name from FastAPI's default id, name + path + method."""
    suffix = re.sub(r"\W", "_", path) + "_" + method
    return operation_id[: -len(suffix)] if operation_id.endswith(suffix) else operation_id


def _name_operations(schema: dict[str, Any]) -> None:
    """Stable operationIds, named schemas for documents and byte/text bodies."""
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components.update(TEXT_SCHEMAS)
    for path, item in schema.get("paths", {}).items():
        for method, operation in item.items():
            key = (method, path)
            default = _route_name(operation.get("operationId", ""), method, path)
            operation["operationId"] = OPERATION_ID_OVERRIDES.get(key, default)
            ok = operation.get("responses", {}).get("200", {}).get("content", {})
            if key in NAMED_DOCUMENTS and "application/json" in ok:
                ok["application/json"]["schema"] = _component(schema, NAMED_DOCUMENTS[key])
            for media, body in ok.items():
                if media in TEXT_MEDIA:
                    body["schema"] = {"$ref": f"#/components/schemas/{TEXT_MEDIA[media]}"}
                elif media.startswith(("image/", "application/octet-stream")) or not body.get(
                    "schema"
                ):  # an artifact's bytes, whatever their type
                    body["schema"] = {"$ref": "#/components/schemas/Binary"}


def _document_problems(schema: dict[str, Any]) -> None:
    """Each error response names its problem type; the Problem schema lists them all."""
    by_status = {status: slug for slug, (status, _) in PROBLEM_TYPES.items()}
    for item in schema.get("paths", {}).values():
        for operation in item.values():
            for code, response in operation.get("responses", {}).items():
                slug = by_status.get(int(code)) if code.isdigit() else None
                if slug and "application/problem+json" in response.get("content", {}):
                    response["description"] += f" (problem type `{PROBLEM_TYPE_BASE}{slug}`)"
    problem = schema.get("components", {}).get("schemas", {}).get("Problem")
    if problem is not None:
        problem["description"] = (
            "An RFC 9457 problem document. Its `type` is one of:\n" + problem_types_markdown()
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
        _name_operations(schema)
        _document_problems(schema)
        app.openapi_schema = schema
        return schema

    app.openapi = custom_openapi  # type: ignore[method-assign]
