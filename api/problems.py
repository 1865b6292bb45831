"""The error responses routes declare in the OpenAPI schema (every one a problem+json)."""

from __future__ import annotations

from typing import Any

from api.schemas import Problem

Responses = dict[int | str, dict[str, Any]]

PROBLEMS: Responses = {
    401: {"model": Problem, "description": "Missing or invalid API key"},
    422: {"model": Problem, "description": "Invalid request"},
}


def not_found(resource: str) -> Responses:
    """The 404 a route declares for a missing (or another tenant's) `resource`."""
    return {404: {"model": Problem, "description": f"No such {resource}"}}
