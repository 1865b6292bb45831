"""The OpenAPI document's contract for generated clients: ids, named schemas, problem types."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from api.openapi import PROBLEM_TYPES
from tests.processes import ROOT

# Generated clients name their functions after these: renaming one breaks every client.
STABLE_OPERATION_IDS = {
    ("post", "/v1/jobs"): "submit_job",
    ("get", "/v1/jobs"): "list_jobs",
    ("get", "/v1/jobs/{job_id}"): "get_job",
    ("get", "/v1/jobs/{job_id}/result"): "get_result",
    ("get", "/v1/jobs/{job_id}/artifacts/{name}"): "get_job_artifact",
    ("post", "/v1/jobs/{job_id}/cancel"): "cancel_job",
    ("get", "/v1/jobs/{job_id}/events"): "job_events",
    ("post", "/v1/sweeps"): "submit_sweep",
    ("get", "/v1/sweeps/{sweep_id}"): "get_sweep",
    ("get", "/v1/sweeps/{sweep_id}/report"): "get_report",
    ("get", "/v1/sweeps/{sweep_id}/artifacts/{name}"): "get_sweep_artifact",
    ("post", "/v1/sweeps/{sweep_id}/cancel"): "cancel_sweep",
    ("post", "/v1/datasets"): "upload_dataset",
    ("get", "/v1/catalog"): "get_catalog",
}


@pytest.fixture(scope="module")
def openapi() -> dict[str, Any]:
    """The app's OpenAPI document."""
    from api.main import create_app

    return create_app().openapi()


def _operations(openapi: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(m, p, op) for p, item in openapi["paths"].items() for m, op in item.items()]


def test_operation_ids_are_stable_unique_and_snake_case(openapi: dict[str, Any]) -> None:
    ids = {(m, p): op.get("operationId") for m, p, op in _operations(openapi)}
    for key, expected in STABLE_OPERATION_IDS.items():
        assert ids[key] == expected, key
    assert all(i and re.fullmatch(r"[a-z][a-z0-9_]*", i) for i in ids.values()), ids
    assert not [i for i in ids.values() if "v1" in i or i.endswith(("_get", "_post"))], ids
    assert len(set(ids.values())) == len(ids), "duplicate operationId"


def test_every_response_body_has_a_named_schema(openapi: dict[str, Any]) -> None:
    schemas = openapi["components"]["schemas"]
    for method, path, op in _operations(openapi):
        for code, response in op["responses"].items():
            for media, body in response.get("content", {}).items():
                ref = body.get("schema", {}).get("$ref", "")
                assert ref.startswith("#/components/schemas/"), (method, path, code, media)
                assert ref.rsplit("/", 1)[-1] in schemas


def test_every_problem_response_names_a_documented_type(openapi: dict[str, Any]) -> None:
    for method, path, op in _operations(openapi):
        for code, response in op["responses"].items():
            if int(code) >= 400:
                body = response["content"]["application/problem+json"]
                assert body["schema"]["$ref"].endswith("/Problem"), (method, path, code)
                assert "https://softlabel.dev/problems/" in response["description"], (path, code)
    documented = openapi["components"]["schemas"]["Problem"]["description"]
    for slug in PROBLEM_TYPES:
        assert f"https://softlabel.dev/problems/{slug}`" in documented


def _emitted_problem_slugs() -> set[str]:
    """Every problem type slug the code can answer with (error classes and handlers)."""
    from core import errors

    slugs = {cls.type_slug for cls in vars(errors).values() if isinstance(cls, type)
             and issubclass(cls, errors.AppError)}  # fmt: skip
    patterns = (
        r'slug="([a-z-]+)"',
        r'\d{3}: "([a-z-]+)"',
        r'get\(exc\.status_code, "([a-z-]+)"\)',
        r'_problem_bytes\(\s*\d+,\s*"([a-z-]+)"',
    )
    for source in Path(ROOT, "api").rglob("*.py"):
        text = source.read_text()
        for pattern in patterns:
            slugs.update(re.findall(pattern, text))
    return slugs


def test_every_problem_type_the_code_emits_is_documented() -> None:
    emitted = _emitted_problem_slugs()
    assert {"not-found", "validation-error", "payload-too-large", "unauthorized"} <= emitted
    assert emitted <= set(PROBLEM_TYPES), emitted - set(PROBLEM_TYPES)
