"""A Python client generated from our /openapi.json (openapi-python-client) drives a real job."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.processes import Proc, start_api, stop_process

# Media types the generator has no reader for are read as bytes (File).
GENERATOR_CONFIG = """\
content_type_overrides:
  image/png: application/octet-stream
  text/csv: application/octet-stream
"""
PACKAGE = "softlabel_generated_client"
SPEC = {
    "dataset": {"source": "builtin", "name": "digits"},
    "model": {"arch": "mlp", "hidden": [32]},
    "loss": {"alpha": 0.1},
    "training": {"epochs": 3},
}


@pytest.fixture
def api_url(db: str, redis_url: str, worker: Proc, tmp_path: Path) -> Iterator[str]:
    """A real uvicorn API (with a real worker behind it)."""
    api = start_api(tmp_path / "api.log")
    yield api.info["url"]
    stop_process(api)


def generate_client(openapi: bytes, folder: Path) -> Any:
    """Run openapi-python-client on the document and import the package it writes."""
    (folder / "openapi.json").write_bytes(openapi)
    (folder / "config.yaml").write_text(GENERATOR_CONFIG)
    tool = Path(sys.executable).with_name("openapi-python-client")
    run = subprocess.run(
        [str(tool), "generate", "--path", "openapi.json", "--config", "config.yaml",
         "--meta", "none", "--output-path", PACKAGE],
        cwd=folder, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PATH": f"{tool.parent}{os.pathsep}{os.environ.get('PATH', '')}"},
    )  # fmt: skip  (ruff, which the generator runs on its output, is in the venv)
    output = run.stdout + run.stderr
    assert run.returncode == 0, output
    # a warning means a part of the API is missing from the client
    assert "warning" not in output.lower(), output
    sys.path.insert(0, str(folder))
    return importlib.import_module(PACKAGE)


@pytest.fixture
def generated(api_url: str, tmp_path: Path) -> Iterator[Any]:
    """The generated package (unloaded again afterwards)."""
    openapi = httpx.get(f"{api_url}/openapi.json", timeout=30)
    assert openapi.status_code == 200
    try:
        yield generate_client(openapi.content, tmp_path)
    finally:
        sys.path.remove(str(tmp_path))
        for name in [m for m in sys.modules if m.split(".")[0] == PACKAGE]:
            del sys.modules[name]


def test_generated_client_submits_polls_and_reads_typed_results(
    generated: Any, api_url: str, api_key: str
) -> None:
    from softlabel_generated_client import AuthenticatedClient
    from softlabel_generated_client.api.jobs import get_job, get_result, submit_job
    from softlabel_generated_client.models import JobOut, JobResult, JobSpec, Problem

    client = AuthenticatedClient(base_url=api_url, token=api_key, timeout=httpx.Timeout(30))
    submitted = submit_job.sync_detailed(
        client=client, body=JobSpec.from_dict(SPEC), idempotency_key="gen-client-1"
    )
    assert submitted.status_code == 202
    job = submitted.parsed
    assert isinstance(job, JobOut) and job.status == "queued"
    assert job.spec["loss"]["alpha"] == 0.1

    deadline = time.monotonic() + 240
    while job.status not in ("succeeded", "failed", "canceled"):
        assert time.monotonic() < deadline, f"job still {job.status}"
        time.sleep(0.3)
        job = get_job.sync(job.id, client=client)
        assert isinstance(job, JobOut)
    assert job.status == "succeeded" and job.finished_at

    result = get_result.sync(job.id, client=client)
    assert isinstance(result, JobResult)
    raw = httpx.get(
        f"{api_url}/v1/jobs/{job.id}/result", headers={"Authorization": f"Bearer {api_key}"}
    ).json()
    assert result.job_id == job.id
    assert (
        isinstance(result.test.accuracy, float) and result.test.accuracy == raw["test"]["accuracy"]
    )
    assert result.test.ece == raw["test"]["ece"]
    assert result.temperature_scaled is not None
    assert result.temperature_scaled.temperature == raw["temperature_scaled"]["temperature"]
    assert [row.epoch for row in result.history] == [1, 2, 3]
    assert result.to_dict() == raw  # nothing typed away

    missing = get_job.sync_detailed("job_doesnotexist", client=client)
    assert missing.status_code == 404
    assert isinstance(missing.parsed, Problem)
    assert missing.parsed.type_ == "https://softlabel.dev/problems/not-found"
    assert "job_doesnotexist" in missing.parsed.detail

    bad = submit_job.sync_detailed(
        client=client, body=JobSpec.from_dict({**SPEC, "loss": {"alpha": 1.5}})
    )
    assert bad.status_code == 422 and isinstance(bad.parsed, Problem)
    assert bad.parsed.type_ == "https://softlabel.dev/problems/validation-error"
    assert [e.field for e in bad.parsed.errors] == ["loss.alpha"]
    assert "less than 1" in bad.parsed.errors[0].msg
